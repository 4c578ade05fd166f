"""ArviZ-native fits: every standard group in ``fit.idata``, ArviZ's own tools and plots on it.

Known answers: the ``log_likelihood`` group is the hand-computed Gaussian density of each row
(a shuffled assignment of rows must not match); ``arviz_stats.loo(fit.idata)`` agrees with the
package's own pointwise log-likelihood (``elpd_loo + p_loo`` is its log pointwise predictive
density); a single-cell fit's log-likelihood summed per pseudobulk group equals, draw for draw,
the log-likelihood of the pseudobulk rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.special import logsumexp
from scipy.stats import norm

import semimech as sm
from semimech.models import additive

DEFAULT_GROUPS = {"posterior", "sample_stats", "observed_data", "constant_data", "log_likelihood"}
NUTS_STATS = ("diverging", "energy", "lp", "step_size", "acceptance_rate", "n_steps", "tree_depth")


@pytest.fixture(scope="module")
def design():
    """Cells: control, A, B, A+B over 4 genes in two batches, 12 cells each (Gaussian)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "A+B"], 12)
    batch = np.tile(["b1", "b2"], 24)
    e_a, e_b = np.array([1.0, 0.5, 0.0, 0.0]), np.array([0.0, 0.0, -0.5, -1.0])
    has_a = np.array(["A" in x for x in labels], float)[:, None]
    has_b = np.array(["B" in x for x in labels], float)[:, None]
    y = 2.0 + has_a * e_a + has_b * e_b + 0.3 * (batch == "b2")[:, None] + 0.4 * rng.normal(size=(48, 4))
    frame = pd.DataFrame(y, columns=[f"g{i}" for i in range(4)], index=[f"c{i}" for i in range(48)])
    frame = frame.assign(p=labels, b=batch)
    return sm.Design.from_frame(frame, readouts=[f"g{i}" for i in range(4)], perturbation_key="p",
                                control="control", batch_key="b")


@pytest.fixture(scope="module")
def fits(design):
    return {
        "svi": sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=300, num_samples=120, progress_bar=False),
        "nuts": sm.fit_nuts(additive.SPEC, design, rng_key=0, num_warmup=60, num_samples=60, num_chains=2,
                            progress_bar=False),
    }


def _coords(ds, dim):
    return tuple(str(x) for x in ds.coords[dim].values)


@pytest.mark.parametrize("method", ["svi", "nuts"])
def test_every_default_group_has_the_design_dims_and_labels(fits, design, method):
    fit = fits[method]
    dt = fit.idata
    assert DEFAULT_GROUPS <= set(dt.children)
    post = dt["posterior"]
    assert post["effect"].dims == ("chain", "draw", "targets", "genes")
    assert post["batch_z"].dims == ("chain", "draw", "batches", "genes")
    assert post["pair_z"].dims == ("chain", "draw", "target_pairs", "genes")  # one interaction per pair of levels
    assert _coords(post, "targets") == design.targets and _coords(post, "genes") == design.genes
    assert _coords(post, "perturbations") == design.perturbations and _coords(post, "batches") == design.batches
    obs = dt["observed_data"]
    assert obs["y"].dims == ("cells", "genes") and _coords(obs, "cells") == design.obs_names
    np.testing.assert_array_equal(obs["y"].values, design.dense_y())
    const = dt["constant_data"]
    np.testing.assert_array_equal(const["perturbation_index"].values, design.perturbation_index)
    np.testing.assert_array_equal(const["batch_index"].values, design.batch_index)
    assert const["target_matrix"].dims == ("perturbations", "targets")
    ll = dt["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "cells") and ll.shape == (fit.num_chains, fit.num_draws, design.n_obs)
    stats = dt["sample_stats"]
    if method == "nuts":
        for name in NUTS_STATS:
            assert stats[name].dims == ("chain", "draw"), name
        n, depth = stats["n_steps"].values, stats["tree_depth"].values
        assert np.all((2 ** (depth - 1) <= n) & (n < 2**depth))
        assert np.all((stats["acceptance_rate"] >= 0) & (stats["acceptance_rate"] <= 1))
        assert np.all(stats["step_size"] > 0) and stats["diverging"].dtype == bool
    else:
        assert stats["loss"].dims == ("svi_step",)
        np.testing.assert_array_equal(stats["loss"].values, fit.losses)
        assert stats.attrs["skipped_steps"] == int(stats["skipped"].sum()) == int(np.sum(~np.isfinite(fit.losses)))


def test_log_likelihood_group_is_the_hand_computed_density(fits):
    fit = fits["svi"]
    d = fit.design
    ll = fit.idata["log_likelihood"]["y"].values[0]
    data = d.model_data()
    offset = (fit.flat("batch_sd")[:, None, None] * fit.flat("batch_z"))[:, d.batch_index]
    mean = fit.flat("mean")[:, d.perturbation_index] + offset
    sd = np.sqrt(fit.flat("noise_sd") ** 2 + data["noise_floor"] ** 2)[:, None, :]
    hand = norm.logpdf(d.dense_y()[None], mean, sd).sum(-1)
    np.testing.assert_allclose(ll, hand, rtol=2e-4, atol=2e-3)
    # negative control: the same densities with the rows shuffled do not match
    shuffled = hand[:, np.random.default_rng(1).permutation(d.n_obs)]
    assert not np.allclose(ll, shuffled, rtol=2e-4, atol=2e-3)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # k-hat of short fits
@pytest.mark.parametrize("method", ["svi", "nuts"])
def test_arviz_loo_on_idata_equals_the_package_log_likelihood(fits, method):
    import arviz_stats

    fit = fits[method]
    ll = sm.pointwise_log_likelihood(fit)
    np.testing.assert_array_equal(fit.idata["log_likelihood"]["y"].values, ll)
    res = arviz_stats.loo(fit.idata)
    flat = ll.reshape(-1, ll.shape[-1])
    lppd = float(np.sum(logsumexp(flat, axis=0) - np.log(flat.shape[0])))
    assert res.elpd + res.p == pytest.approx(lppd, rel=1e-9, abs=1e-8)
    assert res.n_data_points == fit.design.n_obs
    own, _ = sm.evaluate.loo(fit, subsample=None)
    assert res.elpd == pytest.approx(own.elpd, rel=1e-6)


def test_pseudobulk_unit_equals_the_log_likelihood_of_a_pseudobulk_fit(fits):
    fit = fits["svi"]
    pb = fit.design.pseudobulk()
    fit_pb = dataclasses.replace(fit, design=pb, idata=None)  # the same draws on the pseudobulk rows
    groups = sm.pointwise_log_likelihood(fit, unit="pseudobulk")
    np.testing.assert_allclose(groups, sm.pointwise_log_likelihood(fit_pb), rtol=1e-4, atol=1e-2)
    dt = sm.add_log_likelihood(dataclasses.replace(fit, idata=None), unit="pseudobulk")
    assert _coords(dt["log_likelihood"], "pseudobulk") == pb.obs_names
    entries = sm.pointwise_log_likelihood(fit, unit="entries")
    assert entries.shape == (1, fit.num_draws, fit.design.n_obs, fit.design.n_genes)
    np.testing.assert_allclose(entries.sum(-1), sm.pointwise_log_likelihood(fit), rtol=1e-5, atol=1e-4)  # float32 sums
    per_pert = sm.pointwise_log_likelihood(fit, unit="perturbations")
    assert per_pert.shape[-1] == len(fit.design.observed_perturbations())
    total = sm.pointwise_log_likelihood(fit).sum(-1)
    np.testing.assert_allclose(groups.sum(-1), total, rtol=1e-10)
    np.testing.assert_allclose(per_pert.sum(-1), total, rtol=1e-10)
    with pytest.raises(sm.errors.DesignError, match="unknown log-likelihood unit"):
        sm.pointwise_log_likelihood(fit, unit="genes")


def test_groups_on_request(fits, design):
    fit = dataclasses.replace(fits["svi"], idata=fits["svi"].idata.copy())
    dt = sm.add_posterior_predictive(fit, rng_key=1)
    pp = dt["posterior_predictive"]["y"]
    assert pp.dims == ("chain", "draw", "cells", "genes") and pp.shape == (1, 120, design.n_obs, design.n_genes)
    # replicates scatter around the observed rows at the fitted noise: mean squared z near 1
    z = (pp.values[0] - fit.flat("mean")[:, design.perturbation_index]) / fit.flat("noise_sd")[:, None, :]
    assert 0.5 < float(np.mean(z**2)) < 2.0
    prior = sm.sample_prior(additive.SPEC, design, rng_key=2, num_samples=30)
    assert {"prior", "prior_predictive", "observed_data", "constant_data"} <= set(prior.children)
    assert prior["prior"]["effect"].dims == ("chain", "draw", "targets", "genes")
    assert prior["prior_predictive"]["y"].shape == (1, 30, design.n_obs, design.n_genes)
    # the prior is wider than the posterior (the data were informative)
    assert float(prior["prior"]["baseline"].std()) > 3 * float(fit.idata["posterior"]["baseline"].std())
    sm.add_prior(fit, rng_key=2, num_samples=30)
    assert set(fit.idata["prior"].data_vars) == set(fit.idata["posterior"].data_vars)
    pred = sm.predict(fit, ["A+B", "control"], rng_key=3, num_cells=10)
    tree = pred.to_datatree()
    assert tree["predictions"]["observed_mean"].dims == ("chain", "draw", "perturbations", "genes")
    assert _coords(tree["predictions"], "perturbations") == ("A+B", "control")
    sm.add_predictions(fit, pred)
    np.testing.assert_array_equal(fit.idata["predictions"]["mean"].values[0], pred.draws["mean"])


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_arviz_stats_tools_work_on_idata(fits):
    import arviz_stats

    nuts, svi = fits["nuts"].idata, fits["svi"].idata
    table = arviz_stats.summary(nuts, var_names=["effect_scale", "baseline"])
    assert {"mean", "sd", "ess_bulk", "r_hat"} <= set(table.columns) and len(table) == 1 + 4
    assert arviz_stats.ess(nuts)["baseline"].dims == ("genes",)
    assert arviz_stats.rhat(nuts)["effect"].dims == ("targets", "genes")
    cmp = arviz_stats.compare({"nuts": nuts, "svi": svi})
    assert set(cmp.index) == {"nuts", "svi"}


@pytest.fixture(scope="module")
def nuts_for_plots(fits):
    fit = dataclasses.replace(fits["nuts"], idata=fits["nuts"].idata.copy())  # groups added to a copy
    sm.add_posterior_predictive(fit, rng_key=0)
    sm.add_log_likelihood(fit, unit="entries")  # LOO-PIT pairs each readout with its log-likelihood
    return fit


@pytest.mark.parametrize("plot", ["trace", "rank", "forest", "pair", "ppc", "loo_pit"])
def test_arviz_plots_render_with_agg(nuts_for_plots, plot, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import arviz_plots as azp
    import matplotlib.pyplot as plt

    dt = nuts_for_plots.idata
    few = {"var_names": ["effect_scale", "interaction_scale"]}
    pc = {
        "trace": lambda: azp.plot_trace(dt, **few, backend="matplotlib"),
        "rank": lambda: azp.plot_rank(dt, **few, backend="matplotlib"),
        "forest": lambda: azp.plot_forest(dt, var_names=["effect"], backend="matplotlib"),
        "pair": lambda: azp.plot_pair(dt, **few, backend="matplotlib"),
        "ppc": lambda: azp.plot_ppc_dist(dt, num_samples=20, backend="matplotlib"),
        "loo_pit": lambda: azp.plot_loo_pit(dt, backend="matplotlib"),
    }[plot]()
    fig = pc.viz["figure"].item()
    assert len(fig.axes) >= 1
    pc.savefig(tmp_path / f"{plot}.png")  # renders every artist
    assert (tmp_path / f"{plot}.png").stat().st_size > 1000
    plt.close("all")


def test_nothing_large_is_computed_by_default(monkeypatch):
    """A 10^5-cell fit record: no cells x genes arrays and no log-likelihood until asked."""
    import scipy.sparse as sp

    from semimech.infer import idata as idata_module

    n_cells, n_genes = 100_000, 200
    rng = np.random.default_rng(0)
    y = sp.random(n_cells, n_genes, density=0.01, format="csr", random_state=0, data_rvs=lambda k: rng.integers(1, 5, k))
    labels = np.where(np.arange(n_cells) % 2 == 0, "control", "A")
    d = sm.Design(y=y, obs_names=tuple(f"c{i}" for i in range(n_cells)), genes=tuple(f"g{i}" for i in range(n_genes)),
                  perturbations=("control", "A"), perturbation_index=(labels == "A").astype(np.int32),
                  targets=("A",), target_matrix=np.array([[0.0], [1.0]]), control="control", batches=None,
                  batch_index=None, size_factors=np.ones(n_cells), is_counts=True, n_cells=np.ones(n_cells),
                  target_sep="+")
    fit = sm.Fit(spec=additive.SPEC, design=d, samples={"baseline": np.zeros((1, 100, n_genes), np.float32)},
                 dims={"baseline": ("genes",)}, method="svi", options={"likelihood": "negbin"},
                 losses=np.zeros(10))

    def refuse(*args, **kwargs):
        raise AssertionError("a log-likelihood was computed without being asked for")

    monkeypatch.setattr(idata_module, "pointwise_log_likelihood", refuse)
    dt = fit.idata
    assert "log_likelihood" not in dt.children and "observed_data" not in dt.children
    assert "add_log_likelihood" in dt.attrs["not_included"]
    assert dt["constant_data"]["perturbation_index"].shape == (n_cells,)
    assert sum(v.size for g in dt.children.values() for v in g.to_dataset().data_vars.values()) < 10 * n_cells


def test_steady_state_fits_get_their_costly_log_likelihood_only_when_asked(monkeypatch):
    """Their log-likelihood re-solves every condition per draw: above a tiny size, only on request."""
    from semimech.infer import idata as idata_module
    from semimech.models import linear_steady_state

    rng = np.random.default_rng(0)
    n, g = 40, 50
    d = sm.Design(y=rng.normal(size=(n, g)), obs_names=tuple(f"c{i}" for i in range(n)),
                  genes=tuple(f"g{i}" for i in range(g)), perturbations=("control", "g0"),
                  perturbation_index=np.arange(n, dtype=np.int32) % 2, targets=("g0",),
                  target_matrix=np.array([[0.0], [1.0]]), control="control", batches=None, batch_index=None,
                  size_factors=np.ones(n), is_counts=False, n_cells=np.ones(n), target_sep="+")
    fit = sm.Fit(spec=linear_steady_state.SPEC, design=d, samples={"baseline": np.zeros((1, 100, g), np.float32)},
                 dims={"baseline": ("genes",)}, method="svi", options={"likelihood": "normal"}, losses=np.zeros(3))

    def refuse(*args, **kwargs):
        raise AssertionError("a log-likelihood was computed without being asked for")

    monkeypatch.setattr(idata_module, "pointwise_log_likelihood", refuse)
    assert "log_likelihood" not in fit.idata.children and "add_log_likelihood" in fit.idata.attrs["not_included"]
    assert "observed_data" in fit.idata.children  # small data are still there
    # negative control: the same record under the additive model is small enough to get it
    small = dataclasses.replace(fit, spec=additive.SPEC, idata=None)
    assert "computing it failed (AssertionError" in small.idata.attrs["not_included"]  # it was attempted


@pytest.mark.parametrize("method", ["svi", "nuts"])
def test_every_group_survives_save_and_load_exactly(fits, method, tmp_path):
    fit = dataclasses.replace(fits[method], idata=fits[method].idata.copy())
    sm.add_posterior_predictive(fit, rng_key=0)
    sm.add_prior(fit, rng_key=1, num_samples=20)
    sm.add_predictions(fit, sm.predict(fit, ["A+B"], rng_key=2))
    groups = DEFAULT_GROUPS | {"posterior_predictive", "prior", "prior_predictive", "predictions"}
    assert set(fit.idata.children) == groups
    dt = fit.idata
    assert dt["posterior_predictive"]["y"].shape == (fit.num_chains, fit.num_draws, 48, 4)
    assert _coords(dt["posterior_predictive"], "cells") == fit.design.obs_names
    assert dt["prior"]["batch_z"].dims == ("chain", "draw", "batches", "genes")
    assert dt["prior_predictive"]["y"].dims == ("chain", "draw", "cells", "genes")
    assert _coords(dt["predictions"], "perturbations") == ("A+B",) and _coords(dt["predictions"], "genes") == fit.design.genes
    fit.save(tmp_path / "fit")
    back = sm.load(tmp_path / "fit")
    assert set(back.idata.children) == groups
    for name in groups:
        xr.testing.assert_identical(back.idata[name].to_dataset(), fit.idata[name].to_dataset())
    # the standard reader opens the same file; open_dataset shows the root, which says how to open it
    with xr.open_datatree(tmp_path / "fit" / "posterior.nc") as raw:
        xr.testing.assert_identical(raw["posterior"].to_dataset().load(), fit.idata["posterior"].to_dataset())
    with xr.open_dataset(tmp_path / "fit" / "posterior.nc") as root:
        assert "open_datatree" in root.attrs["note"]
    if method == "nuts":
        assert dict(back.sample_stats).keys() == dict(fit.sample_stats).keys()
