"""Pure math and the NumPyro shell of the guide-assignment model.

The public entry points (``model``, ``SPEC``, ``fit_guides``, ``perturbation_probabilities``)
live in :mod:`semimech.models.guide_assignment`, whose docstring documents the model and its
sample sites. Here: :func:`cell_terms` (the per-cell marginal likelihood, no NumPyro) and
:func:`model`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln, logsumexp
from numpyro import handlers

from semimech.measurement.counts import rowwise_log_likelihood
from semimech.measurement.likelihoods import batch_offsets

_MAX_HIT = 1.0 - 1e-6  # cap on P(guide present and effective) so log(1 - q) stays finite
_LOG_MU_BOUND = 30.0  # |log mean| cap (e^30 molecules): a no-op on real data, keeps exp finite in float32


def nb_logpmf(c, mean, concentration):
    """Elementwise NB2 log-pmf (mean, concentration)."""
    lp = jnp.log(concentration + mean)
    return (gammaln(c + concentration) - gammaln(concentration) - gammaln(c + 1.0)
            + concentration * (jnp.log(concentration) - lp) + c * (jnp.log(mean) - lp))


def derive(raw, data):
    """Parameters :func:`cell_terms` needs, from one draw of the sites (no NumPyro)."""
    bg = raw["guide_bg_log_mean"]
    p = {
        "efficacy": raw["efficacy"],
        "bg_mean": jnp.exp(jnp.clip(bg, -_LOG_MU_BOUND, _LOG_MU_BOUND)),
        "fg_mean": jnp.exp(jnp.clip(bg + jax.nn.softplus(raw["guide_fg_log_gap"]), -_LOG_MU_BOUND, _LOG_MU_BOUND)),
        "bg_conc": raw["guide_bg_concentration"],
        "fg_conc": raw["guide_fg_concentration"],
        "presence": raw["presence_prob"],
        "baseline": raw["baseline"],
        "effect": raw["effect"],
        "concentration": raw.get("concentration"),
        "gate": raw.get("gate"),
        "offsets": raw.get("batch_effect") if data["n_batches"] > 0 else None,
    }
    return p


def cell_terms(p, data, cells, y, *, likelihood: str):
    """Per-cell log-likelihood of guide counts and expression, discrete states marginalised.

    Parameters
    ----------
    p
        Output of :func:`derive`.
    data
        Static model data (``guide_target_onehot`` guides x targets, ``n_batches``).
    cells
        Minibatch arrays: ``guide_counts`` (padded sparse rows, cells x guides; only non-zero
        counts cost ``lgamma``), ``candidates`` (cells, M; -1 pad),
        ``size_factors`` (cells,), ``batch_index`` (cells,).
    y
        Expression counts of the minibatch (:class:`~semimech.measurement.counts.PaddedRows`).

    Returns
    -------
    dict with ``guide_ll`` (cells,): log p(guide counts); ``y_ll`` (cells,): log p(expression |
    guide counts); ``log_prior`` (cells, H) and ``log_post`` (cells, H): log-probabilities of the
    hypotheses (0: unperturbed, m: perturbed at candidate m) before and after seeing
    expression; ``presence_zero`` (guides,) and ``presence_nonzero`` (non-zeros,): P(guide
    present | its count) for a zero count and for each non-zero entry; ``log_q``
    (cells, targets): log P(perturbed at target | guide counts).
    """
    g = cells["guide_counts"]  # PaddedRows: the guide-count minibatch stays sparse
    n = cells["size_factors"].shape[0]
    T = data["n_targets"]
    rho, eff = p["presence"], p["efficacy"]

    def mixture(c, k):  # log-terms of absent / present for count c of guide k
        a = jnp.log1p(-rho) + nb_logpmf(c, p["bg_mean"][k], p["bg_conc"])
        b = jnp.log(rho) + nb_logpmf(c, p["fg_mean"][k], p["fg_conc"])
        return jnp.logaddexp(a, b), jax.nn.sigmoid(b - a)

    allk = jnp.arange(eff.shape[0])
    ll0, r0 = mixture(0.0, allk)  # every guide as if its count were zero
    dt = jnp.result_type(p["bg_mean"])
    gv, gm = g.values.astype(dt), g.mask.astype(dt)
    ll_nz, r_nz = mixture(gv, g.cols)
    guide_ll = ll0.sum() + jax.ops.segment_sum(gm * (ll_nz - ll0[g.cols]), g.rows, num_segments=n)
    log_miss0 = jnp.log1p(-jnp.clip(r0 * eff, 0.0, _MAX_HIT))  # log P(guide k does not edit), count 0
    log_miss_nz = jnp.log1p(-jnp.clip(r_nz * eff[g.cols], 0.0, _MAX_HIT))
    tix = jnp.asarray(np.asarray(data["guide_target_index"], np.int32))
    onehot = jnp.asarray(np.asarray(data["guide_target_onehot"], np.float32))
    tg = jnp.maximum(tix[g.cols], 0)
    corr = gm * (tix[g.cols] >= 0) * (log_miss_nz - log_miss0[g.cols])
    log_not = (log_miss0 @ onehot)[None, :] + jax.ops.segment_sum(corr, g.rows * T + tg, num_segments=n * T).reshape(n, T)
    log_q = jnp.log(jnp.maximum(-jnp.expm1(log_not), 1e-30))
    cand = jnp.asarray(cells["candidates"])
    valid = cand >= 0
    ci = jnp.maximum(cand, 0)
    logw0 = log_not.sum(-1)
    logw_m = jnp.where(valid, logw0[:, None] + jnp.take_along_axis(log_q, ci, 1) - jnp.take_along_axis(log_not, ci, 1),
                       -jnp.inf)
    logw = jnp.concatenate([logw0[:, None], logw_m], axis=1)
    logw = logw - logsumexp(logw, axis=1, keepdims=True)  # renormalised over the kept hypotheses
    loc0 = p["baseline"] + jnp.log(cells["size_factors"])[:, None]
    if p["offsets"] is not None:
        loc0 = loc0 + p["offsets"][cells["batch_index"]]
    shift = jnp.where(valid[..., None], p["effect"][ci], 0.0)  # (cells, M, genes)
    log_mu = jnp.concatenate([loc0[None], jnp.moveaxis(loc0[:, None] + shift, 1, 0)], axis=0)
    log_mu = jnp.clip(log_mu, -_LOG_MU_BOUND, _LOG_MU_BOUND)  # guard: float32 exp overflows near 88
    ll = jax.vmap(lambda lm: rowwise_log_likelihood(likelihood, y, lm, concentration=p["concentration"],
                                                    gate=p["gate"]))(log_mu)  # (H, cells)
    joint = logw + ll.T
    y_ll = logsumexp(joint, axis=1)
    return {"guide_ll": guide_ll, "y_ll": y_ll, "log_prior": logw, "log_post": joint - y_ll[:, None],
            "presence_zero": r0, "presence_nonzero": r_nz, "log_q": log_q}


def model(data, *, y=None, cells=None, likelihood: str = "negbin", effect_prior_scale: float = 0.5,
          efficacy_prior: tuple[float, float] = (1.0, 1.5)):
    """The guide-assignment model; sites in :mod:`semimech.models.guide_assignment`.

    ``cells`` holds one minibatch (``index``, ``weight`` and the arrays of
    :func:`cell_terms`); ``y`` its expression counts as padded sparse rows. Without
    ``cells`` only the global sites are sampled (prior draws).
    """
    G, K, T = data["n_genes"], data["n_guides"], data["n_targets"]
    genes = numpyro.plate("genes", G, dim=-1)
    with genes:
        baseline = numpyro.sample("baseline", dist.Normal(jnp.asarray(data["baseline_loc"]), 2.0))
        raw = {"baseline": baseline}
        if likelihood in ("negbin", "zinb"):
            raw["concentration"] = numpyro.sample("concentration", dist.LogNormal(1.0, 1.5))
        if likelihood == "zinb":
            raw["gate"] = numpyro.sample("gate", dist.Beta(1.0, 9.0))
    if data["n_batches"] > 0:
        off = batch_offsets({"batch_index": True, "n_batches": data["n_batches"]}, genes)
        raw["batch_effect"] = numpyro.deterministic("batch_effect", off)
    tau = numpyro.sample("effect_scale", dist.HalfNormal(effect_prior_scale))
    targets = numpyro.plate("targets", T, dim=-2)
    with targets, genes:
        local = numpyro.sample("effect_local", dist.HalfCauchy(1.0))
        z = numpyro.sample("effect_z", dist.Normal(0.0, 1.0))
    raw["effect"] = numpyro.deterministic("effect", tau * local * z)
    with targets:
        eloc = numpyro.sample("efficacy_target_logit", dist.Normal(efficacy_prior[0], efficacy_prior[1]))
    esd = numpyro.sample("efficacy_sd", dist.HalfNormal(1.0))
    with numpyro.plate("guides", K, dim=-1):
        ez = numpyro.sample("efficacy_z", dist.Normal(0.0, 1.0))
        raw["guide_bg_log_mean"] = numpyro.sample("guide_bg_log_mean", dist.Normal(jnp.asarray(data["guide_bg_loc"]), 2.0))
        raw["guide_fg_log_gap"] = numpyro.sample("guide_fg_log_gap", dist.Normal(jnp.asarray(data["guide_gap_loc"]), 2.0))
    raw["presence_prob"] = numpyro.sample("presence_prob", dist.Beta(1.0, 10.0))
    raw["guide_bg_concentration"] = numpyro.sample("guide_bg_concentration", dist.LogNormal(0.0, 1.5))
    raw["guide_fg_concentration"] = numpyro.sample("guide_fg_concentration", dist.LogNormal(0.0, 1.5))
    tix = jnp.asarray(np.asarray(data["guide_target_index"], np.int32))
    onehot = jnp.asarray(np.asarray(data["guide_target_onehot"], np.float32))
    eff = jnp.where(tix >= 0, jax.nn.sigmoid(eloc[jnp.maximum(tix, 0), 0] + esd * ez), 0.0)
    raw["efficacy"] = numpyro.deterministic("efficacy", eff)
    numpyro.deterministic("efficacy_target", jax.nn.sigmoid(eloc[:, 0]))
    numpyro.deterministic("escaper_fraction", 1.0 - (onehot.T @ eff) / jnp.maximum(onehot.sum(0), 1.0))
    if cells is None:
        return
    p = derive(raw, data)
    idx = jnp.asarray(cells["index"])
    n, bsz = data["n_obs"], idx.shape[0]
    w = jnp.asarray(cells["weight"]) * bsz / n  # relative to the plate's own n / batch scaling
    with handlers.substitute(data={"cells": idx}):
        with numpyro.plate("cells", n, subsample_size=bsz, dim=-2):
            t = cell_terms(p, data, cells, y, likelihood=likelihood)
            numpyro.factor("guide_counts", (w * t["guide_ll"])[:, None])
            numpyro.factor("y", (w * t["y_ll"])[:, None])
