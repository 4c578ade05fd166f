"""Neural ODE point estimate with and without the steady-state loss (tiny closed-form system)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from semimech.errors import DesignError, InferenceError
from semimech.models.neural_ode import baseline_drift, fit_neural_ode, predict_neural_ode
from semimech.timecourse import time_course_design

K, C = 1.5, np.array([0.5, -0.3])
B = np.array([[1.0, 0.0], [0.5, -1.0]])
COVS = {"control": [0.0, 0.0], "A": [1.0, 0.0], "B": [0.0, 1.0], "A+B": [1.0, 1.0]}


def linear_relaxation_design(seed=0, noise=0.02):
    """dx/dt = -K (x - C - B u): x(t) = C + (1 - exp(-K t)) B u from the control fixed point C."""
    rng = np.random.default_rng(seed)
    times = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    rows = [(c, t) for c in COVS for t in times for _ in range(2)]
    y = np.array([C + (1 - np.exp(-K * t)) * (B @ np.asarray(COVS[c])) for c, t in rows])
    y = y + noise * rng.normal(size=y.shape)
    return time_course_design(y, time=[t for _, t in rows], condition=[c for c, _ in rows], covariates=COVS,
                              control="control")


@pytest.fixture(scope="module")
def fits():
    d = linear_relaxation_design()
    held = d.conditions_mask(["A+B"])
    train = d.subset(~held)
    out = {w: fit_neural_ode(train, rng_key=0, steady_state_weight=w, width=8, num_steps=300, learning_rate=2e-2)
           for w in (0.0, 1000.0)}
    return d, train, d.subset(held & (d.time > 0)), out


def test_fit_learns_the_time_courses(fits):
    d, train, test, out = fits
    fit = out[0.0]
    assert fit.n_failed == 0
    assert np.nanmean(fit.losses[-20:]) < np.nanmean(fit.losses[:20]) - 1.0
    mu, ok = predict_neural_ode(fit, d)  # one prediction compile: the full design, sliced
    assert ok.all()
    tr = ~d.conditions_mask(["A+B"])
    rmse_train = np.sqrt(np.mean((mu[tr] - d.y[tr]) ** 2))
    no_change = np.sqrt(np.mean((d.x0[d.condition_index[tr]] - d.y[tr]) ** 2))
    assert rmse_train < 0.3 * no_change  # fits the training curves; a no-change predictor does not


def test_steady_state_term_pins_the_baseline(fits):
    d, _, _, out = fits
    drift = {w: float(np.mean(baseline_drift(f.fn, f.params["field"], d.baseline_x, d.baseline_covariates)))
             for w, f in out.items()}
    assert drift[1000.0] < 0.5 * drift[0.0]
    assert drift[1000.0] < 0.05
    # negative control: under a perturbation the fitted field still moves the control state
    f = out[1000.0]
    pert = baseline_drift(f.fn, f.params["field"], d.baseline_x, np.repeat([[1.0, 0.0]], d.baseline_x.shape[0], 0))
    assert float(np.mean(pert)) > 10 * drift[1000.0]


def test_predicts_a_held_out_combination_better_than_no_change(fits):
    d, _, _, out = fits
    held = d.conditions_mask(["A+B"]) & (d.time > 0)
    no_change = np.sqrt(np.mean((d.x0[d.condition_index[held]] - d.y[held]) ** 2))
    for fit in out.values():
        mu, ok = predict_neural_ode(fit, d)
        assert ok.all() and np.sqrt(np.mean((mu[held] - d.y[held]) ** 2)) < no_change


def test_predict_refuses_a_design_unlike_the_training_one(fits):
    """A design with other readouts or covariates failed in ``dot_general`` (a JAX traceback); a steady-state design
    or anything else in an AttributeError; ``max_steps=0`` silently meant the fit's own. The good call: the tests above."""
    from semimech.errors import DesignError, InferenceError, PredictionError

    d, train, _, out = fits
    fit = out[0.0]
    assert fit.trained == (2, 2)
    wider = time_course_design(np.ones((4, 3)), time=[0, 1, 0, 1], condition=["control", "control", "A", "A"],
                               covariates={"control": [0.0, 0.0], "A": [1.0, 0.0]}, control="control")
    with pytest.raises(PredictionError, match=r"fitted on 2 readout\(s\) and 2 covariate\(s\).*this design has 3 and 2"):
        predict_neural_ode(fit, wider)
    with pytest.raises(DesignError, match="takes a TimeCourseDesign"):
        predict_neural_ode(fit, d.y)
    with pytest.raises(InferenceError, match=r"max_steps must be a positive integer"):
        predict_neural_ode(fit, d, max_steps=0)


def test_time_course_and_bayesian_predicts_check_the_design_and_draws_first():
    """The same checks on the two posterior fits, made by hand (the checks come before any model is run)."""
    from semimech.errors import PredictionError
    from semimech.models.neural_ode_bayes import BayesNeuralODEFit, predict_neural_ode_bayes
    from semimech.models.time_course import TimeCourseFit, predict_time_course

    d = linear_relaxation_design()
    tc = TimeCourseFit(samples={"w": np.zeros((4, 2))}, losses=np.zeros(0), n_rejected=0, options={}, trained=(2, 2))
    bn = BayesNeuralODEFit(samples={"field_params": np.zeros((4, 3))}, template=None, method="svi", n_rejected=0,
                           losses=np.zeros(0), options={}, trained=(3, 2))
    for bad, match in ((0, r"num_draws must be a positive integer \(None: every draw\), got 0"),
                       (-1, "got -1"), (2.5, "got 2.5")):
        with pytest.raises(PredictionError, match=match):
            predict_time_course(tc, d, rng_key=0, num_draws=bad)
    with pytest.raises(PredictionError, match=r"fitted on 3 readout\(s\) and 2 covariate\(s\).*this design has 2 and 2"):
        predict_neural_ode_bayes(bn, d)


def test_failed_solves_are_skipped_and_a_fit_with_no_good_step_is_a_clear_error(fits):
    # a non-finite initial state makes every solve fail (ok=False): every step is skipped, and the
    # fit says so instead of returning garbage or crashing (same compiled loop as the fixture)
    _, train, _, _ = fits
    bad = dataclasses.replace(train, x0=np.full_like(train.x0, np.nan))
    with pytest.raises(InferenceError, match="every optimisation step failed.*max_steps"):
        fit_neural_ode(bad, rng_key=0, width=8, num_steps=300, learning_rate=2e-2)


@pytest.mark.slow
def test_a_starved_solver_fails_every_step_without_crashing():
    d = linear_relaxation_design()
    with pytest.raises(InferenceError, match="every optimisation step failed"):
        fit_neural_ode(d.subset(~d.conditions_mask(["A+B"])), rng_key=0, width=8, num_steps=300, learning_rate=2e-2,
                       max_steps=1)


def test_bad_options_are_clear_errors():
    d = linear_relaxation_design()
    with pytest.raises(DesignError, match="steady_state_weight must be a finite number >= 0, got -1.0"):
        fit_neural_ode(d, rng_key=0, steady_state_weight=-1.0)
    with pytest.raises(DesignError, match="initial must be"):
        fit_neural_ode(d, rng_key=0, initial="steady")
    with pytest.raises(DesignError, match="non-negative states"):
        fit_neural_ode(d, rng_key=0, field="production_decay")
    with pytest.raises(DesignError, match="latent onset"):
        fit_neural_ode(dataclasses.replace(d, differentiating=True), rng_key=0, onset="latent")
    late = dataclasses.replace(d, differentiating=True, onset=np.array([0.0, 0.2, 0.0, 0.0]))
    with pytest.raises(DesignError, match="after the cue.*schedule"):
        fit_neural_ode(late, rng_key=0)
    with pytest.raises(DesignError, match="prediction design"):
        fit_neural_ode(dataclasses.replace(d, y=None), rng_key=0)
