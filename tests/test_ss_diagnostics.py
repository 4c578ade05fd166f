"""Steady-state diagnostics in the fit summary and in predictions.

Known answer: a production-decay system with weak regulation has one stable steady state per
condition (fractions 1). Negative control: the same model with strong mutual inhibition (a
toggle switch) has an unstable (saddle) control state and two attractors, so the fractions fall
below 1 — in ``Fit.diagnostics()`` and in ``predict(...).steady_state``.
"""

import functools

import numpy as np
import pandas as pd
import pytest
import semimech as sm
from semimech.checks import is_steady_state_model, steady_state_diagnostics
from semimech.infer._sites import abstract_trace, site_dims
from semimech.infer.diagnostics import format_diagnostics
from semimech.infer.fit import Fit
from semimech.models import REGISTRY

DRAWS = 4


def _design(cells=10):
    rng = np.random.default_rng(0)
    genes = ["g0", "g1"]
    labels = np.repeat(["control", "g0", "g1"], cells)
    frame = pd.DataFrame(rng.normal(2.0, 0.3, (len(labels), 2)), columns=genes)
    frame["perturbation"] = labels
    return sm.Design.from_frame(frame, readouts=genes, perturbation_key="perturbation", control="control").pseudobulk()


@functools.lru_cache(maxsize=None)
def _hand_fit(mutual: float) -> Fit:
    """A production-decay 'fit' whose draws all have ``W = [[0, mutual], [mutual, 0]]``, operating point 0.

    At the control state ``u = 1`` the Jacobian is ``0.5 W - I`` (``alpha = 2``, ``sigmoid' = 1/4``):
    eigenvalues ``-1 +- mutual / 2``, a saddle when ``|mutual| > 2``. Built by hand (no inference):
    standardised ``*_z`` sites zero, scales one, edits ``exp(-0.3)`` on the target gene.
    """
    spec = REGISTRY["production_decay"]
    design = _design()
    opts = {**spec.default_options, "likelihood": "normal"}
    model = functools.partial(spec.model, **opts)
    data = design.model_data()
    y = np.asarray(design.dense_y(), np.float32)
    sites = {k: v for k, v in abstract_trace(model, data).items() if v[0] == "sample" and k != "y"}
    latent = {k: np.full((DRAWS, *v[1]), 0.0 if k.endswith("_z") else 1.0, np.float32) for k, v in sites.items()}
    latent["w_z"] = np.broadcast_to(np.array([[0.0, mutual], [mutual, 0.0]], np.float32), (DRAWS, 2, 2)).copy()
    latent["operating_point"] = np.zeros((DRAWS, 2), np.float32)
    latent["efficacy_loc"] = np.full(DRAWS, -0.3, np.float32)
    samples = {k: v[None] for k, v in latent.items()}
    samples["ok_fraction"] = np.ones((1, DRAWS), np.float32)
    return Fit(spec=spec, design=design, samples=samples, dims=site_dims(model, data, y), method="svi",
               options=opts, losses=np.linspace(10.0, 1.0, 50))


def test_models_are_recognised_by_their_dynamics():
    assert is_steady_state_model(REGISTRY["production_decay"])
    assert is_steady_state_model(REGISTRY["linear_steady_state"])
    assert is_steady_state_model(REGISTRY["latent_programs"])
    assert not is_steady_state_model(REGISTRY["additive"])


@pytest.mark.parametrize("mutual, expect_unique", [(-0.5, True), (-12.0, False)])
def test_fit_diagnostics_report_stable_unique_fraction_with_negative_control(mutual, expect_unique):
    fit = _hand_fit(mutual)
    d = fit.diagnostics()
    assert d["steady_state_draws"] == DRAWS
    assert set(d["steady_state_by_condition"]) == set(fit.design.perturbations)
    assert d["steady_state_min_fraction"] == min(d["steady_state_by_condition"].values())
    text = format_diagnostics(d)
    assert "stable, unique steady state" in text and d["steady_state_worst"] in text
    if expect_unique:  # known answer: weak regulation, one stable attractor everywhere
        assert d["steady_state_min_fraction"] == 1.0 and d["steady_state_all"] == 1.0
        assert d["solved_draws"] == 1.0
    else:  # toggle switch: the control is a saddle between two attractors
        assert d["steady_state_min_fraction"] < 1.0
        assert d["steady_state_by_condition"]["control"] == 0.0
        assert d["steady_state_all"] < 1.0
    # cached: the second call does not recompute (same object identity of the cached table)
    table, _ = steady_state_diagnostics(fit)
    assert table["stable_unique"].tolist() == [d["steady_state_by_condition"][p] for p in table["perturbation"]]
    assert "steady_state_min_fraction" not in fit.diagnostics(steady_state=False)


@pytest.mark.parametrize("mutual, expect_stable", [(-0.5, True), (-12.0, False)])
def test_prediction_carries_per_condition_solve_fractions(mutual, expect_stable):
    fit = _hand_fit(mutual)
    labels = ["control", "g0", "g0+g1"]  # g0+g1 is an unseen combination
    pred = sm.predict(fit, labels, rng_key=0, steady_state_draws=DRAWS)
    ss = pred.steady_state.set_index("perturbation")
    assert list(ss.index) == labels and (ss["draws"] == DRAWS).all()
    assert (ss["converged"] == 1.0).all()  # Newton from the control state finds a fixed point
    if expect_stable:
        assert (ss["stable"] == 1.0).all()
    else:  # ... but under strong mutual inhibition the control's fixed point is a saddle
        assert ss.loc["control", "stable"] == 0.0


@pytest.mark.parametrize("mutual", [-0.5, -12.0])
def test_predict_and_diagnostics_share_one_definition_of_a_stable_steady_state(mutual):
    """Issue 15: predict said 'stable 0.0' where diagnostics said 0.75 for the same fit. The
    multi-start check counted a flow that leaves the model's unstable fixed point for another
    attractor as 'stable'; now both report the model's own steady state (one definition)."""
    from semimech.checks import steady_state_check

    fit = _hand_fit(mutual)
    labels = list(fit.design.perturbations)
    ss = sm.predict(fit, labels, rng_key=0, steady_state_draws=DRAWS).steady_state.set_index("perturbation")
    table, summary = steady_state_check(fit, labels, rng_key=0, num_draws=DRAWS, num_starts=4)
    table = table.set_index("perturbation")
    # both use every draw (DRAWS of DRAWS): the fractions must agree exactly
    pd.testing.assert_series_equal(ss["converged"], table["converged"])
    pd.testing.assert_series_equal(ss["stable"], table["stable"])
    assert (table["stable_unique"] <= table["stable"]).all() and (table["unique"] <= table["stable"]).all()
    if mutual > -2:  # known answer: one stable attractor, reached from every start
        assert (table["stable_unique"] == 1.0).all() and summary == 1.0
    else:  # the control state is a saddle: unstable, whichever attractor the flow then finds
        assert table.loc["control", "stable"] == 0.0 and table.loc["control", "mean_attractors"] >= 1
        assert summary == 0.0


def test_the_steady_state_check_of_other_conditions_compiles_nothing(compile_events):
    """``predict``'s steady-state check replays the system's sites with predict's compiled program: another set of
    conditions of the same shapes compiles nothing (replayed eagerly, Predictive compiled a scan per call with the
    conditions baked in: 0.2 s of a 0.23 s what-if call on 30 genes, and memory mappings kept per call); conditions
    of other shapes compile (the negative control). The fractions stay the check's: one stable state everywhere."""
    fit = _hand_fit(-0.5)
    sm.predict(fit, ["control", "g0"], rng_key=0, steady_state_draws=DRAWS)
    with compile_events() as compiles:
        other = sm.predict(fit, ["control", "g1"], rng_key=1, steady_state_draws=DRAWS)
        reused = len(compiles)
        four = sm.predict(fit, ["control", "g0", "g1", "g0+g1"], rng_key=1, steady_state_draws=DRAWS)
    assert reused == 0 and len(compiles) > 0
    for pred in (other, four):
        assert (pred.steady_state["stable"] == 1.0).all() and (pred.steady_state["draws"] == DRAWS).all()
