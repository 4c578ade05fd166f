"""Latent programs: production-decay dynamics in a K-dimensional program space with gene loadings.

The state is ``K`` program activities ``u`` (control ``u = 1``), following

    du/dt = alpha * s_p * sigmoid(W u + b) - u,   W = w_scale * R Z^T / sqrt(genes),

where ``Z`` (programs x genes) are the standardised gene loadings and ``R`` (programs x genes)
each program's sensitivity to the genes: programs regulate each other through the genes they
load on, so every parameter lives on a ``programs x genes`` grid and the cost of a solve is
``K^3``, not ``genes^3`` — thousands of genes are feasible. ``b = h - W 1`` and
``alpha = 1 / sigmoid(h)`` make the control a fixed point (``h`` a shared operating point).
Gene means are ``baseline + loading_scale * unit * (u_p - 1) @ Z`` plus the edited gene's own
change. An edit of gene ``g`` with log efficacy ``e`` scales program ``k``'s production by
``exp(e * Z[k, g])`` — it acts through its loading — and its own production as in
:mod:`semimech.models.production_decay`; a non-gene target's direct gene-level edit is projected
onto the programs by the loadings (``/ sqrt(genes)``). One Newton solve per condition (vmapped),
failed draws rejected (``ok_fraction``).

Sample sites
------------
baseline : (genes,)
    Control mean on the latent scale.
operating_point : ()
    ``h``: the programs' position on the production sigmoid.
loading_scale : (), loadings_z : (programs, genes)
    Gene loadings ``Z`` (standardised) and their scale (latent units per program unit).
w_scale : (), regulation_z : (programs, genes)
    Program regulation ``R`` and its scale.
efficacy_loc, efficacy_sd, direct_scale, direct_sd, target_z
    The edits, see :func:`semimech.models._network.target_log_scales`.
context_sd : (), context_z : (contexts, genes)
    Designs with contexts only: each context's baseline, pooled (``baseline + context_sd * unit * context_z``).
log_scale : (perturbations, genes), deterministic
    Gene-level log production scale of each condition (before projection onto programs).
shared_z, guide_sd, context_sd
    Only with ``variant_of``/``shared_gene_index``: the effect shared by a target's variants (guides
    of a gene, one drug across contexts) and their spread, see
    :func:`semimech.models._network.target_log_scales`.
effect_mean, program_scale, program_loadings, program_z, embedding_scale, embedding_coef, effect_scale,
effect_sd, effect_z
    The misfit of the dynamics (``residual="population"``, the default): a per-target effect from a learned
    population (:mod:`semimech.models._effects`; ``effect_programs``, ``embedding``, ``effect_deviation``), so an
    unseen target gets the response the dynamics do not explain from it, and a combination its targets' misfits summed
    (see :func:`semimech.models._network.residual`).
residual_scale, residual_sd, residual_z
    With ``residual=True`` instead: a fresh misfit per perturbed condition (the default until 2026-12-06;
    an unseen combination then gets none of its targets' misfits).
ok_fraction : (), deterministic
    Fraction of conditions whose steady-state solve converged.
mean : (perturbations, genes), deterministic
    Population mean per condition on the data scale.
noise_sd / concentration, batch_sd, batch_z, y
    Measurement sites, see :mod:`semimech.measurement`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from semimech.dynamics import ProductionDecayParams, production_decay_field
from semimech.infer.spec import ModelSpec
from semimech.measurement import gene_noise
from semimech.models import _effects
from semimech.models import _network as net
from semimech.models._treatments import context_baseline
from semimech.models.production_decay import solve_conditions

SYSTEM_SITES = ("w_scale", "regulation_z", "loadings_z", "operating_point", "log_scale")


def program_system(w_scale, R, Z, h):
    """``(W, b, alpha)`` of the program dynamics from the sites."""
    k, g = Z.shape
    W = w_scale * (R @ Z.T) / jnp.sqrt(g)
    ones = jnp.ones((k,), W.dtype)
    return W, h - W @ ones, ones / jax.nn.sigmoid(h) * ones


def program_log_scales(own, direct, Z):
    """Project gene-level edits ``(conditions, genes)`` onto the programs through the loadings."""
    return own @ Z.T + direct @ Z.T / jnp.sqrt(Z.shape[1])


def system(draw: dict):
    """The dynamics of one draw: ``(field, params, x0, log_scale)`` for :mod:`semimech.checks`.

    (The recorded ``log_scale`` mixes own and direct edits; it is projected as an own edit.)
    """
    Z = jnp.asarray(draw["loadings_z"])
    W, b, alpha = program_system(jnp.asarray(draw["w_scale"]), jnp.asarray(draw["regulation_z"]), Z,
                                 jnp.asarray(draw["operating_point"]))
    params = ProductionDecayParams(W=W, b=b, alpha=alpha, gamma=jnp.ones_like(alpha))
    ls = jnp.asarray(draw["log_scale"])
    return production_decay_field, params, jnp.ones_like(alpha), program_log_scales(ls, jnp.zeros_like(ls), Z)


@net.with_shared_options
def model(data, *, likelihood: str = "normal", n_programs: int = 8, w_scale: float = 0.5, fallback: bool = False,
          y=None, **shared):
    """The latent-programs model; sites: the module docstring.

    The options every steady-state model shares (``efficacy_prior_scale``, ``direct_prior_scale``,
    ``variant_of``, ``shared_gene_index``, ``direct_mask``, ``residual``, ``embedding``, ``gene_embedding``,
    ``effect_programs``, ``effect_deviation``): :class:`semimech.models._network.SharedOptions`.
    ``likelihood``: ``"normal"`` or ``"negbin"``, as in :func:`semimech.models.additive.model`.
    ``n_programs`` (default 8): ``K``, the number of programs; ``w_scale`` (default 0.5): half-normal scale
    of the regulation's scale (site ``w_scale``); ``fallback=True``: integrate the ODE where Newton fails
    (as :func:`semimech.models.production_decay.model`).
    """
    opts = net.shared_options(shared)
    n = data["n_genes"]
    genes = numpyro.plate("genes", n, dim=-1)
    programs = numpyro.plate("programs", n_programs, dim=-2)
    unit = net.unit_scale(data, likelihood)
    with genes:
        baseline = numpyro.sample("baseline", dist.Normal(jnp.asarray(data["baseline_loc"]), 2.0 * unit))
        noise = gene_noise(data, likelihood=likelihood)
    h = numpyro.sample("operating_point", dist.Normal(-1.0, 1.0))
    lscale = numpyro.sample("loading_scale", dist.HalfNormal(1.0))
    ws = numpyro.sample("w_scale", dist.HalfNormal(w_scale))
    with programs, genes:
        Z = numpyro.sample("loadings_z", dist.Normal(0.0, 1.0))
        R = numpyro.sample("regulation_z", dist.Normal(0.0, 1.0))
    W, b, alpha = program_system(ws, R, Z, h)
    own_t, direct_t = net.target_log_scales(data, genes, opts, split=True)
    tm = jnp.asarray(data["target_matrix"])
    own, direct = tm @ own_t, tm @ direct_t
    net.record_scales(own + direct, genes)
    ones = jnp.ones((n_programs,))
    ss = solve_conditions(W, b, alpha, program_log_scales(own, direct, Z), ones, fallback=fallback)
    u = net.solved(ss, ones, data)
    # the edited gene's own production change, as in the gene-level models (u_gene = s * 1); with contexts,
    # each context shifts the baseline (pooled across contexts), programs and edits are shared
    loc_p = context_baseline(baseline, data, genes, unit=unit)[jnp.asarray(data["perturbation_context"])] + lscale * unit * ((u - 1.0) @ Z) + 3.0 * unit * jnp.expm1(own)
    net.observe(loc_p, noise, data, genes, opts, likelihood=likelihood, y=y, unit=unit)


SPEC = ModelSpec(
    name="latent_programs",
    model=model,
    assumes="each condition is the fixed point of production-decay dynamics of K latent programs with gene "
    "loadings; a gene's edit acts through its loadings (and on itself); combinations compose edits",
    predicts_unseen_targets=True,
    side_information=_effects.has_embedding,
    prediction_sites=_effects.prediction_sites,
    resolve_options=net.resolve_options,
    prepare_options=net.prepare_options,
)
