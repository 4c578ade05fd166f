"""The screen simulator: shapes, reproducibility, and counts that follow the stated truth."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as st

from semimech.errors import DesignError
from semimech.simulate import _counts, simulate_screen


@pytest.fixture(scope="module")
def screen():
    return simulate_screen(n_cells=6000, n_genes=300, n_targets=20, n_batches=3, combos=5, rng_key=3)


def test_shapes_and_annotation(screen):
    adata, truth = screen
    assert adata.shape == (6000, 300)
    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_array)
    assert set(adata.obs.columns) >= {"perturbation", "batch"}
    assert truth.effects.shape == (20, 300)
    assert truth.interaction.shape == truth.mean.shape == (len(truth.perturbations), 300)
    assert truth.batch_offsets.shape == (3, 300) and truth.library_size.shape == (6000,)
    assert truth.perturbations[0] == "control" and len(truth.perturbations) == 1 + 20 + 5
    # targets are the first genes (CRISPRi): each knocks its own gene down
    assert truth.targets == truth.genes[:20]
    np.testing.assert_allclose(np.diag(truth.effects[:, :20]), -1.5)
    # the target matrix matches the labels, and singles have no interaction
    for i, p in enumerate(truth.perturbations[1:], start=1):
        on = {truth.targets[j] for j in np.flatnonzero(truth.target_matrix[i])}
        assert on == set(p.split("+"))
    singles = truth.target_matrix.sum(1) <= 1
    assert np.all(truth.interaction[singles] == 0)
    frac_ctrl = np.mean(adata.obs["perturbation"] == "control")
    assert 0.03 < frac_ctrl < 0.07


def test_density_is_genome_wide_proportion(screen):
    X = screen.adata.X
    assert abs(X.nnz / np.prod(X.shape) - 0.09) < 0.01
    assert np.all(X.data > 0) and np.all(X.data == np.round(X.data))


def test_reproducible_by_key():
    a = simulate_screen(n_cells=700, n_genes=50, n_targets=5, rng_key=11)
    b = simulate_screen(n_cells=700, n_genes=50, n_targets=5, rng_key=11)
    c = simulate_screen(n_cells=700, n_genes=50, n_targets=5, rng_key=12)
    assert (a.adata.X != b.adata.X).nnz == 0
    np.testing.assert_array_equal(a.truth.effects, b.truth.effects)
    assert list(a.adata.obs["perturbation"]) == list(b.adata.obs["perturbation"])
    assert (a.adata.X != c.adata.X).nnz > 0


def _condition_total_z(adata, truth, effects):
    """z-scores of each condition x gene total count against the expected total and NB variance."""
    pidx = adata.obs["perturbation"].cat.codes.to_numpy()
    bidx = adata.obs["batch"].cat.codes.to_numpy()
    latent = truth.baseline + truth.target_matrix @ effects + truth.interaction
    mu = truth.library_size[:, None] * np.exp(latent[pidx] + truth.batch_offsets[bidx])
    var = mu + mu**2 / truth.dispersion
    P = len(truth.perturbations)
    group = sp.csr_matrix((np.ones(len(pidx)), (pidx, np.arange(len(pidx)))), shape=(P, len(pidx)))
    observed = np.asarray((group @ adata.X).todense())
    return (observed - group @ mu) / np.sqrt(group @ var)


def test_sample_means_match_truth_and_negative_control(screen):
    adata, truth = screen
    z = _condition_total_z(adata, truth, truth.effects)
    # known answer: condition totals are unbiased with the NB variance (mean z^2 ~ 1 over 7,800 cells)
    assert 0.85 < np.mean(z**2) < 1.15
    assert np.mean(np.abs(z) > 3.0) < 0.01
    # negative control: the same counts against effects shuffled across targets must not fit
    shuffled = truth.effects[np.random.default_rng(0).permutation(truth.effects.shape[0])]
    z_bad = _condition_total_z(adata, truth, shuffled)
    assert np.mean(z_bad**2) > 1.5  # sd of a mean of 7,800 chi2(1) values is 0.016


@pytest.mark.parametrize("mu, phi", [(0.05, 2.0), (0.6, 0.5), (3.0, 4.0), (25.0, 1.5)])
def test_counts_follow_negative_binomial(mu, phi):
    """Both branches of the sampler (inverse CDF and Gamma-Poisson) give the NB pmf."""
    n = 20000
    latent = np.full((1, 4), np.log(mu), np.float32)
    X = _counts([1, 2], latent, np.zeros((1, 4), np.float32), np.full(4, phi, np.float32), np.ones(n),
                np.zeros(n, np.int64), np.zeros(n, np.int64))
    y = np.asarray(X[:, 0].todense()).ravel()
    nb = st.nbinom(phi, phi / (phi + mu))
    pois = st.poisson(mu)

    def chi2_p(dist):
        edges = np.unique(np.concatenate([np.arange(0, int(dist.ppf(0.99)) + 1), [np.inf]]))
        obs = np.array([np.sum((y >= a) & (y < b)) for a, b in zip(edges[:-1], edges[1:])])
        exp = n * np.array([dist.cdf(b - 1) - dist.cdf(a - 1) for a, b in zip(edges[:-1], edges[1:])])
        keep = exp > 5
        return st.chi2.sf(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]), keep.sum() - 1)

    assert chi2_p(nb) > 1e-3
    if mu > 0.5:  # negative control: a Poisson with the same mean is rejected (overdispersion is real)
        assert chi2_p(pois) < 1e-6


def test_gaussian_variant():
    adata, truth = simulate_screen(n_cells=3000, n_genes=40, n_targets=4, likelihood="normal", rng_key=5)
    assert isinstance(adata.X, np.ndarray) and adata.X.dtype == np.float32
    pidx = adata.obs["perturbation"].cat.codes.to_numpy()
    for p in range(len(truth.perturbations)):
        rows = adata.X[pidx == p]
        se = truth.dispersion / np.sqrt(len(rows))
        z = (rows.mean(0) - truth.mean[p]) / se
        assert np.abs(z).max() < 5.0
    assert np.all(truth.library_size == 1.0)


def test_high_moi_labels_are_combinations():
    adata, truth = simulate_screen(n_cells=2000, n_genes=30, n_targets=6, moi=2.0, interaction_sd=0.3, rng_key=2)
    k = truth.target_matrix.sum(1)
    assert k.max() >= 2 and k.max() <= 3
    assert np.all(truth.interaction[k >= 2] != 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(likelihood="poisson"), "likelihood"),
    (dict(frac_control=0.0), "frac_control"),
    (dict(moi=0.5), "moi"),
    (dict(combos=100), "combos"),
    (dict(n_cells=0), "n_cells"),
])
def test_bad_input(kwargs, match):
    base = dict(n_cells=100, n_genes=10, n_targets=4, rng_key=0)
    with pytest.raises(DesignError, match=match):
        simulate_screen(**{**base, **kwargs})
