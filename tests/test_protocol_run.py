"""Piecewise integration of experiments: closed forms, (non-)commutation, failure handling, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech.dynamics.intervention import Intervention
from semimech.errors import DesignError
from semimech.protocol import Evolve, Experiment, Measure, Media, Perturb, run, run_many, simultaneous, stack


def linear_field(x, params, *, media, intervention):
    """dx/dt = s * a + B m - gamma * x: media adds a constant input, the edit scales a constant production.

    Both operators only add state-independent inputs to a linear system, so by superposition
    each one's contribution to x(T) depends only on the time since it happened: the effect of
    a perturbation does not depend on when the media changed, in either order.
    """
    return intervention.production * params["a"] + params["B"] @ media - params["gamma"] * x


def sigmoid_field(x, params, *, media, intervention):
    """dx/dt = alpha * s * sigmoid(W x + b + B m) - gamma * x (production-decay, FRAMEWORK section 2)."""
    drive = params["W"] @ x + params["b"] + params["B"] @ media
    return params["alpha"] * intervention.production * jax.nn.sigmoid(drive) - params["gamma"] * x


def _linear_params():
    return dict(a=jnp.array([1.0, 2.0, 0.5]), B=jnp.array([[1.0], [0.0], [-0.3]]), gamma=jnp.array([1.0, 0.5, 2.0]))


def _sigmoid_params():
    return dict(
        alpha=jnp.array([2.0, 1.5, 1.0]),
        W=jnp.array([[0.0, -3.0, 0.0], [4.0, 0.0, 0.0], [0.0, 3.0, -1.0]]),
        b=jnp.array([0.5, -2.0, -1.0]),
        B=jnp.array([[3.0], [-1.0], [0.0]]),
        gamma=jnp.array([1.0, 0.7, 1.3]),
    )


def test_evolve_matches_exponential_relaxation_in_float64():
    with jax.enable_x64(True):
        p = _linear_params()
        m0, x0 = jnp.zeros(1), jnp.array([3.0, 0.0, 1.0])
        s = jnp.array([0.0, 0.5, 2.0])  # knockout, knockdown, activation
        m1 = jnp.array([2.0])
        exp = Perturb(Intervention.scale(s)) >> Evolve(0.7) >> Media(m1) >> Evolve(1.1) >> Evolve(0.4) >> Measure()
        res = run(exp, linear_field, p, x0=x0, media0=m0)
        g = np.asarray(p["gamma"])
        a, B = np.asarray(p["a"]), np.asarray(p["B"])
        star1 = (np.asarray(s) * a + B @ np.asarray(m0)) / g
        x1 = star1 + (np.asarray(x0) - star1) * np.exp(-g * 0.7)
        star2 = (np.asarray(s) * a + B @ np.asarray(m1)) / g
        x2 = star2 + (x1 - star2) * np.exp(-g * 1.5)
        assert res.state.dtype == jnp.float64 and bool(res.ok)
        np.testing.assert_allclose(res.state, x2, rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(res.initial, x0)


def test_zero_duration_evolve_is_the_identity():
    x0 = jnp.array([0.3, 1.0, 2.0])
    res = run(Evolve(0.0) >> Measure(), linear_field, _linear_params(), x0=x0, media0=jnp.zeros(1))
    assert bool(res.ok)
    np.testing.assert_array_equal(res.state, x0)


def test_steady_initial_state_is_the_control_fixed_point():
    with jax.enable_x64(True):
        p = _linear_params()
        m0 = jnp.array([0.5])
        res = run(Evolve(0.0) >> Measure(), linear_field, p, x0="steady", media0=m0, x_guess=jnp.zeros(3))
        expected = (np.asarray(p["a"]) + np.asarray(p["B"]) @ np.asarray(m0)) / np.asarray(p["gamma"])
        assert bool(res.ok)
        np.testing.assert_allclose(res.initial, expected, rtol=1e-8)
        # the state size can come from a Perturb in the experiment
        res2 = run(Perturb(Intervention.none(3)) >> Evolve(0.0) >> Measure(), linear_field, p, x0="steady", media0=m0)
        np.testing.assert_allclose(res2.state, expected, rtol=1e-8)
        # negative control: too short a horizon is reported, not hidden
        short = run(Evolve(0.0) >> Measure(), linear_field, p, x0="steady", media0=m0, x_guess=jnp.zeros(3), steady_horizon=1.0)
        assert not bool(short.ok)


@pytest.mark.slow  # compiles semimech.dynamics.steady_state (Newton + fallback), tested there
def test_newton_steady_start_agrees_with_the_closed_form():
    with jax.enable_x64(True):
        p, m0 = _linear_params(), jnp.array([0.5])
        expected = (np.asarray(p["a"]) + np.asarray(p["B"]) @ np.asarray(m0)) / np.asarray(p["gamma"])
        kw = dict(x0="steady", media0=m0, x_guess=jnp.ones(3))
        newton = run(Evolve(0.0) >> Measure(), linear_field, p, steady_method="newton", **kw)
        assert bool(newton.ok)
        np.testing.assert_allclose(newton.initial, expected, rtol=1e-8)
        with pytest.raises(DesignError, match="steady_method"):
            run(Evolve(0.0) >> Measure(), linear_field, p, steady_method="root", **kw)


def test_simultaneous_edits_commute_in_a_nonlinear_system():
    p = _sigmoid_params()
    a = Perturb(Intervention.scale(jnp.array([0.2, 1.0, 1.0])))
    b = Perturb(Intervention.scale(jnp.array([1.0, 1.0, 3.0])))
    tail = Evolve(5.0) >> Measure()
    kw = dict(x0=jnp.array([0.5, 0.5, 0.5]), media0=jnp.array([1.0]))
    ab = run(simultaneous(a, b) >> tail, sigmoid_field, p, **kw).state
    ba = run(simultaneous(b, a) >> tail, sigmoid_field, p, **kw).state
    seq = run(a >> b >> tail, sigmoid_field, p, **kw).state  # edits at the same instant
    np.testing.assert_allclose(ab, ba, rtol=1e-6)
    np.testing.assert_allclose(ab, seq, rtol=1e-6)
    # the same two edits separated by time do not commute
    apart = run(a >> Evolve(1.0) >> b >> tail, sigmoid_field, p, **kw).state
    apart_rev = run(b >> Evolve(1.0) >> a >> tail, sigmoid_field, p, **kw).state
    assert np.max(np.abs(np.asarray(apart) - np.asarray(apart_rev))) > 1e-2


def _order_effects(field, params, p):
    """Effect of the edit (vs the identity edit under the same schedule) measured T=2 after it,
    with the media change 1.0 before the edit ("media_then_perturb") or 1.0 after ("perturb_then_media")."""
    m1 = jnp.array([1.5])

    def both(edit):
        mtp = Media(m1) >> Evolve(1.0) >> Perturb(edit) >> Evolve(2.0) >> Measure()
        ptm = Perturb(edit) >> Evolve(1.0) >> Media(m1) >> Evolve(1.0) >> Measure()
        kw = dict(x0="steady", media0=jnp.zeros(1), x_guess=jnp.full(3, 0.5))
        return run(mtp, field, params, **kw), run(ptm, field, params, **kw)

    (mtp_p, ptm_p), (mtp_c, ptm_c) = both(p), both(Intervention.none(3, dtype=jnp.result_type(float)))
    assert all(bool(r.ok) for r in (mtp_p, ptm_p, mtp_c, ptm_c))
    states = np.asarray(mtp_p.state), np.asarray(ptm_p.state)
    effects = np.asarray(mtp_p.state - mtp_c.state), np.asarray(ptm_p.state - ptm_c.state)
    return states, effects


def test_order_of_media_and_perturbation_matters_in_a_nonlinear_system():
    with jax.enable_x64(True):
        edit = Intervention.scale(jnp.array([0.1, 1.0, 1.0]))
        (s_mtp, s_ptm), (e_mtp, e_ptm) = _order_effects(sigmoid_field, _sigmoid_params(), edit)
        assert np.max(np.abs(s_mtp - s_ptm)) > 0.05
        # the perturbation's effect itself depends on when the cue came: the orders do not commute
        assert np.max(np.abs(e_mtp - e_ptm)) > 0.05


def test_orders_agree_on_the_effect_in_a_linear_system_with_commuting_operators():
    """Superposition (see linear_field): the raw states differ (the media acted for different times),
    but the perturbation's effect against its time-matched control is the same in both orders."""
    with jax.enable_x64(True):
        edit = Intervention.scale(jnp.array([0.1, 3.0, 1.0]))
        (s_mtp, s_ptm), (e_mtp, e_ptm) = _order_effects(linear_field, _linear_params(), edit)
        assert np.max(np.abs(s_mtp - s_ptm)) > 0.05  # not vacuous: the schedules differ
        np.testing.assert_allclose(e_mtp, e_ptm, rtol=1e-7, atol=1e-9)
        # and it equals the closed form (s - 1) a / gamma * (1 - exp(-gamma T)), T = 2
        p = _linear_params()
        g = np.asarray(p["gamma"])
        closed = (np.asarray(edit.production) - 1) * np.asarray(p["a"]) / g * (1 - np.exp(-g * 2.0))
        np.testing.assert_allclose(e_mtp, closed, rtol=1e-7, atol=1e-9)


def test_failed_solves_give_ok_false_and_a_finite_state_without_raising():
    def blowup(x, params, *, media, intervention):
        return x**2  # finite-time blow-up at t = 1 / x0

    x0 = jnp.array([1.0, 1.0])
    res = run(Evolve(2.0) >> Measure(), blowup, None, x0=x0, media0=jnp.zeros(1))
    assert not bool(res.ok)
    assert np.all(np.isfinite(res.state))
    assert bool(run(Evolve(0.5) >> Measure(), blowup, None, x0=x0, media0=jnp.zeros(1)).ok)  # before the blow-up
    # a negative duration that slipped past validation (as a traced value would) is reported, not
    # raised; integrating x' = x^2 backwards from 1 is finite, so only the duration check can flag it
    neg = jax.tree.unflatten(jax.tree.structure(Evolve(0.0) >> Measure()), [jnp.array(-0.5)])
    assert not bool(run(neg, blowup, None, x0=x0, media0=jnp.zeros(1)).ok)
    # too few steps
    res = run(Evolve(50.0) >> Measure(), linear_field, _linear_params(), x0=jnp.zeros(3), media0=jnp.zeros(1), max_steps=2)
    assert not bool(res.ok)


def test_jit_and_vmap_over_protocols_of_the_same_structure():
    p = _sigmoid_params()
    specs = [(0.2, 0.5, 1.0, 3.0), (1.0, 0.0, 2.0, 1.0), (2.5, 1.0, 0.0, 0.5), (0.0, -1.0, 0.3, 4.0)]
    exps = [
        Perturb(Intervention.scale(jnp.array([s, 1.0, 1.0]))) >> Evolve(t1) >> Media(jnp.array([m])) >> Evolve(t2) >> Measure()
        for s, m, t1, t2 in specs
    ]
    kw = dict(x0=jnp.array([0.5, 0.2, 0.1]), media0=jnp.zeros(1))
    one_by_one = np.stack([np.asarray(run(e, sigmoid_field, p, **kw).state) for e in exps])
    batched = jax.jit(jax.vmap(lambda e, prm: run(e, sigmoid_field, prm, **kw), in_axes=(0, None)))(stack(exps), p)
    assert batched.state.shape == (4, 3) and bool(jnp.all(batched.ok))
    np.testing.assert_allclose(batched.state, one_by_one, rtol=1e-4, atol=1e-6)
    # run_many: a list of experiments, per-experiment initial states
    per = run_many(exps, sigmoid_field, p, x0=jnp.tile(kw["x0"], (4, 1)), media0=kw["media0"])
    np.testing.assert_allclose(per.state, one_by_one, rtol=1e-4, atol=1e-6)


def test_gradient_through_run_matches_the_closed_form_in_float64():
    with jax.enable_x64(True):
        p = _linear_params()
        x0 = jnp.zeros(3)

        def final(a, t):
            prm = dict(p, a=a)
            return run(Evolve(t) >> Measure(), linear_field, prm, x0=x0, media0=jnp.zeros(1)).state.sum()

        da, dt = jax.grad(final, argnums=(0, 1))(p["a"], jnp.array(1.3))
        g = np.asarray(p["gamma"])
        np.testing.assert_allclose(da, (1 - np.exp(-g * 1.3)) / g, rtol=1e-6)
        np.testing.assert_allclose(dt, np.sum(np.asarray(p["a"]) * np.exp(-g * 1.3)), rtol=1e-6)


@pytest.mark.parametrize(
    "exp, kw, match",
    [
        (Evolve(1.0) >> Evolve(1.0), {}, "does not end with Measure"),
        (Media(jnp.zeros(2)) >> Measure(), {}, "same length"),
        (Perturb(Intervention.none(2)) >> Measure(), {}, "state has 3"),
        (Experiment((Measure(),)), dict(x0="stable"), "not understood"),
        (Experiment((Measure(),)), dict(x0="steady"), "state size"),
        (Experiment((Measure(),)), dict(media0=None), "media0"),
    ],
)
def test_bad_run_input_names_the_problem(exp, kw, match):
    args = dict(x0=jnp.zeros(3), media0=jnp.zeros(1)) | kw
    with pytest.raises(DesignError, match=match):
        run(exp, linear_field, _linear_params(), **args)
    with pytest.raises(DesignError, match="needs an Experiment"):
        run(Measure(), linear_field, _linear_params(), x0=jnp.zeros(3), media0=jnp.zeros(1))
    assert isinstance(Experiment((Measure(),)), Experiment)


def test_the_packages_production_decay_field_runs_through_a_protocol():
    """With semimech.dynamics' own field, a knocked-out gene decays exactly as x0 * exp(-gamma t)."""
    from semimech.dynamics import ProductionDecayParams, production_decay_field

    with jax.enable_x64(True):
        p = ProductionDecayParams(
            W=jnp.array([[0.0, -2.0], [3.0, 0.0]]), b=jnp.array([0.5, -1.0]), alpha=jnp.array([1.0, 2.0]),
            gamma=jnp.array([0.8, 1.2]), M=jnp.array([[1.0], [0.0]]),
        )
        ko = Intervention.scale(jnp.array([0.0, 1.0]))
        exp = Media(jnp.ones(1)) >> Evolve(1.0) >> Perturb(ko) >> Evolve(2.5) >> Measure()
        res = run(exp, production_decay_field, p, x0="steady", media0=jnp.zeros(1), x_guess=jnp.ones(2))
        assert bool(res.ok)
        before = run(Media(jnp.ones(1)) >> Evolve(1.0) >> Measure(), production_decay_field, p, x0=res.initial, media0=jnp.zeros(1))
        np.testing.assert_allclose(res.state[0], before.state[0] * np.exp(-0.8 * 2.5), rtol=1e-7)


def test_run_many_on_a_mixed_list_returns_results_in_list_order():
    p = _sigmoid_params()
    kw = dict(x0=jnp.array([0.5, 0.2, 0.1]), media0=jnp.zeros(1))
    ko = Perturb(Intervention.scale(jnp.array([0.0, 1.0, 1.0])))
    exps = [
        ko >> Evolve(2.0) >> Measure(batch=0),
        Media(jnp.ones(1)) >> Measure(batch=1),  # no Evolve: its own (trivial) batch
        ko >> Media(jnp.ones(1)) >> Evolve(0.5) >> Measure(batch=2),
    ]
    res = run_many(exps, sigmoid_field, p, **kw)
    np.testing.assert_array_equal(res.batch, [0, 1, 2])
    for i, e in enumerate(exps):
        np.testing.assert_allclose(res.state[i], run(e, sigmoid_field, p, **kw).state, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(res.state[1], kw["x0"])
    with pytest.raises(DesignError, match="batch and some do not"):
        run_many([exps[0], ko >> Evolve(2.0) >> Measure()], sigmoid_field, p, **kw)
