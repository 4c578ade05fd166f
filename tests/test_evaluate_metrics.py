"""Each metric against a value computed by hand."""

import numpy as np
import pytest

from semimech.errors import PredictionError
from semimech.evaluate import (
    centroid_accuracy,
    direction_accuracy,
    energy_distance,
    l2,
    mse_top_de,
    pearson_delta,
    rmse,
    top_de_genes,
    top_expressed_genes,
)


def test_l2_is_euclidean_distance_per_perturbation():
    truth = np.array([[0.0, 0.0], [1.0, 1.0]])
    pred = np.array([[3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(l2(truth, pred), [5.0, 0.0])


def test_l2_on_top_expressed_genes_only():
    control = np.array([10.0, 0.1, 5.0])
    genes = top_expressed_genes(control, 2)
    np.testing.assert_array_equal(genes, [0, 2])
    truth = np.array([[1.0, 100.0, 1.0]])
    pred = np.array([[4.0, 0.0, 5.0]])
    np.testing.assert_allclose(l2(truth, pred, genes=genes), [5.0])  # gene 1 (rarely expressed) ignored


def test_pearson_delta_hand_values():
    control = np.zeros(3)
    truth = np.array([[1.0, 2.0, 3.0]] * 3)
    pred = np.array([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    # (1,2,3) vs (1,3,2): centred (-1,0,1) . (-1,1,0) = 1, norms sqrt(2) each -> 0.5
    np.testing.assert_allclose(pearson_delta(truth, pred, control), [1.0, -1.0, 0.5])


def test_pearson_delta_uses_change_from_control_not_levels():
    control = np.array([10.0, 20.0, 30.0])
    truth = control + np.array([[1.0, 0.0, -1.0]])
    pred = control + np.array([[-1.0, 0.0, 1.0]])
    # levels correlate almost perfectly, changes are exactly opposite
    assert np.corrcoef(truth[0], pred[0])[0, 1] > 0.99
    np.testing.assert_allclose(pearson_delta(truth, pred, control), [-1.0])


def test_pearson_delta_is_nan_for_constant_change():
    control = np.zeros(3)
    assert np.isnan(pearson_delta(np.array([[1.0, 2.0, 3.0]]), control[None], control)[0])


def test_mse_top_de_uses_largest_observed_changes():
    control = np.zeros(4)
    truth = np.array([[5.0, -4.0, 1.0, 0.0]])
    pred = np.array([[4.0, -4.0, 0.0, 9.0]])
    np.testing.assert_array_equal(np.sort(top_de_genes(truth, control, 2)[0]), [0, 1])
    np.testing.assert_allclose(mse_top_de(truth, pred, control, n=2), [0.5])  # ((5-4)^2 + 0) / 2
    np.testing.assert_allclose(mse_top_de(truth, pred, control, n=4), [(1 + 0 + 1 + 81) / 4])


def test_direction_accuracy_on_de_genes_and_all_genes():
    control = np.zeros(4)
    truth = np.array([[5.0, -4.0, 1.0, 0.0]])
    pred = np.array([[1.0, -1.0, -1.0, 1.0]])
    np.testing.assert_allclose(direction_accuracy(truth, pred, control, n=2), [1.0])
    np.testing.assert_allclose(direction_accuracy(truth, pred, control, n=None), [0.5])


def test_centroid_accuracy_hand_values():
    centroids = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [10.0, 10.0]])
    pred = np.array([[0.1, 0.0], [1.5, 0.0], [2.0, 0.0]])
    own = np.array([0, 0, 0])
    # 1st: all 3 others farther; 2nd: (2,0) is closer (0.5 < 1.5), the other two farther;
    # 3rd: sits on another centroid, only (0,2) at 2.83 and (10,10) farther than own (2.0)
    np.testing.assert_allclose(centroid_accuracy(pred, centroids, own), [1.0, 2 / 3, 2 / 3])


def test_centroid_accuracy_of_constant_prediction_is_not_perfect():
    centroids = np.array([[0.0], [1.0], [3.0]])
    pred = np.array([[1.0], [1.0], [1.0]])  # the same prediction for all three
    acc = centroid_accuracy(pred, centroids, np.arange(3))
    np.testing.assert_allclose(acc, [0.5, 1.0, 0.0])


def test_energy_distance_hand_value_and_symmetry():
    x = np.array([[0.0], [1.0]])
    y = np.array([[2.0], [3.0]])
    # 2 * mean|x-y| (2) - mean over distinct pairs |x-x'| (1) - |y-y'| (1)
    assert energy_distance(x, y) == pytest.approx(2.0)
    assert energy_distance(y, x) == pytest.approx(2.0)


def test_energy_distance_separates_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    c = rng.normal(size=(200, 3)) + np.array([1.0, 0.0, 0.0])
    same, shifted = energy_distance(a, b), energy_distance(a, c)
    assert abs(same) < 0.05 and shifted > 0.3


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(PredictionError, match="differ in shape"):
        l2(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(PredictionError, match="at least two centroids"):
        centroid_accuracy(np.zeros((1, 2)), np.zeros((1, 2)), [0])


def test_rmse_is_l2_over_root_genes():
    truth = np.zeros((1, 4))
    pred = np.array([[1.0, -1.0, 1.0, -1.0]])
    np.testing.assert_allclose(rmse(truth, pred), [1.0])
    np.testing.assert_allclose(rmse(truth, pred, genes=[0, 1]), [1.0])
