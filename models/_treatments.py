"""Treatment structure of the additive model: contexts, pairwise and higher-order interactions.

A condition is a set of treatment levels in a context (see :class:`semimech.Design`). On the
latent scale the additive model writes a condition ``p`` in context ``c`` holding levels ``L``
as

    loc[p] = baseline[c] + sum_{t in L} (effect[t] + dev[c, t])
             + sum_{pairs {s, t} in L} (pair[s, t] + pair_dev[c, s, t]) + higher[p]

- **Contexts** (cell lines) are pooled: ``baseline[c]`` deviates from a shared baseline with a
  learned scale, and a level's effect in context ``c`` is its shared effect plus a deviation
  with a learned scale per factor (a drug is one drug in five cell lines).
- **Pairs.** One interaction term per pair of levels that occurs together somewhere, reused
  wherever the pair occurs (in any context, inside any larger combination), with a learned
  scale per pair of factors (stimulus x inhibitor apart from inhibitor x inhibitor) and a
  per-gene profile; context deviations of pairs are pooled with their own learned scale.
  A pair never seen in training draws its term from the learned scale of its factor pair (from
  the prior when that factor pair never occurred): intervals widen honestly.
  By default (``tails="horseshoe"``) each pair x gene entry also has a local scale from a
  regularised horseshoe: most entries of a pair are near zero and a few are large, as in
  measured genetic-interaction screens, so an unseen pair's interval is narrow on most genes
  and heavy-tailed; the slab bounds an entry's sd (``exp`` of a draw keeps a finite mean).
  ``tails="normal"``: one Gaussian per entry with the pair's and gene's scales (the earlier model).
- **Higher orders.** Conditions with three or more levels get a condition-specific residual
  whose scale is learned from the training conditions with three or more levels.

Sites are sampled only where the design has the structure (one context: no context sites;
no pairs: no ``pair_z``; no condition with three levels: no higher-order sites). A site that
the training design lacks but a prediction needs is drawn from its prior by ``predict``, which
is the posterior when training had no data on it.

Sample sites
------------
context_sd : (), context_z : (contexts, genes)
    Context baselines: ``baseline + context_sd * unit * context_z[c]``.
effect_context_sd : (factors,), effect_context_z : (context_targets, genes)
    Context deviations of effects, one per (context, level) occurring in the design:
    ``effect_context_sd[factor(t)] * unit * effect_context_z[(c, t)]``.
interaction_scale : (factor_pairs,), interaction_sd : (genes,)
    Scale of the interaction per pair of factors (a scalar with one factor), and its per-gene profile.
pair_z : (target_pairs, genes)
    Standardised pair interactions: ``interaction_scale[fp] * interaction_sd * unit * pair_z``
    (times the local scale with ``tails="horseshoe"``).
pair_local_z : (target_pairs, genes)
    Only with ``tails="horseshoe"`` (the default): standard normal; the entry's local scale is
    :func:`local_scale` of it (a half-Cauchy draw, bounded by the slab ``interaction_slab``).
    Sampled as a standard normal so that an unseen pair gets fresh prior draws at prediction.
pair_context_sd : (), pair_context_z : (context_pairs, genes)
    Context deviations of pair interactions, one per (context, pair) occurring in the design:
    ``pair_context_sd * unit * pair_context_z``.
higher_scale : (), higher_z : (perturbations, genes)
    Residual of conditions with three or more levels: ``higher_scale * interaction_sd * unit * higher_z``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from semimech.errors import DesignError

TAILS = ("horseshoe", "normal")


def local_scale(local_z, tau, *, slab):
    """Regularised horseshoe local scale from a standard normal ``local_z``.

    ``lam = tan(pi/2 * Phi(local_z))`` is a half-Cauchy(0, 1) draw (its quantile function at a
    standard-normal draw's cdf), and ``lam * slab / sqrt(slab**2 + (tau * lam)**2)`` bounds
    ``tau * lam`` by ``slab`` (Piironen & Vehtari 2017): most entries near zero, a few up to
    ``slab`` (in ``unit``), never a draw so large that ``exp`` of it has no finite mean.
    """
    u = jnp.clip(jax.scipy.stats.norm.cdf(local_z), 0.0, 1.0 - 1e-6)
    lam = jnp.tan(0.5 * jnp.pi * u)
    return lam * slab / jnp.sqrt(slab**2 + (tau * lam) ** 2)


def _plate(name, size, dim):
    return numpyro.plate(name, size, dim=dim)


def context_baseline(baseline, data, genes, *, unit):
    """``(contexts, genes)`` baselines (one row without contexts)."""
    n_ctx = int(data["n_contexts"])
    if n_ctx <= 1:
        return baseline[None, :]
    sd = numpyro.sample("context_sd", dist.HalfNormal(1.0))
    with _plate("contexts", n_ctx, -2), genes:
        z = numpyro.sample("context_z", dist.Normal(0.0, 1.0))
    return baseline + sd * unit * z


def context_effects(data, genes, *, unit, prior_scale: float):
    """``(perturbations, genes)``: the sum of each condition's context deviations of its levels' effects."""
    n_pert = jnp.shape(data["target_matrix"])[0]
    n_cells = jnp.shape(data["context_targets"])[0]
    if int(data["n_contexts"]) <= 1 or n_cells == 0:
        return 0.0
    with _plate("factors", int(data["n_factors"]), -1):
        sd = numpyro.sample("effect_context_sd", dist.HalfNormal(prior_scale))
    with _plate("context_targets", n_cells, -2), genes:
        z = numpyro.sample("effect_context_z", dist.Normal(0.0, 1.0))
    dev = sd[jnp.asarray(data["context_target_factor"])][:, None] * unit * z  # (context_targets, genes)
    rows = jnp.asarray(data["level_rows"])
    return jax.ops.segment_sum(dev[jnp.asarray(data["level_context_col"])], rows, num_segments=n_pert)


def interactions(data, genes, *, unit, prior_scale: float, tails: str = "horseshoe", slab: float = 2.0):
    """``(perturbations, genes)``: pairwise interactions (with context deviations) plus higher orders.

    ``tails``: ``"horseshoe"`` (default: a regularised-horseshoe local scale per pair x gene entry,
    slab ``slab`` in ``unit``) or ``"normal"`` (Gaussian entries).
    """
    if tails not in TAILS:
        raise DesignError(f"interactions must be one of {TAILS}, got {tails!r}.")
    n_pert = jnp.shape(data["target_matrix"])[0]
    n_ctx = int(data["n_contexts"])
    n_fp = int(data["n_factor_pairs"])
    if n_fp == 1:  # one factor (label designs): a scalar, as before factors existed
        scale = jnp.reshape(numpyro.sample("interaction_scale", dist.HalfNormal(prior_scale)), (1,))
    else:
        with _plate("factor_pairs", n_fp, -1):
            scale = numpyro.sample("interaction_scale", dist.HalfNormal(prior_scale))
    with genes:
        gene_sd0 = numpyro.sample("interaction_sd", dist.HalfNormal(1.0))
    gene_sd = gene_sd0 * unit
    out = jnp.zeros((n_pert, data["n_genes"]))
    n_pairs = jnp.shape(data["pair_index"])[0]
    if n_pairs > 0:
        tau = scale[jnp.asarray(data["pair_factor_pair"])][:, None] * gene_sd0  # (pairs, genes), in unit
        with _plate("target_pairs", n_pairs, -2), genes:
            z = numpyro.sample("pair_z", dist.Normal(0.0, 1.0))
            if tails == "horseshoe":
                z = z * local_scale(numpyro.sample("pair_local_z", dist.Normal(0.0, 1.0)), tau, slab=slab)
        pair = tau * unit * z  # (pairs, genes)
        rows, cols = jnp.asarray(data["pair_rows"]), jnp.asarray(data["pair_cols"])
        out = out + jax.ops.segment_sum(pair[cols], rows, num_segments=n_pert)
        if n_ctx > 1:
            csd = numpyro.sample("pair_context_sd", dist.HalfNormal(prior_scale))
            with _plate("context_pairs", jnp.shape(data["context_pairs"])[0], -2), genes:
                cz = numpyro.sample("pair_context_z", dist.Normal(0.0, 1.0))
            out = out + jax.ops.segment_sum((csd * unit * cz)[jnp.asarray(data["pair_context_col"])], rows,
                                            num_segments=n_pert)
    if int(data.get("max_levels", 3)) >= 3:
        hs = numpyro.sample("higher_scale", dist.HalfNormal(prior_scale))
        with _plate("perturbations", n_pert, -2), genes:
            hz = numpyro.sample("higher_z", dist.Normal(0.0, 1.0))
        higher = (jnp.asarray(data["n_levels"]) >= 3)[:, None]
        out = out + jnp.where(higher, hs * gene_sd * hz, 0.0)
    return out
