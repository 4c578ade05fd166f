"""Time-course designs: validation of times, onsets and time-matched controls (no JAX compile)."""

from __future__ import annotations

import numpy as np
import pytest

from semimech.errors import DesignError
from semimech.timecourse import check_time_grid, time_course_design, time_matched_effects

COVS = {"control": [0.0], "A": [1.0]}


def _design(time, cond, **kw):
    y = np.arange(len(time) * 2, dtype=float).reshape(len(time), 2)
    return time_course_design(y, time=time, condition=cond, covariates=COVS, control="control", **kw)


def test_valid_design_encodes_conditions_times_and_baselines():
    d = _design([0, 1, 2, 0, 1, 2], ["control"] * 3 + ["A"] * 3)
    assert d.conditions == ("control", "A")
    np.testing.assert_array_equal(d.times, [0, 1, 2])
    np.testing.assert_array_equal(d.time_index, [0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(d.x0, [[0, 1], [6, 7]])  # each condition's time-0 sample
    assert d.baseline_x.shape == (3, 2)  # non-differentiating: every control sample is a fixed point
    np.testing.assert_array_equal(d.baseline_covariates, [[0.0]] * 3)
    data = d.model_data()
    assert data["mask"].all() and data["n_obs"] == 6


def test_differentiating_baseline_is_the_pre_cue_state_only():
    d = _design([0, 1, 0, 1], ["control", "control", "A", "A"], differentiating=True, maintenance=[-1.0])
    assert d.baseline_x.shape == (1, 2)
    np.testing.assert_array_equal(d.baseline_covariates, [[-1.0]])


def test_negative_times_are_a_clear_error():
    with pytest.raises(DesignError, match="negative.*shift your clock"):
        _design([-1, 1], ["control", "A"])
    with pytest.raises(DesignError, match="negative"):
        check_time_grid([0.0, -0.5])


def test_unsorted_time_grid_is_a_clear_error():
    with pytest.raises(DesignError, match="strictly increasing"):
        check_time_grid([0.0, 2.0, 1.0])
    np.testing.assert_array_equal(check_time_grid([0.0, 1.0]), [0.0, 1.0])  # a valid grid passes


def test_perturbation_after_the_measurement_is_an_error():
    with pytest.raises(DesignError, match="perturbed at 3.5 h, after one of its measurements"):
        _design([0, 2, 3, 4], ["control", "control", "A", "A"], onset={"A": 3.5})
    d = _design([0, 2, 3, 4], ["control", "control", "A", "A"], onset={"A": 2.5})  # before: fine
    np.testing.assert_array_equal(d.onset, [0.0, 2.5])


def test_missing_time_matched_controls_in_a_differentiating_design():
    with pytest.raises(DesignError, match=r"measured at \[2.0\] h have no control.*time-matched"):
        _design([0, 1, 1, 2], ["control", "control", "A", "A"], differentiating=True)
    # the same samples are fine when the system is not differentiating (controls do not move)
    _design([0, 1, 1, 2], ["control", "control", "A", "A"])


def test_missing_control_and_covariates_are_errors():
    with pytest.raises(DesignError, match="control 'ctrl' is not among"):
        time_course_design(np.zeros((2, 1)), time=[0, 1], condition=["A", "A"], covariates=COVS, control="ctrl")
    with pytest.raises(DesignError, match="no vector for conditions"):
        time_course_design(np.zeros((2, 1)), time=[0, 1], condition=["control", "B"], covariates=COVS, control="control")
    # covariates that are not one finite vector of the same length per condition (a ragged pair failed in np.stack,
    # a NaN was fitted); the good call beside them
    args = dict(time=[0, 1, 0, 1], condition=["control", "control", "A", "A"], control="control")
    for covs, match in (({"control": [0.0], "A": [1.0, 2.0]}, r"differ in length across conditions \(\{'control': 1, 'A': 2\}\)"),
                        ({"control": [0.0], "A": [np.nan]}, r"covariates\['A'\] has non-finite entries"),
                        ({"control": [0.0], "A": "high"}, r"covariates\['A'\] must be a vector of numbers, got 'high'")):
        with pytest.raises(DesignError, match=match):
            time_course_design(np.zeros((4, 1)), covariates=covs, **args)
    with pytest.raises(DesignError, match=r"maintenance must be 1 finite covariate value\(s\).*got \[0.0, 1.0\]"):
        time_course_design(np.zeros((4, 1)), covariates={"control": [0.0], "A": [1.0]}, differentiating=True,
                           maintenance=[0.0, 1.0], **args)
    d = time_course_design(np.zeros((4, 1)), covariates={"control": [0.0], "A": [1.0]}, **args)
    assert d.covariates.tolist() == [[0.0], [1.0]]


def test_unmeasured_readouts_are_masked_and_initial_states_filled_from_the_control():
    y = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, np.nan], [6.0, np.nan]])
    d = time_course_design(y, time=[0, 1, 0, 1], condition=["control", "control", "A", "A"], covariates=COVS,
                           control="control")
    np.testing.assert_allclose(d.x0, [[1, 2], [5, 2]])
    np.testing.assert_array_equal(d.model_data()["mask"][:, 1], [True, True, False, False])
    with pytest.raises(DesignError, match="inf"):
        time_course_design(np.full((2, 1), np.inf), time=[0, 1], condition=["control"] * 2, covariates=COVS,
                           control="control")


def test_time_matched_effects_subtract_the_control_at_the_same_time():
    y = np.array([[0.0], [1.0], [5.0], [7.0]])  # control moves 0 -> 1; A moves 5 -> 7
    d = time_course_design(y, time=[0, 1, 0, 1], condition=["control", "control", "A", "A"], covariates=COVS,
                           control="control", differentiating=True)
    np.testing.assert_allclose(time_matched_effects(d)[1, :, 0], [5.0, 6.0])  # not 7 - 0
    np.testing.assert_allclose(time_matched_effects(d)[0], 0.0)
    unmatched = _design([0, 0, 1], ["control", "A", "A"])  # allowed when not differentiating ...
    with pytest.raises(DesignError, match=r"no control measured at \[1.0\] h"):
        time_matched_effects(unmatched)  # ... but a time-matched effect cannot be formed
