"""Design tools: exact checks of the analytic error analysis, Layout validation, allocation."""

import dataclasses

import numpy as np
import pytest

from semimech.design import (
    Layout,
    balanced_layout,
    contrast_weights,
    cross_batch_error,
    layout_error,
    recommend_control_allocation,
    within_batch_error,
)
from semimech.errors import DesignError


def cross_layout(n_p, n_0):
    """One perturbation in batch 0 only, controls in batch 1 only (warns: batch 0 has none)."""
    with pytest.warns(UserWarning, match="no controls"):
        return Layout(cells=[[n_p, 0]], controls=[0, n_0])


# ---------------------------------------------------------------- analytic closed forms


def test_within_batch_closed_form():
    err = within_batch_error(40, 160, n_batches=4, sigma=2.0, tau=0.7)
    assert err.noise_variance == pytest.approx(4.0 * (1 / 40 + 1 / 160) / 4)
    assert err.batch_variance == 0.0 and err.bias == 0.0
    assert err.mse == pytest.approx(err.variance)


def test_cross_batch_carries_two_tau_squared_per_pair():
    err = cross_batch_error(40, 160, sigma=2.0, tau=0.7)
    assert err.noise_variance == pytest.approx(4.0 * (1 / 40 + 1 / 160))
    assert err.batch_variance == pytest.approx(2 * 0.7**2)
    more = cross_batch_error(40, 160, n_batches=3, n_control_batches=2, sigma=2.0, tau=0.7)
    assert more.batch_variance == pytest.approx(0.49 * (1 / 3 + 1 / 2))


def test_cross_batch_variance_does_not_shrink_with_cells_but_within_does():
    n_p = np.array([10, 100, 1_000, 100_000])
    within = within_batch_error(n_p, 4 * n_p, sigma=1.0, tau=0.5).variance
    cross = cross_batch_error(n_p, 4 * n_p, sigma=1.0, tau=0.5).variance
    assert within[-1] < within[0] / 1000  # shrinks like 1/n_p
    assert np.all(cross >= 2 * 0.25) and cross[-1] == pytest.approx(0.5, rel=1e-4)  # floor 2 tau^2
    assert np.all(np.diff(within) < 0)


def test_negative_control_tau_zero_cross_equals_within():
    for n_p, n_0 in [(5, 5), (30, 120), (200, 50)]:
        w = within_batch_error(n_p, n_0, sigma=1.3, tau=0.0)
        c = cross_batch_error(n_p, n_0, sigma=1.3, tau=0.0)
        assert c.variance == pytest.approx(w.variance)
    # ...and with tau > 0 they differ by exactly 2 tau^2
    assert cross_batch_error(30, 120, sigma=1.3, tau=0.4).variance - within_batch_error(
        30, 120, sigma=1.3, tau=0.4
    ).variance == pytest.approx(2 * 0.16)


def test_time_mismatch_bias_enters_mse():
    err = within_batch_error(50, 200, sigma=1.0, drift=0.3, time_mismatch=2.0)
    assert err.bias == pytest.approx(0.6)
    assert err.mse == pytest.approx(0.36 + err.variance)
    assert within_batch_error(50, 200, sigma=1.0, drift=0.3).bias == 0.0  # time-matched controls
    assert cross_batch_error(50, 200, sigma=1.0, tau=0.2, drift=0.3, time_mismatch=-1.0).bias == pytest.approx(-0.3)
    assert within_batch_error(50, 200, sigma=1.0, drift=0.0, time_mismatch=5.0).bias == 0.0  # steady state


def test_layout_error_matches_scalar_formulas():
    layout = balanced_layout(5, 3, cells_per_perturbation=40, controls_per_batch=90)
    for weights in ("inverse_variance", "equal"):
        err = layout_error(layout, sigma=1.5, tau=0.6, weights=weights)
        ref = within_batch_error(40, 90, n_batches=3, sigma=1.5)
        np.testing.assert_allclose(err.variance, ref.variance)
    err = layout_error(cross_layout(40, 90), sigma=1.5, tau=0.6, comparison="cross", weights="equal")
    np.testing.assert_allclose(err.variance, cross_batch_error(40, 90, sigma=1.5, tau=0.6).variance)


def test_layout_error_nan_where_comparison_impossible():
    layout = cross_layout(40, 90)
    assert np.isnan(layout_error(layout, sigma=1.0, tau=0.5, comparison="within").variance[0])
    full = balanced_layout(2, 2, cells_per_perturbation=10, controls_per_batch=10)
    assert np.all(np.isnan(layout_error(full, sigma=1.0, tau=0.5, comparison="cross").variance))


def test_pooled_comparison_cancels_batches_only_when_proportional():
    balanced = balanced_layout(3, 4, cells_per_perturbation=20, controls_per_batch=60)
    assert np.allclose(layout_error(balanced, sigma=1.0, tau=0.5, comparison="pooled").batch_variance, 0.0)
    skewed = Layout(cells=[[50, 10], [10, 50]], controls=[30, 30])
    assert np.all(layout_error(skewed, sigma=1.0, tau=0.5, comparison="pooled").batch_variance > 0.05)


def test_inverse_variance_weights_beat_equal_weights_on_unbalanced_layout():
    layout = Layout(cells=[[5, 200, 50]], controls=[300, 20, 80])
    iv = layout_error(layout, sigma=1.0, tau=0.5, weights="inverse_variance").variance[0]
    eq = layout_error(layout, sigma=1.0, tau=0.5, weights="equal").variance[0]
    assert iv < eq
    a, c = contrast_weights(layout, comparison="within")
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    np.testing.assert_allclose(a, c)


def test_fixed_batch_effects_become_bias():
    layout = cross_layout(40, 90)
    err = layout_error(layout, sigma=1.0, tau=0.5, comparison="cross", batch_effects=[0.3, -0.2])
    assert err.bias[0] == pytest.approx(0.5) and err.batch_variance[0] == 0.0
    full = balanced_layout(2, 2, cells_per_perturbation=10, controls_per_batch=10)
    np.testing.assert_allclose(layout_error(full, sigma=1.0, tau=0.5, batch_effects=[0.3, -0.2]).bias, 0.0)
    with pytest.raises(DesignError, match="one per batch"):
        layout_error(full, sigma=1.0, tau=0.5, batch_effects=[0.3])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: within_batch_error(0, 10, sigma=1.0), "cells_per_perturbation must be > 0"),
        (lambda: cross_batch_error(10, -1, sigma=1.0, tau=0.1), "controls_per_batch must be > 0"),
        (lambda: within_batch_error(10, 10, sigma=-1.0), "sigma"),
        (lambda: cross_batch_error(10, 10, sigma=1.0, tau=np.nan), "tau"),
        (lambda: layout_error(balanced_layout(1, 1, cells_per_perturbation=1, controls_per_batch=1),
                              sigma=1.0, tau=0.0, comparison="across"), "comparison must be one of"),
    ],
)
def test_analytic_bad_input(call, match):
    with pytest.raises(DesignError, match=match):
        call()


# ---------------------------------------------------------------- Layout validation


def test_layout_is_frozen_and_read_only():
    layout = Layout(cells=[[3, 4]], controls=[5, 6], batch_names=["lane1", "lane2"])
    assert layout.n_perturbations == 1 and layout.n_batches == 2 and layout.total_cells == 18
    assert layout.perturbation_names == ("p0",) and layout.batch_names == ("lane1", "lane2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.controls = np.array([1, 1])
    with pytest.raises(ValueError):
        layout.cells[0, 0] = 9


def test_batch_without_controls_warns_with_consequence():
    with pytest.warns(UserWarning) as rec:
        Layout(cells=[[10, 10], [10, 0]], controls=[20, 0], batch_names=["A", "B"])
    msg = str(rec[0].message)
    assert "['B']" in msg and "2*tau^2" in msg and "does not shrink" in msg
    assert "no within-batch estimate" not in msg  # every perturbation still shares a batch with controls
    with pytest.warns(UserWarning, match=r"Perturbation\(s\) \['p1'\] have no batch with controls"):
        Layout(cells=[[10, 10], [0, 10]], controls=[20, 0])


@pytest.mark.parametrize(
    "cells, controls, match",
    [
        ([[10, -1]], [5, 5], "negative cell count"),
        ([[10, 2.5]], [5, 5], "non-integer"),
        ([[10, 2]], [5, -5], "negative"),
        ([[10, np.nan]], [5, 5], "NaN"),
        ([[10, 2]], [5, 5, 5], "one control count per batch"),
        ([10, 2], [5, 5], r"shape \(perturbations, batches\)"),
        ([[10, 2], [0, 0]], [5, 5], "no cells in any batch"),
        ("abc", [5], "array of cell counts"),
    ],
)
def test_bad_layouts_raise_design_error(cells, controls, match):
    with pytest.raises(DesignError, match=match):
        Layout(cells=cells, controls=controls)


def test_balanced_layout_round_robin():
    layout = balanced_layout(6, 4, cells_per_perturbation=7, controls_per_batch=30, perturbations_per_batch=3)
    assert np.all((layout.cells > 0).sum(axis=0) == 3)
    assert np.all((layout.cells > 0).sum(axis=1) == 2)  # each perturbation in 4 * 3 / 6 = 2 batches
    with pytest.raises(DesignError, match="cannot hold"):
        balanced_layout(10, 2, cells_per_perturbation=7, controls_per_batch=30, perturbations_per_batch=3)


# ---------------------------------------------------------------- control allocation


def test_dunnett_allocation_exact_case():
    rec = recommend_control_allocation(16, n_batches=4, cells_per_batch=400, sigma=1.0, tau=0.5)
    assert (rec.cells_per_perturbation, rec.controls_per_batch) == (20, 80)  # n_0 = sqrt(16) n_p
    assert rec.total_variance == pytest.approx(16 * (1 / 20 + 1 / 80) / 4)
    assert rec.equal_cells == 400 // 17
    assert rec.variance_reduction > 0.25
    assert "80 control cells" in rec.explanation and "2*tau^2 = 0.5" in rec.explanation
    assert np.all(rec.layout.controls == 80)


@pytest.mark.parametrize("k", [2, 5, 9, 30])
def test_allocation_is_integer_optimum_near_sqrt_k(k):
    budget = 5000
    rec = recommend_control_allocation(k, n_batches=2, cells_total=2 * budget, sigma=1.0, tau=0.3)
    n_p = np.arange(1, (budget - 1) // k + 1)
    total = 1 / n_p + 1 / (budget - k * n_p)
    assert rec.cells_per_perturbation == n_p[np.argmin(total)]
    assert rec.controls_per_batch / rec.cells_per_perturbation == pytest.approx(np.sqrt(k), rel=0.05)
    assert rec.controls_per_batch >= 1


def test_allocation_negative_control_single_perturbation_equal_is_optimal():
    rec = recommend_control_allocation(1, n_batches=3, cells_per_batch=300, sigma=1.0, tau=0.3)
    assert rec.cells_per_perturbation == rec.controls_per_batch == 150
    assert rec.variance_reduction == pytest.approx(0.0)


def test_allocation_with_subset_of_perturbations_per_batch():
    rec = recommend_control_allocation(
        30, n_batches=6, cells_total=12_000, sigma=1.0, tau=0.5, perturbations_per_batch=10
    )
    assert rec.cells_per_batch == 2000
    assert rec.controls_per_batch / rec.cells_per_perturbation == pytest.approx(np.sqrt(10), rel=0.02)
    assert np.all((rec.layout.cells > 0).sum(axis=1) == 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cells_per_batch=100, cells_total=400), "exactly one budget"),
        (dict(), "exactly one budget"),
        (dict(cells_per_batch=10), "cannot hold 10 perturbations"),
        (dict(cells_per_batch=400, min_controls_per_batch=0), "every batch needs controls"),
        (dict(cells_per_batch=400, perturbations_per_batch=11), "cannot exceed"),
        (dict(cells_per_batch=400.5), "whole number"),
    ],
)
def test_allocation_bad_input(kwargs, match):
    with pytest.raises(DesignError, match=match):
        recommend_control_allocation(10, n_batches=2, sigma=1.0, tau=0.3, **kwargs)
