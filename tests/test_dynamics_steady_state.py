"""Steady-state solver: closed forms, implicit derivatives, safe failure, vmapping, float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech import dynamics as D
from semimech.errors import SemimechError

N = 4


def _scm(seed=0, n=N):
    """A cyclic linear SCM x = B x + c with (I - B) stable (spectral radius of B < 1)."""
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(n, n)) * 0.25
    np.fill_diagonal(B, 0.0)
    B[0, n - 1] = 0.4  # a feedback loop
    c = rng.normal(size=n)
    return B, c


def _linear(B, c):
    return D.LinearParams(W=jnp.asarray(B), b=jnp.asarray(c), gamma=jnp.ones(len(c)))


@jax.jit
def _newton_linear(params, intervention):
    return D.steady_state(D.linear_field, params, intervention=intervention, x0=jnp.zeros_like(params.b), fallback=False)


def _interventions(n=N):
    """Control, a knockdown of 0, a clamp of 1 at 2.5, a knockout of 2 + clamp of 3."""
    prod = np.ones((4, n))
    prod[1, 0] = 0.3
    prod[3, 2] = 0.0
    mask = np.zeros((4, n), bool)
    mask[2, 1] = True
    mask[3, 3] = True
    value = np.zeros((4, n))
    value[2, 1] = 2.5
    value[3, 3] = -1.0
    return D.Intervention(jnp.asarray(prod), jnp.asarray(mask), jnp.asarray(value))


def _scm_solution(B, c, production, mask, value):
    """do()-SCM in closed form: x_j = v_j for clamped j, else x_i = s_i (B x + c)_i."""
    n = len(c)
    A = np.eye(n) - production[:, None] * B
    rhs = production * c
    A[mask] = np.eye(n)[mask]
    rhs[mask] = value[mask]
    return np.linalg.solve(A, rhs)


def test_linear_steady_state_equals_closed_form_and_scm_solution():
    with jax.enable_x64(True):
        B, c = _scm()
        p = _linear(B, c)
        edits = _interventions()
        closed_form = jax.jit(lambda p, e: D.linear_steady_state(p, intervention=e))
        for k in range(4):
            e = jax.tree.map(lambda a: a[k], edits)
            expected = _scm_solution(B, c, np.asarray(e.production), np.asarray(e.clamp_mask), np.asarray(e.clamp_value))
            closed = closed_form(p, e)
            newton = _newton_linear(p, e)
            assert bool(closed.ok) and bool(newton.ok)
            np.testing.assert_allclose(closed.x, expected, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(newton.x, expected, rtol=1e-8, atol=1e-10)
        # the control case is the plain SCM (I - B)^-1 c; a different network gives another answer
        control = closed_form(p, D.Intervention.none(N)).x
        np.testing.assert_allclose(control, np.linalg.solve(np.eye(N) - B, c), rtol=1e-10)
        assert not np.allclose(control, np.linalg.solve(np.eye(N) - B.T, c), rtol=1e-3)


def test_gradient_equals_closed_form_implicit_derivative():
    with jax.enable_x64(True):
        B, c = _scm(seed=1)
        p = _linear(B, c)
        # x* = (I - B)^-1 c  =>  dx*/dc = (I - B)^-1 ;  d x*_i / dB_kl = [(I-B)^-1]_ik x*_l
        jac_b = jax.jit(jax.jacobian(lambda b: _newton_linear(p._replace(b=b), D.Intervention.none(N)).x))(p.b)
        inv = np.linalg.inv(np.eye(N) - B)
        np.testing.assert_allclose(jac_b, inv, rtol=1e-8)
        x = inv @ c
        jac_w = jax.jit(jax.jacobian(lambda W: D.linear_steady_state(p._replace(W=W)).x))(p.W)
        np.testing.assert_allclose(jac_w, np.einsum("ik,l->ikl", inv, x), rtol=1e-8, atol=1e-12)


def _pd_params():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(N, N)) * 1.5
    return D.ProductionDecayParams(
        W=jnp.asarray(W), b=jnp.asarray(rng.normal(size=N)), alpha=jnp.asarray(rng.uniform(1, 3, N)), gamma=jnp.asarray(rng.uniform(0.5, 2, N))
    )


def test_production_decay_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        p = _pd_params()
        efficacy = jnp.array([0.0, 0.6, 0.0, 0.0])

        @jax.jit
        def loss(W, efficacy):
            ss = D.steady_state(
                D.production_decay_field, p._replace(W=W), intervention=D.Intervention.scale(1 - efficacy), fallback=False
            )
            return jnp.sum(ss.x * jnp.arange(1, N + 1)), ss.ok

        (value, ok), (g_w, g_eff) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p.W, efficacy)
        assert bool(ok)
        eps = 1e-6
        for (i, j) in [(0, 1), (2, 3), (3, 0)]:
            dW = jnp.zeros((N, N)).at[i, j].set(eps)
            fd = (loss(p.W + dW, efficacy)[0] - loss(p.W - dW, efficacy)[0]) / (2 * eps)
            np.testing.assert_allclose(g_w[i, j], fd, rtol=1e-5, atol=1e-9)
        de = jnp.zeros(N).at[1].set(eps)
        fd = (loss(p.W, efficacy + de)[0] - loss(p.W, efficacy - de)[0]) / (2 * eps)
        np.testing.assert_allclose(g_eff[1], fd, rtol=1e-5)
        assert abs(float(fd)) > 1e-3


def _atan_field(x, a, *, media=None, intervention=None):
    """dx/dt = -arctan(x - a): Newton from |x0 - a| > 1.39 diverges, the flow converges to a."""
    return -jnp.arctan(x - a)


def test_fallback_integration_rescues_divergent_newton_vmapped_and_differentiates():
    with jax.enable_x64(True):
        weights = jnp.array([1.0, 2.0])

        @jax.jit
        def solve(a):
            def loss(a):
                ss = D.steady_state(_atan_field, a, x0=jnp.zeros(2))
                return jnp.sum(ss.x * weights), ss

            (_, with_fb), grad = jax.vmap(jax.value_and_grad(loss, has_aux=True))(a)
            without = jax.vmap(lambda a: D.steady_state(_atan_field, a, x0=jnp.zeros(2), fallback=False))(a)
            return with_fb, without, grad

        # condition 0 needs the fallback (|x0 - a| > 1.39), condition 1 does not
        a = jnp.array([[3.0, 0.5], [0.2, 0.1]])
        with_fb, without, grad = solve(a)
        assert not bool(without.ok[0]) and bool(without.ok[1])  # negative control: Newton alone fails
        assert bool(jnp.all(with_fb.ok))
        np.testing.assert_allclose(with_fb.x, a, rtol=1e-9)
        np.testing.assert_allclose(grad, jnp.broadcast_to(weights, (2, 2)), rtol=1e-8)  # x* = a


def test_failing_solves_return_ok_false_inside_jit_with_finite_gradients():
    with jax.enable_x64(True):
        n = 2
        no_root = D.LinearParams(W=jnp.zeros((n, n)), b=jnp.ones(n), gamma=jnp.zeros(n))  # dx/dt = 1
        unstable = D.LinearParams(W=jnp.array([[1.5, 0.0], [0.0, 0.0]]), b=jnp.ones(n), gamma=jnp.ones(n))
        nan_params = D.LinearParams(W=jnp.full((n, n), jnp.nan), b=jnp.ones(n), gamma=jnp.ones(n))

        @jax.jit
        def solve(p):
            def loss(b):
                ss = D.steady_state(D.linear_field, p._replace(b=b), x0=jnp.zeros(n), fallback_max_steps=256)
                return jnp.sum(jnp.where(ss.ok, ss.x, 0.0)), ss

            (_, ss), grad = jax.value_and_grad(loss, has_aux=True)(p.b)
            closed = D.linear_steady_state(p, check_stability=True)
            closed_grad = jax.grad(lambda W: jnp.sum(D.linear_steady_state(p._replace(W=W)).x))(p.W)
            return ss, grad, closed, closed_grad

        for p in (no_root, nan_params):
            ss, grad, closed, closed_grad = solve(p)
            assert not bool(ss.ok) and not bool(closed.ok)
            if p is no_root:  # singular A: gradients stay finite (NaN parameters give NaN, as they should)
                assert bool(jnp.all(jnp.isfinite(grad))) and bool(jnp.all(jnp.isfinite(closed_grad)))
        # an unstable linear system has a root (Newton finds it) but it is not a steady state
        # (steady_state's own check_stability is tested on the toggle switch's saddle)
        ss, grad, closed, _ = solve(unstable)
        assert bool(ss.ok) and not bool(closed.ok)
        np.testing.assert_allclose(ss.x, [-2.0, 1.0], rtol=1e-9)
        # positive control of the stability check: the same system made stable passes
        _, _, closed, _ = solve(unstable._replace(W=-unstable.W))
        assert bool(closed.ok)


def test_vmapped_per_condition_solves_match_single_solves():
    with jax.enable_x64(True):
        B, c = _scm(seed=2)
        p = _linear(B, c)
        edits = _interventions()
        batch = jax.jit(lambda p, e: D.steady_states(D.linear_field, p, interventions=e, x0=jnp.zeros(N), fallback=False))(p, edits)
        assert batch.x.shape == (4, N) and bool(jnp.all(batch.ok))
        for k in range(4):
            e = jax.tree.map(lambda a: a[k], edits)
            expected = _scm_solution(B, c, np.asarray(e.production), np.asarray(e.clamp_mask), np.asarray(e.clamp_value))
            np.testing.assert_allclose(batch.x[k], expected, rtol=1e-8, atol=1e-10)
        with pytest.raises(SemimechError, match="must be batched"):
            D.steady_states(D.linear_field, p, interventions=D.Intervention.none(N))


def test_float32_grad_through_steady_state_under_jit():
    p64 = _pd_params()
    p32 = jax.tree.map(lambda a: np.asarray(a, np.float32), p64)

    def loss(W, p, fallback=True):
        ss = D.steady_state(D.production_decay_field, p._replace(W=W), x0=jnp.ones_like(p.b), fallback=fallback)
        return jnp.sum(jnp.where(ss.ok, ss.x, 0.0) ** 2), ss

    (value, ss), g32 = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(p32.W), p32)
    assert ss.x.dtype == jnp.float32 and g32.dtype == jnp.float32
    assert bool(ss.ok)
    with jax.enable_x64(True):
        _, g64 = jax.jit(jax.value_and_grad(lambda W, p: loss(W, p, fallback=False), has_aux=True))(jnp.asarray(p64.W), p64)
    np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=2e-4)
    assert D.default_tolerances(jnp.float32) == (1e-4, 1e-4)
