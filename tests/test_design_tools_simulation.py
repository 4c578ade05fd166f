"""Design tools: the analytic error analysis verified by simulating screens.

Tolerance: a simulated variance (or bias) must lie within 4 Monte Carlo standard errors of the
analytic value; the standard error is the empirical ``sd / sqrt(R)`` of the squared deviations
(about ``variance * sqrt(2 / R)`` for Gaussian estimates, i.e. 3% at R = 2000). With fixed keys
the tests are deterministic; at 4 SE a correct formula would fail about once in 16,000 draws.
"""

import numpy as np
import pytest

from semimech.design import Layout, balanced_layout, recommend_control_allocation, simulate_layout
from semimech.errors import DesignError

Z = 4.0


def layout_with_bare_batch(cells, controls):
    with pytest.warns(UserWarning, match="no controls"):
        return Layout(cells=cells, controls=controls)


def assert_matches_analytic(res, *, z=Z):
    finite = np.isfinite(res.analytic.variance)
    gap = np.abs(res.variance - res.analytic.variance)[finite]
    assert np.all(gap <= z * res.variance_se[finite]), (res.comparison, res.variance, res.analytic.variance)
    assert np.all(np.abs(res.bias - res.analytic.bias)[finite] <= z * res.bias_se[finite])
    assert np.all(np.isnan(res.variance[~finite]))


LAYOUTS = {
    "balanced": lambda: balanced_layout(4, 3, cells_per_perturbation=25, controls_per_batch=60),
    "unbalanced": lambda: layout_with_bare_batch([[30, 0, 20], [0, 40, 0], [10, 10, 10]], [50, 20, 0]),
    "one_pair": lambda: layout_with_bare_batch([[40, 0]], [0, 90]),
    "round_robin": lambda: balanced_layout(6, 4, cells_per_perturbation=15, controls_per_batch=45,
                                           perturbations_per_batch=3),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("weights", ["inverse_variance", "equal"])
def test_simulated_variance_matches_analytic(name, weights):
    layout = LAYOUTS[name]()
    effects = np.linspace(-1.0, 1.0, layout.n_perturbations)
    out = simulate_layout(layout, sigma=1.2, tau=0.5, effects=effects, rng_key=11, num_replicates=2000,
                          comparisons=("within", "cross", "pooled"), weights=weights)
    for res in out.values():
        assert_matches_analytic(res)
        assert res.num_replicates == 2000
    checked = sum(int(np.isfinite(r.analytic.variance).sum()) for r in out.values())
    assert checked >= layout.n_perturbations + 1  # at least two comparisons were actually checked


def test_negative_control_formula_without_batch_term_is_rejected():
    """The same test, applied to the wrong (batch-free) formula for a cross-batch contrast, fails."""
    res = simulate_layout(LAYOUTS["one_pair"](), sigma=1.0, tau=0.5, effects=0.3, rng_key=3,
                          num_replicates=2000, comparisons=("cross",))["cross"]
    naive = 1.0 * (1 / 40 + 1 / 90)
    assert abs(res.variance[0] - naive) > 10 * res.variance_se[0]
    assert_matches_analytic(res)


def test_cross_batch_variance_does_not_shrink_with_cells_within_does():
    sim = {}
    for n_p in (10, 1000):
        within = Layout(cells=[[n_p]], controls=[4 * n_p])
        cross = layout_with_bare_batch([[n_p, 0]], [0, 4 * n_p])
        sim[n_p] = (
            simulate_layout(within, sigma=1.0, tau=0.5, effects=1.0, rng_key=n_p, num_replicates=2000,
                            comparisons=("within",))["within"],
            simulate_layout(cross, sigma=1.0, tau=0.5, effects=1.0, rng_key=n_p + 1, num_replicates=2000,
                            comparisons=("cross",))["cross"],
        )
    (w10, c10), (w1000, c1000) = sim[10], sim[1000]
    assert w1000.variance[0] < w10.variance[0] / 50  # within: ~1/n_p
    assert c1000.variance[0] > 0.6 * c10.variance[0]  # cross: analytic ratio 0.501 / 0.625 = 0.8
    assert abs(c1000.variance[0] - 0.5) < Z * c1000.variance_se[0] + 0.5 * (1 / 1000 + 1 / 4000)


def test_negative_control_tau_zero_cross_agrees_with_within():
    within = simulate_layout(Layout(cells=[[30]], controls=[120]), sigma=1.0, tau=0.0, effects=1.0,
                             rng_key=5, num_replicates=4000, comparisons=("within",))["within"]
    cross = simulate_layout(layout_with_bare_batch([[30, 0]], [0, 120]), sigma=1.0, tau=0.0, effects=1.0,
                            rng_key=6, num_replicates=4000, comparisons=("cross",))["cross"]
    se = np.hypot(within.variance_se[0], cross.variance_se[0])
    assert abs(within.variance[0] - cross.variance[0]) < Z * se
    assert cross.analytic.variance[0] == pytest.approx(within.analytic.variance[0])


def test_dunnett_allocation_beats_equal_allocation_in_simulation():
    k, batches, budget = 16, 2, 400
    rec = recommend_control_allocation(k, n_batches=batches, cells_per_batch=budget, sigma=1.0, tau=0.5)
    equal = balanced_layout(k, batches, cells_per_perturbation=rec.equal_cells, controls_per_batch=rec.equal_cells)
    too_many = balanced_layout(k, batches, cells_per_perturbation=12, controls_per_batch=budget - 12 * k)
    sims = {
        name: simulate_layout(lay, sigma=1.0, tau=0.5, effects=0.0, rng_key=21, num_replicates=4000,
                              comparisons=("within",), cell_level=False)["within"]
        for name, lay in [("dunnett", rec.layout), ("equal", equal), ("too_many", too_many)]
    }
    d = sims["dunnett"]
    assert abs(d.total_variance - rec.total_variance) < Z * d.total_variance_se
    for other in ("equal", "too_many"):
        o = sims[other]
        assert abs(o.total_variance - o.analytic.total_variance) < Z * o.total_variance_se
        assert d.total_variance + Z * np.hypot(d.total_variance_se, o.total_variance_se) < o.total_variance


def test_fixed_batch_effects_show_up_as_bias():
    res = simulate_layout(LAYOUTS["one_pair"](), sigma=1.0, tau=0.5, effects=0.0, rng_key=8,
                          num_replicates=2000, comparisons=("cross",), batch_effects=[0.4, -0.1])["cross"]
    assert res.analytic.bias[0] == pytest.approx(0.5)
    assert abs(res.bias[0] - 0.5) < Z * res.bias_se[0]
    assert res.bias[0] > 10 * res.bias_se[0]  # a real, detectable bias (negative control: not ~0)
    assert abs(res.mse[0] - res.analytic.mse[0]) < Z * res.mse_se[0]


def test_time_mismatched_controls_give_drift_bias():
    layout = LAYOUTS["balanced"]()
    res = simulate_layout(layout, sigma=1.0, tau=0.5, effects=0.2, rng_key=12, num_replicates=2000,
                          comparisons=("within",), drift=0.05, time_mismatch=4.0)["within"]
    np.testing.assert_allclose(res.analytic.bias, 0.2)
    assert np.all(np.abs(res.bias - 0.2) < Z * res.bias_se)
    assert np.all(res.bias > 10 * res.bias_se)  # detectable; time-matched controls (below) show none
    matched = simulate_layout(layout, sigma=1.0, tau=0.5, effects=0.2, rng_key=12, num_replicates=2000,
                              comparisons=("within",), drift=0.05)["within"]
    assert np.all(np.abs(matched.bias) < Z * matched.bias_se)


def test_group_mean_draws_agree_with_cell_draws():
    layout = LAYOUTS["unbalanced"]()
    fast = simulate_layout(layout, sigma=1.0, tau=0.3, effects=0.5, rng_key=2, num_replicates=3000,
                           comparisons=("within", "pooled"), cell_level=False)
    for res in fast.values():
        assert_matches_analytic(res)


def test_estimator_hook_receives_cells_and_reproduces_pooled_contrast():
    layout = LAYOUTS["unbalanced"]()

    def pooled_means(*, y, perturbation, batch):
        assert y.shape == perturbation.shape == batch.shape == (layout.total_cells,)
        ctrl = y[perturbation == -1].mean()
        return np.array([y[perturbation == p].mean() - ctrl for p in range(layout.n_perturbations)])

    out = simulate_layout(layout, sigma=1.0, tau=0.5, effects=[0.1, 0.2, 0.3], rng_key=4, num_replicates=200,
                          comparisons=("pooled",), estimator=pooled_means)
    np.testing.assert_allclose(out["estimator"].estimates, out["pooled"].estimates, atol=1e-10)
    assert out["estimator"].analytic is None

    with pytest.raises(DesignError, match="one effect per perturbation"):
        simulate_layout(layout, sigma=1.0, tau=0.5, effects=0.0, rng_key=4, num_replicates=2,
                        estimator=lambda **kw: np.zeros(2))


def test_same_key_same_screens():
    layout = LAYOUTS["balanced"]()
    a = simulate_layout(layout, sigma=1.0, tau=0.5, effects=0.0, rng_key=9, num_replicates=50)
    b = simulate_layout(layout, sigma=1.0, tau=0.5, effects=0.0, rng_key=9, num_replicates=50)
    c = simulate_layout(layout, sigma=1.0, tau=0.5, effects=0.0, rng_key=10, num_replicates=50)
    np.testing.assert_array_equal(a["within"].estimates, b["within"].estimates)
    assert not np.allclose(a["within"].estimates, c["within"].estimates)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(effects=[0.0, 1.0]), DesignError, "one per perturbation"),
        (dict(num_replicates=1), DesignError, "num_replicates"),
        (dict(comparisons=("across",)), DesignError, "comparisons"),
        (dict(sigma=-1.0), DesignError, "sigma and tau"),
        (dict(batch_effects=[0.1]), DesignError, "batch_effects"),
        (dict(cell_level=False, estimator=lambda **kw: 0), DesignError, "cell_level=True"),
        (dict(rng_key=None), TypeError, "rng_key is required"),
        (dict(drift=np.nan, time_mismatch=1.0), DesignError, "finite"),
    ],
)
def test_simulation_bad_input(kwargs, exc, match):
    args = dict(sigma=1.0, tau=0.5, effects=0.0, rng_key=0, num_replicates=10) | kwargs
    with pytest.raises(exc, match=match):
        simulate_layout(LAYOUTS["balanced"](), **args)


@pytest.mark.slow
def test_analytic_variance_calibrated_over_a_grid_of_layouts():
    """Across many layouts the standardised gaps (sim - analytic) / SE behave like N(0, 1)."""
    rng = np.random.default_rng(0)
    zs, zs_naive = [], []
    for i in range(40):
        k, b = rng.integers(1, 6), rng.integers(2, 5)
        cells = rng.integers(0, 60, size=(k, b)) * (rng.random((k, b)) < 0.7)
        cells[:, 0] += 5
        layout = Layout(cells=cells, controls=rng.integers(5, 120, size=b))
        out = simulate_layout(layout, sigma=float(rng.uniform(0.5, 2)), tau=float(rng.uniform(0, 1)),
                              effects=rng.normal(size=k), rng_key=i, num_replicates=20_000,
                              comparisons=("within", "cross", "pooled"))
        for res in out.values():
            ok = np.isfinite(res.analytic.variance)
            zs.append(((res.variance - res.analytic.variance) / res.variance_se)[ok])
            naive = res.analytic.noise_variance  # negative control: drop the batch term
            zs_naive.append(((res.variance - naive) / res.variance_se)[ok & (res.analytic.batch_variance > 0)])
    zs, zs_naive = np.concatenate(zs), np.concatenate(zs_naive)
    assert zs.size > 100 and zs_naive.size > 30
    assert np.all(np.abs(zs) < 5)
    assert 0.7 < np.mean(zs**2) < 1.3
    assert np.mean(zs_naive**2) > 10  # the batch-free formula is rejected
