"""Coverage, PIT, CRPS, log predictive density by hand; calibration verdicts on known cases."""

import numpy as np
import pytest
from scipy import stats

from semimech.errors import PredictionError
from semimech.evaluate import (
    calibration_report,
    coverage,
    crps,
    log_predictive_density,
    pit,
    pit_histogram,
)


def test_coverage_hand_value():
    draws = np.arange(101.0).reshape(101, 1, 1)  # quantiles: 50% -> [25, 75], 80% -> [10, 90]
    cov = coverage(np.array([[30.0]]), draws, (0.5, 0.8))
    np.testing.assert_allclose(cov, [[1.0], [1.0]])
    cov = coverage(np.array([[80.0]]), draws, (0.5, 0.8))
    np.testing.assert_allclose(cov, [[0.0], [1.0]])


def test_coverage_averages_over_genes_per_perturbation():
    draws = np.broadcast_to(np.arange(101.0)[:, None, None], (101, 2, 4))
    truth = np.array([[30.0, 80.0, 50.0, -1.0], [0.0, 0.0, 0.0, 50.0]])
    np.testing.assert_allclose(coverage(truth, draws, (0.5,)), [[0.5, 0.25]])


def test_pit_hand_values():
    draws = np.array([0.0, 1.0, 2.0, 3.0]).reshape(4, 1, 1)
    assert pit(np.array([[1.5]]), draws)[0, 0] == pytest.approx(0.5)
    assert pit(np.array([[1.0]]), draws)[0, 0] == pytest.approx(0.375)  # (1 below + half of 1 tie) / 4
    assert pit(np.array([[-5.0]]), draws)[0, 0] == 0.0


def test_crps_hand_values():
    draws = np.array([0.0, 1.0]).reshape(2, 1, 1)
    # E|X - 0.5| = 0.5; E|X - X'| over all 4 pairs = 0.5 -> 0.5 - 0.25
    assert crps(np.array([[0.5]]), draws)[0, 0] == pytest.approx(0.25)
    point = np.full((5, 1, 1), 2.0)
    assert crps(np.array([[-1.0]]), point)[0, 0] == pytest.approx(3.0)  # reduces to absolute error


def test_crps_matches_closed_form_for_a_normal():
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(20000, 1, 1))
    y = 0.7
    exact = 2 * stats.norm.pdf(y) + y * (2 * stats.norm.cdf(y) - 1) - 1 / np.sqrt(np.pi)  # Gneiting & Raftery
    assert crps(np.array([[y]]), draws)[0, 0] == pytest.approx(exact, abs=0.01)


def test_log_predictive_density_gaussian_approximation_hand_value():
    draws = np.array([-1.0, 1.0]).reshape(2, 1, 1)  # mean 0, sd (ddof 1) sqrt(2)
    expected = -0.5 * np.log(2 * np.pi * 2.0)
    assert log_predictive_density(np.array([[0.0]]), draws)[0] == pytest.approx(expected)
    # genes add
    draws2 = np.concatenate([draws, draws], axis=2)
    assert log_predictive_density(np.zeros((1, 2)), draws2)[0] == pytest.approx(2 * expected)


def test_log_predictive_density_from_per_draw_loglik():
    ll = np.log(np.array([[0.2], [0.4]]))  # (draws, perturbations)
    assert log_predictive_density(None, loglik=ll)[0] == pytest.approx(np.log(0.3))
    ll3 = np.log(np.array([[[0.5, 0.4]], [[0.5, 0.8]]]))  # genes multiply within a draw: 0.2 and 0.4
    assert log_predictive_density(None, loglik=ll3)[0] == pytest.approx(np.log(0.3))


def test_point_prediction_has_no_probabilistic_score():
    with pytest.raises(PredictionError, match="at least 2"):
        coverage(np.zeros((1, 2)), np.zeros((1, 1, 2)))


def _simulate(sd_factor, seed, P=20, G=100, S=1000):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(P, G))
    sd = rng.uniform(0.2, 2.0, size=(P, G))
    truth = mu + sd * rng.normal(size=(P, G))
    draws = mu + sd_factor * sd * rng.normal(size=(S, P, G))
    return truth, draws


def test_correct_model_is_calibrated_within_monte_carlo_error():
    truth, draws = _simulate(1.0, seed=1)
    report = calibration_report(truth, draws)
    assert report.verdict == "calibrated", str(report)
    n = truth.size
    for row in report.table.itertuples():
        assert abs(row.empirical - row.nominal) < 3 * np.sqrt(row.nominal * (1 - row.nominal) / n)
    counts, _ = pit_histogram(pit(truth, draws), bins=10)
    assert stats.chisquare(counts).pvalue > 0.01  # PIT uniform


def test_correct_model_rarely_flagged_across_seeds():
    verdicts = [calibration_report(*_simulate(1.0, seed=s, P=10, G=50, S=400)).verdict for s in range(20)]
    assert verdicts.count("calibrated") >= 17  # family-wise alpha 0.05


def test_overconfident_model_is_flagged():
    truth, draws = _simulate(0.3, seed=2)
    report = calibration_report(truth, draws)
    assert report.verdict == "overconfident"
    assert "overconfident" in str(report)
    assert (report.table.empirical < report.table.nominal - 0.2).all()
    counts, _ = pit_histogram(pit(truth, draws), bins=10)
    assert counts[0] + counts[-1] > 3 * (counts[4] + counts[5])  # U-shaped PIT


def test_underconfident_model_is_flagged():
    truth, draws = _simulate(3.0, seed=3)
    assert calibration_report(truth, draws).verdict == "underconfident"


def test_mildly_miscalibrated_model_is_caught_with_enough_entries():
    truth, draws = _simulate(0.8, seed=4, P=40, G=200, S=400)
    assert calibration_report(truth, draws).verdict == "overconfident"
