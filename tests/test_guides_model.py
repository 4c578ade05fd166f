"""Guide-assignment model: exact marginalisation, escapers, a smoke fit, bad inputs."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

import semimech as sm
from semimech.data.guides import GuideDesign
from semimech.errors import DesignError
from semimech.measurement.counts import count_dist, padded_rows
from semimech.models import guide_assignment as ga
from semimech.models._guide_core import nb_logpmf

DATA = {"n_targets": 1, "n_batches": 0, "guide_target_index": np.array([0, 0, -1], np.int32),
        "guide_target_onehot": np.array([[1.0], [1.0], [0.0]])}
C = np.array([[0, 0, 0], [40, 0, 1], [0, 3, 0], [2, 0, 55], [30, 25, 0], [1, 1, 1]], float)
Y = np.array([[3, 0], [0, 9], [5, 1], [2, 2], [0, 0], [7, 4]], float)


@functools.partial(jax.jit, static_argnames="likelihood")
def _terms(p, cells, y, *, likelihood):
    return ga.cell_terms(p, DATA, cells, y, likelihood=likelihood)


def _params(eff, gate=None):
    return {"efficacy": jnp.array([eff[0], eff[1], 0.0]), "bg_mean": jnp.array([0.4, 0.3, 0.5]),
            "fg_mean": jnp.array([40.0, 25.0, 60.0]), "bg_conc": 0.6, "fg_conc": 1.5, "presence": 0.2,
            "baseline": jnp.log(jnp.array([4.0, 1.5])), "effect": jnp.array([[-1.2, 1.4]]),
            "concentration": jnp.array([3.0, 6.0]), "gate": gate, "offsets": None}


def _cells(sf):
    n = C.shape[0]
    return {"guide_counts": padded_rows(sp.csr_matrix(C), np.arange(n), capacity=30),
            "candidates": np.zeros((n, 1), np.int32), "size_factors": jnp.asarray(sf),
            "batch_index": np.zeros(n, np.int32)}


def _scipy_loglik(likelihood, y, mu, p):
    """Reference expression log-likelihood from scipy (float64 throughout)."""
    if likelihood == "poisson":
        return stats.poisson.logpmf(y, mu).sum()
    phi = np.asarray(p["concentration"])
    nb = stats.nbinom.logpmf(y, phi, phi / (phi + mu))
    if likelihood == "negbin":
        return nb.sum()
    pi = np.asarray(p["gate"])
    return np.log(np.where(y == 0, pi, 0.0) + (1 - pi) * np.exp(nb)).sum()


def _brute_force(p, sf, likelihood):
    """log p(c, y) by enumerating every presence pattern d and perturbation state z."""
    out = []
    for i in range(C.shape[0]):
        terms = []
        for d in itertools.product([0, 1], repeat=3):
            d = np.array(d)
            lp = np.sum(np.where(d, np.log(p["presence"]), np.log1p(-p["presence"])))
            lp += float(jnp.sum(jnp.where(d, nb_logpmf(C[i], p["fg_mean"], p["fg_conc"]),
                                          nb_logpmf(C[i], p["bg_mean"], p["bg_conc"]))))
            q = 1 - np.prod([1 - float(p["efficacy"][k]) for k in (0, 1) if d[k]])
            for z, pz in ((0, 1 - q), (1, q)):
                if pz <= 0:
                    continue
                mu = sf[i] * np.exp(np.asarray(p["baseline"] + z * p["effect"][0]))
                terms.append(lp + np.log(pz) + _scipy_loglik(likelihood, Y[i], mu, p))
        out.append(np.logaddexp.reduce(terms))
    return np.array(out)


@pytest.mark.parametrize("likelihood", ["negbin", "zinb", "poisson"])
def test_marginal_equals_brute_force_enumeration(likelihood):
    sf = np.array([1.0, 0.7, 1.3, 1.0, 0.9, 1.1])
    with jax.enable_x64(True):
        p = _params((0.8, 0.5), gate=jnp.array([0.1, 0.3]) if likelihood == "zinb" else None)
        y = padded_rows(sp.csr_matrix(Y), np.arange(len(Y)), capacity=20)
        t = _terms(p, _cells(sf), y, likelihood=likelihood)
        got = np.asarray(t["guide_ll"] + t["y_ll"])
        np.testing.assert_allclose(got, _brute_force(p, sf, likelihood), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.exp(np.asarray(t["log_post"])).sum(1), 1.0, rtol=1e-9)


def test_escapers_look_like_controls():
    """Efficacy 0: every cell is an escaper and its expression is scored as a control's."""
    sf = np.ones(len(Y))
    p = _params((0.0, 0.0))
    y = padded_rows(sp.csr_matrix(Y), np.arange(len(Y)), capacity=20)
    t = _terms(p, _cells(sf), y, likelihood="negbin")
    ctrl = count_dist("negbin", jnp.exp(p["baseline"])[None].repeat(len(Y), 0), size_factors=jnp.asarray(sf),
                      concentration=p["concentration"]).log_prob(jnp.asarray(Y)).sum(1)
    np.testing.assert_allclose(np.asarray(t["y_ll"]), np.asarray(ctrl), rtol=1e-5)
    # with efficacy > 0 the cell with a dominant targeting guide gets a real perturbation probability
    t2 = _terms(_params((0.9, 0.9)), _cells(sf), y, likelihood="negbin")
    assert 1 - np.exp(float(t2["log_prior"][1, 0])) > 0.8
    assert 1 - np.exp(float(t2["log_prior"][0, 0])) < 0.1  # no guide counts: almost surely unperturbed


@pytest.fixture(scope="module")
def small_fit():
    adata, truth = ga.simulate_guide_screen(2, n_cells=400, n_targets=2, n_genes=6, genes_per_target=2)
    d = sm.Design.from_anndata(adata, perturbation_key="top_target", control="non-targeting", batch_key="batch",
                               size_factor_key="size_factor")
    g = GuideDesign.from_anndata(adata, guide_table="grna_targets", batch_key="batch")
    fit = ga.fit_guides(d, g, rng_key=0, num_steps=40, batch_size=128, num_samples=16)
    return d, g, fit


def test_smoke_fit_gives_tables_and_datatree(small_fit):
    d, g, fit = small_fit
    assert np.all(np.isfinite(fit.losses))
    post = fit.idata["posterior"]
    assert post["efficacy"].dims == ("chain", "draw", "guides")
    assert post["effect"].dims == ("chain", "draw", "targets", "genes")
    assert post["batch_effect"].dims == ("chain", "draw", "batches", "genes")
    assert list(post["escaper_fraction"].coords["targets"].values) == ["T0", "T1"]
    pp = ga.perturbation_probabilities(fit, g, num_draws=8, chunk_size=150)
    assert len(pp) == d.n_obs and list(pp["cell"]) == list(d.obs_names)
    for col in ("p_perturbed", "p_perturbed_lo", "p_perturbed_hi", "p_perturbed_from_guides", "p_escaper"):
        assert pp[col].between(0, 1).all(), col
    assert (pp["p_perturbed_lo"] <= pp["p_perturbed_hi"] + 1e-12).all()
    ctrl = pp["top_guide_target"] == "non-targeting"
    assert pp.loc[ctrl, "p_perturbed_from_guides"].mean() < pp.loc[~ctrl, "p_perturbed_from_guides"].mean()
    assert len(ga.effect_table(fit)) == 2 * 6
    assert set(ga.efficacy_table(fit)["target"]) == {"T0", "T1"}
    esc = ga.escaper_table(fit, pp)
    assert {"mean", "lo", "hi", "observed_escaper_share", "n_cells"} <= set(esc.columns)
    assert len(ga.batch_effect_table(fit, genes=["gene0"])) == 2


def test_fit_bad_inputs(small_fit):
    d, g, fit = small_fit
    with pytest.raises(DesignError, match="different cells"):
        ga.fit_guides(d.subset(np.arange(10)), g, rng_key=0, num_steps=1)
    with pytest.raises(DesignError, match="not genes of the design"):
        ga.fit_guides(d, g, rng_key=0, num_steps=1, genes=["STAT1"])
    with pytest.raises(DesignError, match="sampler"):
        ga.fit_guides(d, g, rng_key=0, num_steps=1, sampler="stratified")
    with pytest.raises(DesignError, match="unknown count likelihood"):
        ga.fit_guides(d, g, rng_key=0, num_steps=1, likelihood="normal")
    # settings: each named before anything is traced (num_steps=2.5 and batch_size=0.5 were truncated by int(), a
    # negative rate or prior scale fitted, num_samples=0 failed in a reshape)
    from semimech.errors import InferenceError
    for kwargs, error, match in (
            ({"num_steps": 2.5}, InferenceError, r"num_steps must be a positive integer \(Adam steps\), got 2.5"),
            ({"num_steps": 0}, InferenceError, r"num_steps must be a positive integer"),
            ({"batch_size": 0.5}, InferenceError, r"batch_size must be a positive integer \(cells per minibatch\)"),
            ({"learning_rate": -0.01}, InferenceError, r"learning_rate must be a finite positive number, got -0.01"),
            ({"num_samples": 0}, InferenceError, r"num_samples must be a positive integer \(posterior draws\)"),
            ({"num_candidates": 0}, InferenceError, r"num_candidates must be a positive integer"),
            ({"effect_prior_scale": -0.5}, DesignError, r"effect_prior_scale must be a finite number > 0, got -0.5"),
            ({"efficacy_prior": (1.0, 0.0)}, DesignError, r"efficacy_prior must be \(location, scale\).*got \(1.0, 0.0\)"),
            ({"efficacy_prior": 1.0}, DesignError, r"efficacy_prior must be \(location, scale\)")):
        with pytest.raises(error, match=match):
            ga.fit_guides(d, g, rng_key=0, **{"num_steps": 1, **kwargs})
    with pytest.raises(DesignError, match="targets"):
        ga.effect_table(fit, targets=["STAT1"])


def test_placebo_gives_non_targeting_guides_a_target(small_fit):
    from semimech.models._guide_fit import PLACEBO, prepare

    d, g, _ = small_fit
    plain = prepare(d, g)
    prep = prepare(d, g, placebo=True)
    assert prep.targets == ("T0", "T1", PLACEBO) and plain.targets == ("T0", "T1")
    nt = np.asarray(g.is_control_guide)
    assert (prep.data["guide_target_index"][nt] == 2).all() and (plain.data["guide_target_index"][nt] == -1).all()
    ctrl_cells = g.is_control_cell()
    assert (prep.candidates[ctrl_cells, 0] == 2).all()  # a control cell's first candidate is the placebo
    assert (plain.candidates[ctrl_cells, 0] != 2).all()
