"""Each baseline on a tiny worked example."""

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import DesignError
from semimech.evaluate import BASELINES, additive, linear, min_single, no_change, split_rows, train_mean


@pytest.fixture
def tiny():
    frame = pd.DataFrame(
        {"p": ["control", "control", "A", "B", "A+B", "C"],
         "g1": [1.0, 3.0, 4.0, 2.0, 5.0, 0.0],
         "g2": [2.0, 4.0, 3.0, 6.0, 5.0, 0.0]},
        index=[f"r{i}" for i in range(6)])
    return sm.Design.from_frame(frame, readouts=["g1", "g2"], perturbation_key="p", control="control", counts=False)


def test_no_change_is_the_control_mean(tiny):
    p = no_change(tiny, ["A+B", "C"])
    np.testing.assert_allclose(p.values, [[2.0, 3.0], [2.0, 3.0]])
    assert p.perturbations == ("A+B", "C") and p.genes == ("g1", "g2")


def test_train_mean_weights_each_perturbation_equally(tiny):
    train, _ = split_rows(tiny, np.array([False, False, False, False, True, False]))  # A+B held out
    p = train_mean(train, ["A+B"])
    np.testing.assert_allclose(p.values, [[(4 + 2 + 0) / 3, (3 + 6 + 0) / 3]])


def test_additive_adds_single_effects_to_control(tiny):
    # control (2, 3); A effect (2, 0); B effect (0, 3); C effect (-2, -3) -> A+B = (4, 6), A+C = (2, 0)
    p = additive(tiny, ["A+B", "B+A", "A+C", "A"])
    np.testing.assert_allclose(p.values, [[4.0, 6.0], [4.0, 6.0], [2.0, 0.0], [4.0, 3.0]])
    assert p.info["missing_singles"] == {}


def test_additive_records_targets_without_a_single(tiny):
    train, _ = split_rows(tiny, np.array([False, False, False, True, False, False]))  # B held out
    p = additive(train, ["A+B"])
    np.testing.assert_allclose(p.values, [[4.0, 3.0]])  # B contributes nothing
    assert p.info["missing_singles"] == {"A+B": ["B"]}


def _linear_design():
    # genes u = (1, -1, 0) direction: X[:, j] = a_j * u + m_j, so the centred matrix is rank one
    frame = pd.DataFrame(
        {"p": ["control", "g1", "g2", "g1+g2"],
         "g1": [5.0, 7.0, 3.0, 0.0], "g2": [5.0, 3.0, 5.0, 0.0], "g3": [5.0, 5.0, 4.0, 0.0]},
        index=["c", "a", "b", "ab"])
    d = sm.Design.from_frame(frame, readouts=["g1", "g2", "g3"], perturbation_key="p", control="control",
                              counts=False)
    return split_rows(d, np.array([False, False, False, True]))


@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_linear_model_worked_example(ridge):
    # Worked by hand: centred columns = u a^T, a = (0, 2, -1), so G = sqrt(5) u (K = 1, sign free),
    # embeddings p(ctrl) = 0, p(g1) = G[g1] = sqrt 5, p(g2) = G[g2] = -sqrt 5.
    # Y = X - ctrl: (0,0,0), (2,-2,0), (-2,0,-1); b = row means = (0, -2/3, -1/3).
    # G^T (Y - b) P = 50/3 + 40/3 = 30, G^T G = P^T P = 10 -> W = 30 / (10 + ridge)^2.
    train, _ = _linear_design()
    p = linear(train, ["g1", "g1+g2", "control"], ridge=ridge)
    w = 30.0 / (10.0 + ridge) ** 2
    ctrl_plus_b = np.array([5.0, 5 - 2 / 3, 5 - 1 / 3])
    np.testing.assert_allclose(p.values[0], ctrl_plus_b + 5 * w * np.array([1.0, -1.0, 0.0]), atol=1e-10)
    np.testing.assert_allclose(p.values[1], ctrl_plus_b, atol=1e-10)  # embeddings cancel: sqrt5 - sqrt5
    np.testing.assert_allclose(p.values[2], ctrl_plus_b, atol=1e-10)
    assert p.info["n_components"] == 1 and p.info["unembedded"] == {}


def test_linear_model_unembedded_targets_fall_back_to_b(tiny):
    p = linear(tiny, ["A+B"])
    assert p.info["unembedded"] == {"A+B": ["A", "B"]}
    assert p.info["fitted_conditions"] == ["control"]
    singles = linear(tiny, ["A+B"], embedding="singles")
    assert singles.info["unembedded"] == {}
    with pytest.raises(DesignError, match="embedding"):
        linear(tiny, ["A"], embedding="pca")


def test_baselines_accept_a_test_design_and_refuse_unknown_targets(tiny):
    train, test = split_rows(tiny, np.array([False, False, False, False, True, False]))
    for name, fn in BASELINES.items():
        p = fn(train, test)
        assert p.perturbations == ("A+B",) and p.model == name and np.all(np.isfinite(p.values))
    with pytest.raises(DesignError, match="not a target"):
        additive(train, ["A+Z"])


def test_effects_are_taken_within_batches_and_transferred_to_a_batch():
    # b1: control (0, 0) x1, A (1, 0) x3; b2: control (10, 10) x3, A (11, 10) x1. Pooled means
    # would confound batch with perturbation (A - control = (-4, -5)); within batches A adds (1, 0).
    from semimech.evaluate import perturbation_effects

    rows = [("control", "b1", 0, 0)] + [("A", "b1", 1, 0)] * 3 + [("control", "b2", 10, 10)] * 3 + [("A", "b2", 11, 10)]
    frame = pd.DataFrame(rows, columns=["p", "b", "g1", "g2"], index=[f"r{i}" for i in range(8)])
    d = sm.Design.from_frame(frame, readouts=["g1", "g2"], perturbation_key="p", control="control", batch_key="b",
                             counts=False)
    labels, eff = perturbation_effects(d)
    np.testing.assert_allclose(eff[labels.index("A")], [1.0, 0.0])
    np.testing.assert_allclose(additive(d, ["A"], batch="b2").values, [[11.0, 10.0]])
    np.testing.assert_allclose(no_change(d, ["A"], batch="b1").values, [[0.0, 0.0]])
    np.testing.assert_allclose(train_mean(d, ["A"], batch="b1").values, [[1.0, 0.0]])
    with pytest.raises(DesignError, match="not a batch"):
        no_change(d, ["A"], batch="b3")


def test_min_single_takes_the_lowest_single_mean_per_gene(tiny):
    # singles: A (4, 3), B (2, 6), C (0, 0); control (2, 3)
    p = min_single(tiny, ["A+B", "A+C", "A"])
    np.testing.assert_allclose(p.values, [[2.0, 3.0], [0.0, 0.0], [4.0, 3.0]])
    train, _ = split_rows(tiny, np.array([False, False, False, True, False, False]))  # B held out
    p = min_single(train, ["A+B"])
    np.testing.assert_allclose(p.values, [[4.0, 3.0]])
    assert p.info["missing_singles"] == {"A+B": ["B"]}
