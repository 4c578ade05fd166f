"""Count likelihoods: sparse row-wise log-likelihoods equal the dense NumPyro ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.sparse as sp

from semimech.errors import DesignError
from semimech.measurement.counts import (
    count_dist,
    nb_log_likelihood_sparse,
    padded_capacity,
    padded_rows,
    rowwise_log_likelihood,
)


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(0)
    mu = rng.gamma(0.7, 1.5, (40, 9))
    phi = rng.gamma(2.0, 1.0, 9) + 0.2
    pi = rng.uniform(0.05, 0.6, 9)
    y = rng.negative_binomial(phi, phi / (phi + mu)) * (rng.random((40, 9)) > pi)
    return y.astype(float), mu, phi, pi


def test_nb_sparse_equals_numpyro_sum(counts):
    y, mu, phi, _ = counts
    with jax.enable_x64(True):
        ours = nb_log_likelihood_sparse(sp.csr_matrix(y), jnp.asarray(mu), jnp.asarray(phi))
        ref = dist.NegativeBinomial2(jnp.asarray(mu), jnp.asarray(phi)).log_prob(jnp.asarray(y)).sum()
        assert abs(float(ours) - float(ref)) < 1e-8 * abs(float(ref))
        # negative control: treating zeros as absent (dropping their closed form) is wrong
        nz_only = dist.NegativeBinomial2(jnp.asarray(mu), jnp.asarray(phi)).log_prob(jnp.asarray(y))[y > 0].sum()
        assert abs(float(nz_only) - float(ref)) > 1.0


@pytest.mark.parametrize("likelihood", ["poisson", "negbin", "zinb"])
def test_rowwise_equals_dense(counts, likelihood):
    y, mu, phi, pi = counts
    Y = sp.csr_matrix(y)
    rows = np.array([3, 0, 17, 17, 39])  # order and repeats are kept
    ref_dist = count_dist(likelihood, jnp.asarray(mu[rows]), size_factors=jnp.ones(len(rows)),
                          concentration=jnp.asarray(phi), gate=jnp.asarray(pi))
    ref = np.asarray(ref_dist.log_prob(jnp.asarray(y[rows])).sum(-1))
    for cap in (None, padded_capacity(Y, len(rows)) + 7):  # padding must not change anything
        p = padded_rows(Y, rows, capacity=cap)
        got = rowwise_log_likelihood(likelihood, p, jnp.log(jnp.asarray(mu[rows])), concentration=jnp.asarray(phi),
                                     gate=jnp.asarray(pi))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=1e-4)


def test_size_factors_scale_the_mean():
    d = count_dist("negbin", jnp.array([[2.0, 4.0]]), size_factors=jnp.array([3.0]), concentration=jnp.array([5.0, 5.0]))
    np.testing.assert_allclose(np.asarray(d.mean), [[6.0, 12.0]])
    p = count_dist("poisson", jnp.array([[2.0]]), size_factors=jnp.array([0.5]))
    np.testing.assert_allclose(np.asarray(p.mean), [[1.0]])


def test_dropout_meanings():
    mu, phi, pi = 2.0, 1.5, 0.3
    p0 = {k: float(jnp.exp(count_dist(k, jnp.array([[mu]]), size_factors=jnp.ones(1), concentration=jnp.array([phi]),
                                      gate=jnp.array([pi])).log_prob(jnp.zeros((1, 1))))[0, 0])
          for k in ("poisson", "negbin", "zinb")}
    assert p0["poisson"] == pytest.approx(np.exp(-mu), rel=1e-5)
    assert p0["negbin"] == pytest.approx((phi / (phi + mu)) ** phi, rel=1e-5)  # zeros from the count noise
    assert p0["zinb"] == pytest.approx(pi + (1 - pi) * p0["negbin"], rel=1e-5)  # plus technical zeros
    assert p0["poisson"] < p0["negbin"] < p0["zinb"]


def test_bad_inputs():
    with pytest.raises(DesignError, match="unknown count likelihood"):
        count_dist("gaussian", jnp.ones((1, 1)), size_factors=jnp.ones(1))
    with pytest.raises(DesignError, match="concentration"):
        count_dist("negbin", jnp.ones((1, 1)), size_factors=jnp.ones(1))
    with pytest.raises(DesignError, match="gate"):
        count_dist("zinb", jnp.ones((1, 1)), size_factors=jnp.ones(1), concentration=jnp.ones(1))
    Y = sp.csr_matrix(np.ones((4, 3)))
    with pytest.raises(DesignError, match="capacity"):
        padded_rows(Y, np.arange(4), capacity=5)
    assert padded_capacity(Y, 2) == 6


def test_count_checks_in_chunks_see_every_entry(monkeypatch):
    """The count checks and size factors run in chunks (no matrix-sized temporaries) and still see every entry."""
    from semimech.data import _validate as v

    monkeypatch.setattr(v, "_CHUNK", 7)  # many chunks, the offending entry in the last one
    rng = np.random.default_rng(0)
    dense = rng.poisson(2.0, size=(40, 5)).astype(np.float32)
    dense[:, 0] += 1.0  # no empty rows
    y = sp.csr_matrix(dense)
    assert v.count_mode(y, None) is True
    sf = v.size_factors(None, v.stored(y, True), True, y.shape[0])
    totals = dense.astype(np.float64).sum(1)
    np.testing.assert_allclose(sf, totals / totals.mean(), rtol=1e-12)
    for bad, why in ((0.5, "non-integer"), (-1.0, "negative")):
        z = dense.copy()
        z[-1, -1] = bad
        assert v.count_mode(sp.csr_matrix(z), None) is False  # negative control: one entry in the last chunk
        with pytest.raises(DesignError, match=why):
            v.count_mode(sp.csr_matrix(z), True)


def test_observed_means_of_new_cells_are_drawn_on_the_host_with_the_models_distribution(compile_events):
    """``mean_of_cells`` (predict's ``observed_mean``): the mean of n new cells' counts is NB(n mu, n phi) / n,
    so its mean is mu and its variance (mu + mu^2 / phi) / n; a Poisson of the same means (variance mu / n), the
    negative control, is far too narrow. A zero mean gives 0, a NaN mean NaN; the same key gives the same draws,
    another key others; and no JAX program is compiled for the shape (the eager JAX draw compiled ~5 s cold)."""
    from semimech.measurement import mean_of_cells

    mu, phi, n = 6.0, 1.5, 4.0
    mean = np.full((40_000, 2, 3), mu, np.float32)
    mean[:, 1, 2] = 0.0
    mean[0, 0, 0] = np.nan
    noise = np.full((40_000, 1, 3), phi, np.float32)
    key = jax.random.PRNGKey(3)
    with compile_events() as compiles:
        d = mean_of_cells(key, mean, noise, likelihood="negbin", num_cells=np.array([1.0, n])[None, :, None])
    assert compiles == []
    assert d.shape == mean.shape and d.dtype == np.float32
    assert np.isnan(d[0, 0, 0]) and np.isfinite(d[1:]).all() and np.all(d[:, 1, 2] == 0)
    one, many = d[1:, 0, 1], d[1:, 1, 1]
    assert one.mean() == pytest.approx(mu, rel=0.03) and many.mean() == pytest.approx(mu, rel=0.03)
    assert one.var() == pytest.approx(mu + mu**2 / phi, rel=0.06)
    assert many.var() == pytest.approx((mu + mu**2 / phi) / n, rel=0.06)
    assert np.all(np.isclose(many * n, np.round(many * n), atol=1e-3))  # totals of counts
    poisson = np.random.default_rng(0).poisson(mu * n, many.shape) / n  # negative control: the wrong law
    assert not poisson.var() == pytest.approx((mu + mu**2 / phi) / n, rel=0.5)
    np.testing.assert_array_equal(d, mean_of_cells(key, mean, noise, likelihood="negbin",
                                                   num_cells=np.array([1.0, n])[None, :, None]))
    assert not np.array_equal(d[1:], mean_of_cells(jax.random.PRNGKey(4), mean, noise, likelihood="negbin",
                                                   num_cells=np.array([1.0, n])[None, :, None])[1:])
    g = mean_of_cells(key, mean[:, :1], noise, likelihood="normal", num_cells=n)
    assert g[1:, 0, 0].std() == pytest.approx(phi / np.sqrt(n), rel=0.03) and g.dtype == np.float32


def test_a_count_fit_passes_numpyros_model_check_without_a_jax_deprecation(small_counts_adata):
    """NumPyro's model check takes ``jnp.ndim`` of the observed value; for the sparse counts JAX warned that a future
    release makes it a TypeError (every count fit would then fail). ``SparseCounts.ndim`` answers it: no warning,
    here turned into an error (without the property the test fails with it: checked)."""
    import warnings

    import semimech as sm
    from semimech.models import additive

    design = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*requires ndarray or scalar arguments")
        fit = sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=20, num_samples=5, progress_bar=False)
    assert fit.likelihood == "negbin" and np.isfinite(fit.losses[-1])
