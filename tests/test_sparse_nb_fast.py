"""The sparse NB's cheaper arithmetic equals the straightforward one (issue 14: SVI step cost).

:func:`lgamma_ratio` replaces XLA's ``lgamma`` / ``digamma`` on the non-zero counts, and
:class:`RowGroups` takes ``exp`` per condition instead of per cell; each is checked here against
the plain formula (``gammaln`` differences, ``NegativeBinomial2`` on dense counts) on tiny problems,
values and gradients, with negative controls.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.sparse as sp
import scipy.special as ss
from jax.scipy.special import gammaln
from numpyro import handlers
from numpyro.infer.util import log_density

import semimech as sm
from semimech.infer._observed import sparse_counts
from semimech.measurement.likelihoods import RowGroups, SparseNegativeBinomial2, lgamma_ratio
from semimech.simulate import simulate_screen


def test_lgamma_ratio_matches_float64_reference_and_gammaln():
    v = np.concatenate([np.arange(0, 40), [63, 64, 100, 139, 1000, 12345]]).astype(np.float32)
    a = np.asarray([1e-6, 1e-3, 0.1, 1.0, 3.7, 50.0, 1e4], np.float32)[:, None]
    v2, a2 = np.broadcast_arrays(v, a)
    ref = ss.gammaln(v2.astype(np.float64) + a2) - ss.gammaln(a2.astype(np.float64))
    both = jax.jit(lambda v, a: (lgamma_ratio(v, a), gammaln(v + a) - gammaln(a)))
    got, old = (np.asarray(x, np.float64) for x in both(jnp.asarray(v2), jnp.asarray(a2)))
    err, err_old = (np.abs(x - ref) / (np.abs(ref) + 1.0) for x in (got, old))
    # per a: float32 rounding, no worse than lgamma - lgamma
    assert np.all(err.max(1) <= np.maximum(2e-6, 1.5 * err_old.max(1))), (err.max(1), err_old.max(1))
    assert np.all(got[:, 0] == 0.0)  # a zero count contributes nothing
    # gradient in a equals the digamma difference
    k = np.asarray([1.0, 3.0, 8.0, 9.0, 57.0], np.float32)[:, None]
    k2, a2 = np.broadcast_arrays(k, np.asarray([0.05, 0.7, 2.0, 30.0], np.float32))
    g = jax.jit(jax.grad(lambda x: lgamma_ratio(jnp.asarray(k2), x).sum()))(jnp.asarray(a2))
    ref = ss.digamma(k2.astype(np.float64) + a2) - ss.digamma(a2.astype(np.float64))
    np.testing.assert_allclose(np.asarray(g), ref, rtol=2e-5, atol=1e-6)
    # negative control: the same arguments one count off are far from the reference
    off = np.asarray(jax.jit(lgamma_ratio)(jnp.asarray(v[1:40] + 1.0), jnp.float32(3.7)))
    ref = ss.gammaln(v[1:40].astype(np.float64) + 3.7) - ss.gammaln(3.7)
    assert np.min(np.abs(off - ref)) > 0.5


def _problem(seed=0, n=60, G=12, P=5):
    rng = np.random.default_rng(seed)
    y = sp.random(n, G, density=0.3, random_state=np.random.RandomState(seed), format="csr")
    y.data = np.ceil(y.data * 25).astype(np.float32)  # counts 1..25: both branches of lgamma_ratio
    pidx = rng.integers(0, P, n).astype(np.int32)
    sf = rng.lognormal(0.0, 0.4, n).astype(np.float32)
    ncells = rng.integers(1, 4, n).astype(np.float32)  # pseudobulk rows too
    loc_p = rng.normal(0.5, 1.2, (P, G)).astype(np.float32)
    loc_p[0, 0] = 95.0  # log(mu / phi) beyond the exp bound: the exact log-scale branch
    phi_g = rng.lognormal(0.5, 0.8, G).astype(np.float32)
    phi_pg = (phi_g * rng.lognormal(0.0, 0.3, (P, 1))).astype(np.float32)  # a noise per condition
    return y, jnp.asarray(pidx), jnp.asarray(sf), jnp.asarray(ncells), jnp.asarray(loc_p), phi_g, phi_pg


def test_grouped_sparse_nb_equals_dense_negative_binomial_values_and_gradients(slow=False):
    y, pidx, sf, ncells, loc_p, phi_g, phi_pg = _problem()
    sc = jax.tree.map(jnp.asarray, sparse_counts(y))
    dense_y = jnp.asarray(y.toarray())

    rows = (pidx, sf, ncells)

    def straightforward(loc_p, phi, y_dense, rows):  # what the model meant: NB2(sf * exp(loc), n * phi) per cell
        pidx, sf, ncells = rows
        phi_rows = phi[pidx] if phi.ndim == 2 else phi
        mean = sf[:, None] * jnp.exp(loc_p[pidx])
        return dist.NegativeBinomial2(mean=mean, concentration=ncells[:, None] * phi_rows).log_prob(y_dense)

    def fast(loc_p, phi, counts, rows, grouped=True, roll=0):
        pidx, sf, ncells = rows
        phi_rows = phi[pidx] if phi.ndim == 2 else phi
        groups = RowGroups(loc_p, phi, jnp.roll(pidx, roll), sf, ncells) if grouped else None
        return SparseNegativeBinomial2(jnp.log(sf)[:, None] + loc_p[pidx], ncells[:, None] * phi_rows,
                                       groups=groups).log_prob(counts)

    def float64(loc_p, phi):  # the NB2 log-pmf in float64 (mu = e^95 included)
        phi_rows = np.asarray(phi, np.float64)[np.asarray(pidx)] if phi.ndim == 2 else np.asarray(phi, np.float64)
        phi_rows = np.asarray(ncells, np.float64)[:, None] * phi_rows
        lmu = np.log(np.asarray(sf, np.float64))[:, None] + np.asarray(loc_p, np.float64)[np.asarray(pidx)]
        lse = np.logaddexp(np.log(phi_rows), lmu)
        yy = y.toarray().astype(np.float64)
        return (ss.gammaln(yy + phi_rows) - ss.gammaln(phi_rows) - ss.gammaln(yy + 1.0)
                + phi_rows * (np.log(phi_rows) - lse) + yy * (lmu - lse))

    usual = loc_p.at[0, 0].set(0.3)

    points = jnp.stack([usual, loc_p])  # an ordinary point and one with mu / phi ~ e^95

    def total(a, b, counts, rows, grouped):
        lp = fast(a, b, counts, rows, grouped=grouped)
        return lp.sum(), lp

    # small programs, each compiled once (one large program compiled several times slower than its parts)
    fast_vg = jax.jit(jax.vmap(jax.value_and_grad(total, argnums=(0, 1), has_aux=True), in_axes=(0, None, None, None, None)),
                      static_argnums=4)
    ref_vg = jax.jit(jax.value_and_grad(lambda a, b, y, r: straightforward(a, b, y, r).sum(), argnums=(0, 1)))
    # a noise per condition here (the default run's time is mostly compilation); a noise per gene and
    # the ungrouped path: the slow test below, and tests/test_stream.py (ungrouped against dense NB2)
    for phi, paths in ((jnp.asarray(phi_pg), (True,)),) if not slow else ((jnp.asarray(phi_g), (True, False)),):
        ref_sum, ref_grad = ref_vg(usual, phi, dense_y, rows)
        for grouped in paths:
            (sums, values), grads = fast_vg(points, phi, sc, rows, grouped)
            np.testing.assert_allclose(np.asarray(values[1], np.float64), float64(loc_p, phi), rtol=2e-5, atol=2e-4)
            assert all(np.isfinite(np.asarray(g[1])).all() for g in grads)
            # values and gradients against the straightforward NB2 where it is finite
            np.testing.assert_allclose(values[0], float64(usual, phi), rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(sums[0], ref_sum, rtol=1e-5)
            for a, b in zip(grads, ref_grad):
                np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-4)
        # negative control: rows assigned to the wrong condition
        wrong = jax.jit(lambda a, b, c, r: fast(a, b, c, r, roll=1).sum())(usual, phi, sc, rows)
        assert abs(float(wrong) - float64(usual, phi).sum()) > 1.0


@pytest.mark.slow
def test_grouped_and_ungrouped_sparse_nb_with_a_noise_per_gene():
    test_grouped_sparse_nb_equals_dense_negative_binomial_values_and_gradients(slow=True)


def _additive_tiny():
    from semimech.infer.fit import _prepare
    from semimech.models import additive

    adata, _ = simulate_screen(n_cells=120, n_genes=15, n_targets=3, combos=1, density=0.3, rng_key=0)
    design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    model, data, y_dense, _ = _prepare(additive.SPEC, design, {"likelihood": "negbin"})
    return model, data, y_dense, jax.tree.map(jnp.asarray, sparse_counts(design.y))


def test_additive_model_observes_sparse_counts_by_condition():
    """The fitted model takes the condition-level path (abstract trace: nothing computed)."""
    model, data, _, ys = _additive_tiny()
    found = {}

    def run():
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(data, y=ys)
        found["groups"] = tr["y"]["fn"].groups
        return 0

    jax.eval_shape(run)
    assert isinstance(found["groups"], RowGroups) and found["groups"].index.shape == (data["n_obs"],)
    # negative control: with batch offsets the rows are not one mean per condition
    batched = dict(data, batch_index=np.arange(data["n_obs"]) % 2, n_batches=2)
    found.clear()
    jax.eval_shape(lambda: (found.update(groups=handlers.trace(handlers.seed(model, 0)).get_trace(
        batched, y=ys)["y"]["fn"].groups), 0)[1])
    assert found["groups"] is None


@pytest.mark.slow
def test_additive_model_sparse_log_density_equals_dense_counts():
    """The fitted model's density (grouped sparse path) equals the same model on dense counts."""
    model, data, y_dense, ys = _additive_tiny()
    point = {k: s["value"] for k, s in handlers.trace(handlers.seed(model, 3)).get_trace(data, y=y_dense).items()
             if s["type"] == "sample" and not s["is_observed"]}

    def lp(p, y):
        return log_density(model, (data,), {"y": y}, p)[0]

    other = {k: v + 0.1 for k, v in point.items()}
    sparse_v, dense_v, other_v = jax.jit(lambda p, q: (lp(p, ys), lp(p, y_dense), lp(q, ys)))(point, other)
    np.testing.assert_allclose(float(sparse_v), float(dense_v), rtol=1e-5)
    assert abs(float(other_v - sparse_v)) > 1.0  # negative control: another point's density differs
