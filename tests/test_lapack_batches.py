"""The steady-state solves hand jaxlib's CPU LAPACK kernels one matrix per call (no batch to split).

jaxlib 0.10 splits a batched LAPACK call over XLA's intra-op pool and blocks the worker until the
pieces finish; two such calls at once on a 2-worker pool hang forever (semimech/dynamics/_linalg.py,
benchmarks/RESULTS_compare.md). The test reads the lowered programs: every LAPACK custom call has
``num_batch_dims = "0"``, with the same values and gradients as the batched calls (float64).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech.dynamics import _linalg
from semimech.models import linear_steady_state

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the LAPACK custom calls are CPU's")


def _problem(draws=3, n=6, seed=4):
    rng = np.random.default_rng(seed)
    W = rng.normal(0, 0.3, (draws, n, n)) * (rng.random((draws, n, n)) < 0.5)
    W[:, np.arange(n), np.arange(n)] = 0.0
    b = rng.normal(1.0, 0.3, (draws, n))
    log_s = np.stack([np.zeros(n), np.where(np.arange(n) == 2, -1.5, 0.0), rng.normal(0, 0.5, n),
                      rng.normal(0, 2.0, n)])  # the last: far from control (the per-condition fallback runs)
    return jnp.asarray(W), jnp.asarray(b), jnp.asarray(log_s)


def _program(W, b, log_s):
    """Per draw (vmapped, as a posterior's draws are): states of both solvers, a gradient, a stability check."""
    def one(W, b):
        shared = linear_steady_state.steady_states_shared
        grad = jax.grad(lambda W: jnp.sum(jnp.sin(shared(W, b, log_s).x)))(W)
        return (shared(W, b, log_s).x, grad, linear_steady_state.steady_states_closed_form(W, b, log_s).x,
                shared(W, b, log_s, check_stability=True).ok)
    return jax.vmap(one)(W, b)


def _lapack_batch_dims(text):
    return re.findall(r"custom_call @(lapack_\w+)\(.*?num_batch_dims = \"(\d+)\"", text)


def test_steady_state_lapack_calls_are_unbatched(monkeypatch):
    with jax.enable_x64(True):
        args = _problem()
        calls = _lapack_batch_dims(jax.jit(_program).lower(*args).as_text())
        kinds = {k for k, _ in calls}
        assert {"lapack_dgetrf_ffi", "lapack_dtrsm_ffi", "lapack_dgeev_ffi"} <= kinds, kinds
        assert all(d == "0" for _, d in calls), sorted(set(calls))
        # negative control: jax's own calls (the old path) reach LAPACK with a batch axis under vmap
        monkeypatch.setattr(_linalg, "SEQUENTIAL_ON_CPU", False)
        jax.clear_caches()
        old = _lapack_batch_dims(jax.jit(_program).lower(*args).as_text())
        assert any(d != "0" for _, d in old)
    jax.clear_caches()


def _solves(lu_factor, lu_solve, eigvals, solve, A, b, B):
    """Factors, a transposed solve, eigenvalues, and a solve's value and reverse-mode gradient under vmap."""
    def loss(A, b):
        return jnp.sum(jnp.sin(solve(A, b)))

    lu, piv = lu_factor(A)
    grads = jax.vmap(jax.grad(loss, argnums=(0, 1)))(A, b)
    return lu, piv, lu_solve((lu, piv), B, trans=1), jnp.sort_complex(eigvals(A)), loss(A, b), *grads


def test_one_matrix_per_call_gives_jax_values_and_gradients():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        A = jnp.asarray(rng.normal(size=(4, 5, 5)) + 3 * np.eye(5))
        b, B = jnp.asarray(rng.normal(size=(4, 5))), jnp.asarray(rng.normal(size=(4, 5, 2)))
        ours = jax.jit(lambda *a: _solves(_linalg.lu_factor, _linalg.lu_solve, _linalg.eigvals, _linalg.dense_solve, *a))
        theirs = jax.jit(lambda *a: _solves(jax.scipy.linalg.lu_factor, jax.scipy.linalg.lu_solve, jnp.linalg.eigvals,
                                            lambda A, b: jnp.linalg.solve(A, b[..., None])[..., 0], *a))
        for x, y in zip(ours(A, b, B), theirs(A, b, B)):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-13)
        with pytest.raises(Exception, match="right-hand side"):
            _linalg.dense_solve(A, b[:, :3])


def _tanh_field(x, p, *, media=None, intervention=None):
    """dx/dt = tanh(W x) + b - x: no closed-form Jacobian is registered for it (Newton uses jacfwd)."""
    W, b = p
    return jnp.tanh(W @ x) + b - x


def _nonlinear_program(W, b):
    """Per draw (vmapped, as a posterior's draws are): a steady state with a stability check, and a gradient."""
    from semimech import dynamics as D

    def one(W, b):
        ss = D.steady_state(_tanh_field, (W, b), x0=jnp.zeros_like(b), fallback=False, check_stability=True)
        grad = jax.grad(lambda b: jnp.sum(jnp.sin(D.steady_state(_tanh_field, (W, b), x0=jnp.zeros_like(b), fallback=False).x)))(b)
        return ss.x, ss.ok, grad
    return jax.vmap(one)(W, b)


def test_jacfwd_newton_lapack_calls_are_unbatched(monkeypatch):
    """Fields without a closed-form Jacobian: Newton's factorisations are one matrix per call too."""
    with jax.enable_x64(True):
        W, b, _ = _problem(draws=3, n=5)
        calls = _lapack_batch_dims(jax.jit(_nonlinear_program).lower(W, b).as_text())
        assert {"lapack_dgetrf_ffi", "lapack_dgeev_ffi"} <= {k for k, _ in calls}, calls
        assert all(d == "0" for _, d in calls), sorted(set(calls))
        x, ok, grad = jax.jit(_nonlinear_program)(W, b)
        assert bool(jnp.all(ok))
        residual = jax.vmap(lambda x, W, b: _tanh_field(x, (W, b)))(x, W, b)
        np.testing.assert_allclose(residual, 0.0, atol=1e-10)
        # implicit derivative against a finite difference of the solved state
        eps = 1e-6
        x_eps = jax.jit(_nonlinear_program)(W, b.at[:, 0].add(eps))[0]
        fd = jnp.sum(jnp.sin(x_eps) - jnp.sin(x), axis=1) / eps
        np.testing.assert_allclose(grad[:, 0], fd, rtol=1e-4, atol=1e-6)
        # negative control: with jax's batched kernels the same program reaches LAPACK with a batch axis
        monkeypatch.setattr(_linalg, "SEQUENTIAL_ON_CPU", False)
        jax.clear_caches()
        old = _lapack_batch_dims(jax.jit(_nonlinear_program).lower(W, b).as_text())
        assert any(d != "0" for _, d in old)
    jax.clear_caches()
