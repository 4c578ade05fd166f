"""Additive model: log-mean = baseline + sum of per-target effects (+ interaction, + batch).

This is the "effects add in a latent space" assumption of mean-shift predictors made explicit
(FRAMEWORK.md section 4). A combination's effect is the sum of its targets' effects plus an
interaction term whose scale is learned from the combinations seen in training; for an unseen
combination the interaction is drawn from that learned distribution, so the predictive
interval says how far from additive training combinations were.

Sample sites
------------
baseline : (genes,)
    Control mean on the latent scale (data units for ``normal``, log rate for ``negbin``).
effect_scale : ()
    Global shrinkage scale of the effects (horseshoe tau).
effect_local : (targets, genes)
    Local horseshoe scales.
effect_z : (targets, genes)
    Standardised effects; ``effect = effect_scale * effect_local * effect_z``.
effect : (targets, genes), deterministic
    Effect of each target on the latent scale (data units or log fold change).
interaction_scale : ()
    Hierarchical scale of the per-gene interaction sd.
interaction_sd : (genes,)
    Sd of the non-additive residual of combinations.
interaction_z : (perturbations, genes)
    Standardised interaction (used only for perturbations with two or more targets).
mean : (perturbations, genes), deterministic
    Population mean of each perturbation on the data scale (per unit size factor).
noise_sd / concentration, batch_sd, batch_z, y
    Measurement sites, see :mod:`semimech.measurement`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from semimech.infer.spec import ModelSpec
from semimech.measurement import gene_noise, observe_conditions, to_data_scale


def model(data, *, likelihood: str = "normal", effect_prior_scale: float = 0.5, y=None):
    """The additive perturbation model; see the module docstring for the sites."""
    n_genes = data["n_genes"]
    tm = jnp.asarray(data["target_matrix"])
    n_pert, n_targets = tm.shape
    genes = numpyro.plate("genes", n_genes, dim=-1)
    unit = jnp.asarray(data["baseline_scale"]) if likelihood == "normal" else 1.0

    with genes:
        baseline = numpyro.sample("baseline", dist.Normal(jnp.asarray(data["baseline_loc"]), 2.0 * unit))
        noise = gene_noise(data, likelihood=likelihood)
    tau = numpyro.sample("effect_scale", dist.HalfNormal(effect_prior_scale))
    with numpyro.plate("targets", n_targets, dim=-2), genes:
        local = numpyro.sample("effect_local", dist.HalfCauchy(1.0))
        z = numpyro.sample("effect_z", dist.Normal(0.0, 1.0))
        effect = numpyro.deterministic("effect", tau * local * z * unit)

    int_scale = numpyro.sample("interaction_scale", dist.HalfNormal(effect_prior_scale))
    with genes:
        int_sd = numpyro.sample("interaction_sd", dist.HalfNormal(1.0)) * int_scale * unit
    with numpyro.plate("perturbations", n_pert, dim=-2), genes:
        iz = numpyro.sample("interaction_z", dist.Normal(0.0, 1.0))
        interaction = jnp.asarray(data["is_combination"])[:, None] * int_sd * iz
        loc_p = baseline + tm @ effect + interaction
        numpyro.deterministic("mean", to_data_scale(loc_p, likelihood))

    observe_conditions(loc_p, noise, data, genes, likelihood=likelihood, y=y)


SPEC = ModelSpec(
    name="additive",
    model=model,
    assumes="effects add on the latent (log) scale; combinations deviate by a learned interaction scale; "
    "no dynamics, one attractor per perturbation",
    predicts_unseen_targets=False,
)
