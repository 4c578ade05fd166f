"""Fast steady-state paths: closed-form Jacobians and the one-LU linear solve equal the generic jacfwd path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech import dynamics as D

N, M = 6, 2


def _edit(rng, n=N, clamp=True):
    prod = rng.uniform(0.2, 2.0, n)
    mask = np.zeros(n, bool)
    if clamp:
        mask[n - 1] = True
    return D.Intervention(jnp.asarray(prod), jnp.asarray(mask), jnp.asarray(np.where(mask, 0.7, 0.0)))


def _pd(rng, n=N, scale=1.0):
    return D.ProductionDecayParams(W=jnp.asarray(rng.normal(size=(n, n)) * scale), b=jnp.asarray(rng.normal(size=n)),
                                   alpha=jnp.asarray(rng.uniform(1, 3, n)), gamma=jnp.asarray(rng.uniform(0.5, 2, n)),
                                   M=jnp.asarray(rng.normal(size=(n, M))))


def _lin(rng, n=N):
    W = rng.normal(size=(n, n)) * 0.2
    np.fill_diagonal(W, 0.0)
    return D.LinearParams(W=jnp.asarray(W), b=jnp.asarray(rng.normal(size=n)), gamma=jnp.asarray(rng.uniform(1, 2, n)),
                          M=jnp.asarray(rng.normal(size=(n, M))))


def _generic(field):
    """The same field, unknown to the analytic table: forces the jacfwd/optimistix path."""
    return lambda x, p, *, media=None, intervention=None: field(x, p, media=media, intervention=intervention)


@pytest.mark.parametrize("kind", ["linear", "production_decay"])
def test_analytic_jacobian_equals_jacfwd_with_negative_control(kind):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        field, params = (D.linear_field, _lin(rng)) if kind == "linear" else (D.production_decay_field, _pd(rng))
        jac = D.analytic_jacobian(field)
        assert jac is not None and D.analytic_jacobian(_generic(field)) is None
        for _ in range(3):
            x, media, edit = jnp.asarray(rng.normal(size=N)), jnp.asarray(rng.normal(size=M)), _edit(rng)
            expected = jax.jacfwd(lambda y: field(y, params, media=media, intervention=edit))(x)
            got = jac(x, params, media=media, intervention=edit)
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
            assert np.allclose(got[-1], -np.eye(N)[-1])  # the clamped row
            np.testing.assert_allclose(D.jacobian(field, params, x, media=media, intervention=edit), expected,
                                       rtol=1e-12, atol=1e-12)
        # negative control: the Jacobian of slightly different parameters (or without the medium) differs
        other = params._replace(W=params.W.at[0, 1].add(0.05))
        assert not np.allclose(jac(x, other, media=media, intervention=edit), expected, rtol=1e-6, atol=1e-8)
        if kind == "production_decay":
            assert not np.allclose(jac(x, params, media=jnp.zeros(M), intervention=edit), expected, rtol=1e-6,
                                   atol=1e-8)


@pytest.mark.parametrize("mode", ["shared", "shared_falls_back"])
def test_production_decay_fast_paths_match_generic_path_values_and_gradients(mode):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        p = _pd(rng, scale=0.8)
        edits = jax.tree.map(lambda *a: jnp.stack(a), *[_edit(rng, clamp=k % 2 == 0) for k in range(4)])
        media = jnp.asarray(rng.normal(size=M))
        w = jnp.arange(1.0, N + 1)
        opts = {"shared": {}, "per_condition": {"shared": False}, "shared_falls_back": {"max_chord": 2}}[mode]

        def make(field, **kw):
            @jax.jit
            def loss(W, prod):
                ss = D.steady_states(field, p._replace(W=W), interventions=edits._replace(production=prod),
                                     media=media, x0=jnp.ones(N), fallback=False, **kw)
                return jnp.sum(jnp.where(ss.ok[:, None], ss.x, 0.0) * w), ss

            return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

        (v_fast, ss_fast), g_fast = make(D.production_decay_field, **opts)(p.W, edits.production)
        (v_gen, ss_gen), g_gen = make(_generic(D.production_decay_field))(p.W, edits.production)
        assert bool(jnp.all(ss_fast.ok)) and bool(jnp.all(ss_gen.ok))
        # chord iterations stop at the solver tolerance (1e-9); Newton paths agree to rounding
        tol = 1e-8 if mode == "shared" else 1e-10
        np.testing.assert_allclose(ss_fast.x, ss_gen.x, rtol=tol, atol=tol)
        for a, b in zip(g_fast, g_gen):
            np.testing.assert_allclose(a, b, rtol=100 * tol, atol=tol)
        assert float(jnp.max(jnp.abs(g_fast[0]))) > 1e-3  # the gradient is not trivially zero


def test_linear_closed_form_gradient_equals_differentiated_solve_and_fallback_path():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        p = _lin(rng)
        edit, media = _edit(rng), jnp.asarray(rng.normal(size=M))

        def direct(W, b):  # differentiate straight through jnp.linalg.solve
            s, clamp = edit.production, edit.clamp_mask
            A = jnp.where(clamp[:, None], -jnp.eye(N), s[:, None] * W - jnp.diag(p.gamma))
            c = jnp.where(clamp, edit.clamp_value, s * (b + p.M @ media))
            return jnp.linalg.solve(A, -c)

        def closed(W, b):
            return D.linear_steady_state(p._replace(W=W, b=b), media=media, intervention=edit).x

        def newton(W, b):  # the analytic-Jacobian Newton, with the diffrax fallback round traced
            return D.steady_state(D.linear_field, p._replace(W=W, b=b), media=media, intervention=edit,
                                  x0=jnp.zeros(N)).x

        for f in (closed, newton):
            np.testing.assert_allclose(jax.jit(f)(p.W, p.b), direct(p.W, p.b), rtol=1e-9, atol=1e-12)
            for a, b in zip(jax.jit(jax.jacobian(f, argnums=(0, 1)))(p.W, p.b), jax.jacobian(direct, argnums=(0, 1))(p.W, p.b)):
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_custom_jacobian_option_for_a_user_field():
    with jax.enable_x64(True):
        def field(x, a, *, media=None, intervention=None):
            return -jnp.tanh(x - a)

        def jac(x, a, *, media=None, intervention=None):
            return -jnp.diag(1.0 - jnp.tanh(x - a) ** 2)

        a = jnp.array([0.3, -0.2, 0.5])
        grad = jax.jit(jax.grad(lambda a: jnp.sum(D.steady_state(field, a, x0=jnp.zeros(3), jacobian=jac,
                                                                 fallback=False).x * jnp.arange(3.0))))(a)
        np.testing.assert_allclose(grad, jnp.arange(3.0), rtol=1e-9)  # x* = a
        # a wrong Jacobian (wrong sign: Newton walks away) is caught as a failed solve, not a wrong answer
        bad = D.steady_state(field, a, x0=jnp.zeros(3), jacobian=lambda x, a, **k: -jac(x, a), fallback=False)
        good = D.steady_state(field, a, x0=jnp.zeros(3), jacobian=jac, fallback=False)
        assert bool(good.ok)
        assert not bool(bad.ok) or not np.allclose(bad.x, a)


def test_shared_solve_checks_stability_like_the_per_condition_path():
    # u = 1 is a fixed point of 2 sigmoid(W u + b) - u for b = -W 1; J = 0.5 W - I there:
    # a saddle under strong mutual inhibition (eigenvalues -1 -+ 6), stable under weak (-1 -+ 0.25)
    edits = D.Intervention.scale(jnp.ones((2, 2)))
    for mutual, stable in [(-12.0, False), (-0.5, True)]:
        W = jnp.array([[0.0, mutual], [mutual, 0.0]])
        p = D.ProductionDecayParams(W=W, b=-W @ jnp.ones(2), alpha=2 * jnp.ones(2), gamma=jnp.ones(2))
        for shared in (True, False):
            ss = D.steady_states(D.production_decay_field, p, interventions=edits, x0=jnp.ones(2), fallback=False,
                                 check_stability=True, shared=shared)
            assert bool(jnp.all(ss.ok)) is stable, (mutual, shared)
            np.testing.assert_allclose(ss.x, 1.0, atol=1e-5)
