"""Accelerator checks of the dynamics layer (float32, vmapped per condition, eig on device).

Run with ``pytest -m gpu tests/test_dynamics_gpu.py -s``; prints timings per size.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech import dynamics as D

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() == "cpu", reason="needs an accelerator"),
]


def _problem(n, conditions, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, n)) * 2.0 / np.sqrt(n)
    p = D.ProductionDecayParams(
        W=W, b=rng.normal(size=n) * 0.5, alpha=rng.uniform(1, 3, n), gamma=rng.uniform(0.5, 2, n)
    )
    production = np.ones((conditions, n))
    hit = rng.integers(0, n, size=(conditions, 2))  # double knockdowns of random genes
    production[np.arange(conditions)[:, None], hit] = 0.2
    production[0] = 1.0  # control
    return p, production


def _timed(fn, *args, repeats=5):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return out, first, float(np.median(times))


@pytest.mark.parametrize("n", [20, 100, 500])
def test_float32_vmapped_steady_states_and_gradient(n):
    conditions = 128
    p64, production = _problem(n, conditions)
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p64)
    edits = D.Intervention(
        production=jnp.asarray(production, jnp.float32),
        clamp_mask=jnp.zeros(production.shape, bool),
        clamp_value=jnp.zeros(production.shape, jnp.float32),
    )
    target = jnp.ones((conditions, n), jnp.float32)

    @jax.jit
    def loss_and_grad(W, p, edits, target):
        def loss(W):
            ss = D.steady_states(D.production_decay_field, p._replace(W=W), interventions=edits)
            x = jnp.where(ss.ok[:, None], ss.x, 0.0)
            return jnp.sum((x - target) ** 2), ss

        return jax.value_and_grad(loss, has_aux=True)(W)

    ((value, ss), grad), first, per_call = _timed(loss_and_grad, p32.W, p32, edits, target)
    ok = float(jnp.mean(ss.ok))
    print(
        f"\n[gpu] n={n} conditions={conditions} float32 value+grad: first {first:.2f}s, then "
        f"{per_call * 1e3:.2f} ms; ok {ok:.3f}; max residual {float(jnp.max(ss.residual)):.1e}"
    )
    assert ok >= 0.95 and bool(jnp.all(jnp.isfinite(grad)))
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p64)
        e64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype != bool else a, edits)
        (_, ss64), grad64 = loss_and_grad(p.W, p, e64, jnp.asarray(target, jnp.float64))
    both = np.asarray(ss.ok & ss64.ok)
    np.testing.assert_allclose(np.asarray(ss.x)[both], np.asarray(ss64.x)[both], rtol=2e-3, atol=2e-3)
    grad, grad64 = np.asarray(grad, np.float64), np.asarray(grad64)
    rel = float(np.linalg.norm(grad - grad64) / np.linalg.norm(grad64))
    print(f"[gpu] n={n} float32 vs float64: relative gradient error {rel:.2e}")
    assert rel < 1e-2


def test_eigenvalue_checks_run_on_the_accelerator():
    gain = 10.0
    toggle = D.ProductionDecayParams(
        W=jnp.array([[0.0, -gain], [-gain, 0.0]]), b=jnp.full(2, gain / 2), alpha=jnp.ones(2), gamma=jnp.ones(2)
    )

    @jax.jit
    def run(p, key):
        saddle = D.steady_state(D.production_decay_field, p, x0=jnp.array([0.5, 0.5]), check_stability=True, fallback=False)
        return saddle, D.attractors(D.production_decay_field, p, rng_key=key, num_starts=12)

    (saddle, bi), first, per_call = _timed(run, toggle, jax.random.PRNGKey(0))
    print(f"\n[gpu] toggle attractors (12 starts): first {first:.2f}s, then {per_call * 1e3:.2f} ms")
    assert not bool(saddle.ok)
    assert int(bi.num_attractors) == 2 and not bool(bi.unique)
    _, mono = run(toggle._replace(W=toggle.W / 10, b=toggle.b / 10), jax.random.PRNGKey(0))
    assert bool(mono.unique)
