"""Additive model: log-mean = baseline + sum of per-target effects (+ interactions, + contexts, + batch).

This is the "effects add in a latent space" assumption of mean-shift predictors made explicit
(FRAMEWORK.md section 4). A combination's effect is the sum of its levels' effects plus one
interaction term per pair of levels (reused wherever the pair occurs, with a learned scale per
pair of factors) and, for three or more levels, a residual with a learned scale; an unseen pair
draws its interaction from the learned scale, so the predictive interval says how far from
additive training combinations were. With contexts (cell lines), baselines, effects and pair
interactions are pooled across contexts (shared value + context deviation with a learned
scale). See :mod:`semimech.models._treatments` for the formula.

Sample sites
------------
baseline : (genes,)
    Control mean on the latent scale (data units for ``normal``, log rate for ``negbin``).
effect_centre, effect_mean, program_scale, program_loadings, program_z,
embedding_scale, embedding_coef, effect_scale, effect_sd, effect_z (effect_dev_z), knockdown_mean, knockdown_sd
    The effect population (``effects="population"``, the default for label designs): a shared mean response, ``effect_programs``
    programs, an optional embedding regression (side information) and per-target deviations, see
    :mod:`semimech.models._effects`. A target never perturbed in training draws its effect from it.
    A gene target's effect on its own gene is a knockdown from its own population (``knockdown_mean``, ``knockdown_sd``;
    ``effect_knockdown=False`` leaves it to the effect population). With ``effect_tails="strength"``
    also ``effect_strength_loc``, ``effect_strength_scale`` () and ``effect_strength_z`` (targets, 1): each
    target's strength. With ``effect_predictive="urn"`` also ``effect_urn_z`` (targets, 1): an unseen
    target's urn draw (which seen target's departure it takes).
    With ``effects="horseshoe"`` (the default for factor designs): ``effect_scale`` (), ``effect_local`` and ``effect_z`` (targets,
    genes), ``effect = effect_scale * effect_local * effect_z`` (sparse, but an unseen target has
    no finite predictive mean on the log scale, so it cannot be predicted).
effect : (targets, genes), deterministic
    Effect of each target on the latent scale (data units or log fold change).
context_sd, context_z, effect_context_sd, effect_context_z
    Context baselines and context deviations of effects (designs with contexts only).
effect_mean_scale, effect_transfer, effect_mean_z, effect_mean_context_z
    Only for a label design with contexts (``effects="population"``, ``effect_transfer="learned"``,
    the default): the mean response of the targets in context ``c`` is ``effect_mean_scale *
    (sqrt(effect_transfer) * effect_mean_z + sqrt(1 - effect_transfer) * effect_mean_context_z[c])``
    (:func:`semimech.models._effects.context_mean_response`) instead of one mean response shared by
    every context (``effect_centre``): how far it transfers, ``effect_transfer`` in (0, 1), is learned
    from how well the seen contexts agree, so a context never seen in training is centred near no
    change when they disagree.
noise_context_sd, noise_context_z, condition_noise
    Only with contexts and ``context_noise`` (the default with the effect population): each context scales
    each gene's noise, see :func:`semimech.measurement.context_noise`.
interaction_scale : (factor_pairs,), interaction_sd : (genes,), pair_z : (target_pairs, genes)
    Pairwise interactions: ``interaction_scale[factor pair] * interaction_sd * unit * pair_z``, times a
    regularised-horseshoe local scale per entry with ``interactions="horseshoe"`` (the default).
pair_local_z : (target_pairs, genes)
    Only with ``interactions="horseshoe"``: the standard-normal draw behind each entry's local scale
    (a half-Cauchy draw, bounded so that the entry's sd is at most ``interaction_slab * unit``).
pair_context_sd, pair_context_z
    Context deviations of pair interactions (designs with contexts only).
higher_scale : (), higher_z : (perturbations, genes)
    Residual of conditions with three or more levels.
mean : (perturbations, genes), deterministic
    Population mean of each perturbation on the data scale (per unit size factor).
noise_sd / concentration, batch_sd, batch_z, y
    Measurement sites, see :mod:`semimech.measurement`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from semimech.errors import DesignError
from semimech.infer.spec import ModelSpec
from semimech import measurement
from semimech.measurement import gene_noise, observe_conditions, to_data_scale
from semimech.models import _effects, _treatments

EFFECTS = ("population", "horseshoe")


def model(data, *, likelihood: str = "normal", effect_prior_scale: float = 0.5, effects: str | None = None,
          effect_programs: int = 2, effect_knockdown: bool = True, effect_tails: str = "normal",
          effect_predictive: str = "gaussian", effect_urn_concentration: float = 1.0,
          effect_deviation: str = "auto", effect_transfer: str = "learned", context_noise: bool | None = None,
          interactions: str = "horseshoe",
          interaction_slab: float = 2.0,
          embedding=None, gene_embedding=None, y=None):
    """The additive perturbation model; see the module docstring for the sites.

    ``likelihood``: ``"normal"`` (Gaussian readouts) or ``"negbin"`` (negative binomial; the design's
    readouts must be counts); ``"normal"`` when the model is called directly, while a fit defaults to
    ``"negbin"`` for a count design and ``"normal"`` otherwise (see :mod:`semimech.measurement`).
    ``effect_prior_scale`` (default 0.5): half-normal scale of the effect, interaction and context scales
    (``effect_scale``, ``program_scale``, ``interaction_scale``, ``effect_context_sd``, ...), in units of
    the gene's control scale (``normal``) or of the log scale (``negbin``).
    ``effects``: ``"population"`` or ``"horseshoe"``; ``None`` (default) chooses ``"population"`` for
    label designs and ``"horseshoe"`` for factor designs (one population across stimuli and
    inhibitors is not a sensible assumption, and the factor-design results were measured with
    the horseshoe).
    ``embedding`` and ``gene_embedding`` (side information) come from
    :func:`semimech.models.target_embedding`; ``effect_programs`` is the number of shared programs of
    the effect population; ``effect_knockdown`` (default True): a gene target's effect on its own
    gene comes from a knockdown population of its own (``knockdown_*`` sites) instead of the
    effect population's deviations; ``effect_tails``: ``"normal"`` (default: a Gaussian
    population) or ``"strength"`` (each target's departure from the shared response times
    its own strength in (0, 1): a scale mixture of near-null targets and strong hits, so an unseen
    target's intervals are narrow in the centre and have the tails of the screen's hits; better
    intervals, worse points under a log link, see :mod:`semimech.models._effects`).
    ``effect_predictive``: how an unseen target is answered: ``"gaussian"`` (default: a fresh
    draw from the Gaussian population) or ``"urn"`` (the Polya-urn / Dirichlet-process predictive:
    with probability ``n / (n + effect_urn_concentration)`` the departure of one of the ``n`` seen
    targets, jointly across genes, else a Gaussian draw; it assumes the unseen target is drawn like
    the seen ones; the fit is unchanged, see :mod:`semimech.models._effects`).
    ``effect_deviation``: the target deviations' geometry, ``"noncentred"`` or ``"centred"`` (the same
    model; centred, mean-field SVI keeps the population's spread and unseen targets' intervals their
    coverage on simulated screens, see ``effect_dev_z`` in :mod:`semimech.models._effects`); ``"auto"``
    (default): centred when fitted by SVI with a distribution guide; non-centred by NUTS and for
    ``guide="map"`` (``fit.options`` records the choice).
    ``effect_transfer`` (designs with contexts and the effect population): ``"learned"`` (default:
    the mean response's correlation between contexts is learned, see the sites above) or ``"full"``
    (one mean response shared by every context, as before; on McFaline-Figueroa 2023's unseen cell
    line it carried the training lines' response over and lost to "no change").
    ``context_noise``: each context scales each gene's noise (``None``: on with the effect
    population, the default for label designs; off with horseshoe effects, the default for
    factor designs, whose results were measured without it).
    ``interactions``: ``"horseshoe"`` (default): pair interactions are sparse per gene (a
    regularised-horseshoe local scale per pair x gene entry, slab ``interaction_slab`` in units of
    the gene's control scale); ``"normal"``: Gaussian entries with the pair's and gene's scales.
    """
    if effect_transfer not in _effects.TRANSFERS:
        raise DesignError(f"effect_transfer must be one of {_effects.TRANSFERS}, got {effect_transfer!r}.")
    n_genes = data["n_genes"]
    tm = jnp.asarray(data["target_matrix"])
    n_pert, n_targets = tm.shape
    genes = numpyro.plate("genes", n_genes, dim=-1)
    unit = jnp.asarray(data["baseline_scale"]) if likelihood == "normal" else 1.0

    with genes:
        baseline = numpyro.sample("baseline", dist.Normal(jnp.asarray(data["baseline_loc"]), 2.0 * unit))
        noise = gene_noise(data, likelihood=likelihood)
    if effects is None:
        effects = "population" if tuple(data.get("factor_names", ("perturbation",))) == ("perturbation",) else "horseshoe"
    if effects not in EFFECTS:
        raise DesignError(f"effects must be one of {EFFECTS}, got {effects!r}.")
    ctx_mean = None
    if effects == "population":
        ctx_mean = _effects.context_mean_response(data, genes, prior_scale=effect_prior_scale) \
            if effect_transfer == "learned" else None
        effect = _effects.target_effects(data, genes, unit=unit, prior_scale=effect_prior_scale,
                                         n_programs=effect_programs, embedding=embedding, gene_embedding=gene_embedding,
                                         baseline=baseline, own_gene=effect_knockdown, tails=effect_tails,
                                         predictive=effect_predictive, urn_concentration=effect_urn_concentration,
                                         mean=None if ctx_mean is None else ctx_mean[0], deviation=effect_deviation)
    else:
        tau = numpyro.sample("effect_scale", dist.HalfNormal(effect_prior_scale))
    with numpyro.plate("targets", n_targets, dim=-2), genes:
        if effects == "horseshoe":
            local = numpyro.sample("effect_local", dist.HalfCauchy(1.0))
            effect = tau * local * numpyro.sample("effect_z", dist.Normal(0.0, 1.0)) * unit
        numpyro.deterministic("effect", effect)

    base = _treatments.context_baseline(baseline, data, genes, unit=unit)[jnp.asarray(data["perturbation_context"])]
    ctx_eff = _treatments.context_effects(data, genes, unit=unit, prior_scale=effect_prior_scale)
    if ctx_mean is not None:  # each target of a condition carries its context's own part of the mean response
        n_levels = jnp.sum(tm, axis=1)[:, None]
        ctx_eff = ctx_eff + n_levels * unit * ctx_mean[1][jnp.asarray(data["perturbation_context"])]
    interaction = _treatments.interactions(data, genes, unit=unit, prior_scale=effect_prior_scale, tails=interactions,
                                           slab=interaction_slab)
    with numpyro.plate("perturbations", n_pert, dim=-2), genes:
        loc_p = base + tm @ effect + ctx_eff + interaction
        numpyro.deterministic("mean", to_data_scale(loc_p, likelihood))

    if context_noise is None:  # with the effect population (label designs); factor designs as measured before
        context_noise = effects == "population"
    if context_noise:
        noise = measurement.context_noise(noise, data, likelihood=likelihood)
    observe_conditions(loc_p, noise, data, genes, likelihood=likelihood, y=y)


SPEC = ModelSpec(
    name="additive",
    model=model,
    assumes="effects add on the latent (log) scale (label designs: drawn from a learned population of target effects, "
    "so an unseen target draws from it); combinations deviate by pairwise interactions (one per pair of levels, "
    "scale learned per pair of factors) and higher-order residuals; contexts pooled; no dynamics, one attractor "
    "per perturbation",
    predicts_unseen_targets=True,
    side_information=_effects.has_embedding,
    prediction_sites=_effects.prediction_sites,
    resolve_options=_effects.settle_deviation,
    prepare_options=_effects.check_embedding,
)
