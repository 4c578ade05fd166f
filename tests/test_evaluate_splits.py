"""Splits: what goes where, determinism, controls on both sides, clear errors."""

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES
from semimech.errors import DesignError
from semimech.evaluate import (
    leave_one_condition_out,
    leave_one_perturbation_out,
    leave_one_target_out,
    singles_seen,
    split_combinations,
    split_rows,
    transfer,
)


@pytest.fixture(scope="module")
def design():
    labels = ["control"] * 4 + ["A", "B", "C", "D", "A+B", "C+D", "A+C", "B+D", "A+E", "E+F"]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(len(labels), 3)), columns=["g1", "g2", "g3"])
    frame["p"] = labels
    frame["line"] = ["L1", "L2"] * (len(labels) // 2)
    frame.index = [f"r{i}" for i in range(len(labels))]
    return sm.Design.from_frame(frame, readouts=["g1", "g2", "g3"], perturbation_key="p", control="control"), frame


def _labels(d):
    return set(d.observed_perturbations())


def test_split_combinations_all_singles_seen(design):
    d, _ = design
    train, test = split_combinations(d)
    assert _labels(test) == {"control", "A+B", "C+D", "A+C", "B+D"}  # A+E, E+F lack singles
    assert _labels(train) == {"control", "A", "B", "C", "D", "A+E", "E+F"}
    assert train.perturbations == d.perturbations and train.targets == d.targets  # encodings kept
    assert all(v == 2 for v in singles_seen(train, ["A+B", "C+D"]).values())


def test_split_combinations_fraction_is_deterministic_given_key(design):
    d, _ = design
    a = _labels(split_combinations(d, fraction=0.5, rng_key=0)[1])
    b = _labels(split_combinations(d, fraction=0.5, rng_key=0)[1])
    assert a == b and len(a) == 3
    others = {frozenset(_labels(split_combinations(d, fraction=0.5, rng_key=k)[1])) for k in range(8)}
    assert len(others) > 1
    with pytest.raises(DesignError, match="rng_key"):
        split_combinations(d, fraction=0.5)


@pytest.mark.parametrize("k", [0, 1])
def test_split_combinations_hides_singles(design, k):
    d, _ = design
    train, test = split_combinations(d, singles_seen=k, test_labels=["A+B"], rng_key=3)
    seen = singles_seen(train, ["A+B"])["A+B"]
    assert seen == k
    hidden = {"A", "B"} - _labels(train)
    assert len(hidden) == 2 - k and hidden <= _labels(test)
    # no training condition edits a hidden target
    assert not any(set(train.targets_of(p)) & hidden for p in _labels(train))


def test_split_combinations_norman_recovers_the_combinable_doubles(norman_design):
    train, test = split_combinations(norman_design)
    assert set(test.observed_perturbations()) - {"control"} == set(NORMAN19_COMBINABLE_DOUBLES)
    assert len(train.observed_perturbations()) == 1 + 19 + 9


def test_controls_go_to_both_sides(design):
    d, _ = design
    train, test = leave_one_perturbation_out(d, "A+B")
    assert _labels(test) == {"control", "A+B"}
    n_ctrl = np.sum(d.perturbation_index == 0)
    assert np.sum(train.perturbation_index == 0) == n_ctrl == np.sum(test.perturbation_index == 0)
    assert train.n_obs + test.n_obs == d.n_obs + n_ctrl


def test_leave_one_target_out_removes_every_condition_with_it(design):
    d, _ = design
    train, test = leave_one_target_out(d, "A")
    assert _labels(test) == {"control", "A", "A+B", "A+C", "A+E"}
    assert "A" not in {t for p in _labels(train) for t in train.targets_of(p)}


def test_leave_one_condition_out_with_generic_conditions(design):
    d, frame = design
    cond = np.where(frame["p"].str.contains("A"), "hasA", "other")
    train, test = leave_one_condition_out(d, "hasA", conditions=cond)
    assert _labels(test) == {"control", "A", "A+B", "A+C", "A+E"}
    assert leave_one_condition_out(d, "C")[1].observed_perturbations() == ("control", "C")


def test_transfer_holds_out_a_context(design):
    d, frame = design
    train, test = transfer(d, contexts=frame["line"].to_numpy(), test_contexts=["L2"])
    assert set(test.obs_names) == set(frame.index[(frame["line"] == "L2") | (frame["p"] == "control")])
    masked_train, masked_test = transfer(d, contexts=frame["line"].to_numpy(), test_contexts="L2", controls="masked")
    assert np.sum(masked_train.perturbation_index == 0) == 2 and np.sum(masked_test.perturbation_index == 0) == 2


def test_a_split_without_training_controls_is_refused(design):
    d, frame = design
    mask = (frame["p"] == "control").to_numpy() | (frame["p"] == "A").to_numpy()
    with pytest.raises(DesignError, match="without control"):
        split_rows(d, mask, controls="masked")
    only_l1_controls = d.subset(~((frame["p"] == "control") & (frame["line"] == "L2")).to_numpy())
    line = np.asarray([frame.loc[o, "line"] for o in only_l1_controls.obs_names])
    with pytest.raises(DesignError, match="training set without control"):
        transfer(only_l1_controls, contexts=line, test_contexts=["L1"], controls="masked")


def test_bad_split_requests_are_clear_errors(design):
    d, _ = design
    with pytest.raises(DesignError, match="boolean"):
        split_rows(d, np.zeros(3, bool))
    with pytest.raises(DesignError, match="no perturbed rows"):
        split_rows(d, np.zeros(d.n_obs, bool))
    with pytest.raises(DesignError, match="control"):
        leave_one_perturbation_out(d, "control")
    with pytest.raises(DesignError, match="not in the design"):
        leave_one_perturbation_out(d, "Z")
    with pytest.raises(DesignError, match="0, 1 or 2"):
        split_combinations(d, singles_seen=3)
    with pytest.raises(DesignError, match="not observed combinations"):
        split_combinations(d, test_labels=["A"])
    with pytest.raises(DesignError, match="do not occur"):
        transfer(d, contexts=["x"] * d.n_obs, test_contexts=["y"])


def test_transfer_by_batches(design):
    _, frame = design
    d = sm.Design.from_frame(frame, readouts=["g1", "g2", "g3"], perturbation_key="p", control="control",
                             batch_key="line")
    train, test = transfer(d, contexts="batches", test_contexts=["L1"])
    assert set(np.asarray(d.batches)[test.batch_index[test.perturbation_index != 0]]) == {"L1"}
    assert set(np.asarray(d.batches)[train.batch_index[train.perturbation_index != 0]]) == {"L2"}
    with pytest.raises(DesignError, match="batches"):
        transfer(design[0], contexts="batches", test_contexts=["L1"])
