"""Production-decay model: each condition is a fixed point of saturating, regulated production.

Each gene's dimensionless state ``u`` (``loc = floor + scale * u``, see
:mod:`semimech.models._network`) follows

    du/dt = alpha * s_p * sigmoid(W u + b) - u        (decay rate 1 sets the time unit),

with ``b = h - W u_ctrl`` and ``alpha = u_ctrl / sigmoid(h)`` so that the control state
``u_ctrl`` is a fixed point by construction; ``h`` is each gene's operating point on its
sigmoid (negative: far from saturation, room to rise). A perturbation scales production,
``s_p = exp(log_s)`` (a target gene by its efficacy, a non-gene target directly on every gene,
combinations multiply). One steady-state solve per condition — never per cell — by
:func:`semimech.dynamics.steady_states` (Newton from the control state, implicit derivatives),
vmapped over conditions. A draw where any solve fails is rejected with a ``-inf`` factor while
the likelihood stays finite (``where(ok, u, u_ctrl)``); ``ok_fraction`` records the fraction of
solved conditions. Non-additive by construction: the sigmoid saturates and ``W`` feeds edits
back. Unseen target genes are predicted through ``W`` with a fresh efficacy draw.

Sample sites
------------
control_state : (genes,)
    Dimensionless control state ``u_ctrl`` (about 1).
operating_point : (genes,)
    ``h``: the control's position on the production sigmoid (logit of the fraction of maximal
    production).
alpha, bias : (genes,), deterministic
    Maximal production (state/time) and sigmoid bias ``b``.
w_scale, w_local, w_z, W
    Regulation ``W[regulator, gene]`` (1/state), as in :mod:`semimech.models.linear_steady_state`.
efficacy_loc, efficacy_sd, direct_scale, direct_sd, target_z
    The edits, see :func:`semimech.models._network.target_log_scales`.
log_scale : (perturbations, genes), deterministic
    Log production scale of each condition.
context_log_sd : (), context_log_z : (contexts, genes)
    Designs with contexts only: each context's log production scale of every gene, pooled
    (:func:`semimech.models._network.context_log_scales`).
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

import functools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from semimech.dynamics import Intervention, ProductionDecayParams, production_decay_field, steady_states
from semimech.infer.spec import ModelSpec
from semimech.measurement import gene_noise
from semimech.models import _effects
from semimech.models import _network as net


@functools.partial(jax.jit, static_argnames=("fallback", "max_steps"))
def solve_conditions(W, b, alpha, log_s, x0, *, fallback: bool = False, max_steps: int = 32):
    """Fixed point of ``alpha * s * sigmoid(W u + b) - u`` for each row of ``log_s`` (vmapped).

    Newton from ``x0`` (the control state); with ``fallback`` the ODE is integrated where Newton
    fails (slower to compile). Jitted so that NumPyro's eager set-up runs are cheap.
    """
    params = ProductionDecayParams(W=W, b=b, alpha=alpha, gamma=jnp.ones_like(alpha))
    return steady_states(production_decay_field, params, interventions=Intervention.scale(jnp.exp(log_s)), x0=x0,
                         fallback=fallback, max_steps=max_steps)


def system(draw: dict):
    """The dynamics of one draw: ``(field, params, x0, log_scale)`` for :mod:`semimech.checks`."""
    alpha = jnp.asarray(draw["alpha"])
    params = ProductionDecayParams(W=jnp.asarray(draw["W"]).T, b=jnp.asarray(draw["bias"]), alpha=alpha,
                                   gamma=jnp.ones_like(alpha))
    return production_decay_field, params, jnp.asarray(draw["control_state"]), jnp.asarray(draw["log_scale"])


@net.with_shared_options
def model(data, *, likelihood: str = "normal", w_prior: str = "horseshoe", w_scale: float = 0.3, network=None,
          network_mode: str = "mask", fallback: bool = False, y=None, **shared):
    """The production-decay model; sites: the module docstring.

    The options every steady-state model shares (``efficacy_prior_scale``, ``direct_prior_scale``,
    ``variant_of``, ``shared_gene_index``, ``direct_mask``, ``residual``, ``embedding``, ``gene_embedding``,
    ``effect_programs``, ``effect_deviation``): :class:`semimech.models._network.SharedOptions`.
    ``likelihood``: ``"normal"`` or ``"negbin"``, as in :func:`semimech.models.additive.model`.
    ``w_prior``, ``w_scale`` (default 0.3), ``network_mode``: as
    :func:`semimech.models.linear_steady_state.model`.
    ``fallback=True`` integrates the ODE where Newton fails (robust, slower to compile). ``network``: as
    :func:`semimech.models.linear_steady_state.model` (a matrix, or an edges table / ``.sif`` path).
    """
    opts = net.shared_options(shared)
    n = data["n_genes"]
    genes = numpyro.plate("genes", n, dim=-1)
    unit = net.unit_scale(data, likelihood)
    floor, scale = net.state_map(data, likelihood)
    with genes:
        noise = gene_noise(data, likelihood=likelihood)
        h = numpyro.sample("operating_point", dist.Normal(-1.0, 1.5))
    u_ctrl = net.control_state(genes)
    W = net.network_weights(data, n=n, regulators_plate=numpyro.plate("regulators", n, dim=-2), genes_plate=genes,
                            w_prior=w_prior, w_scale=w_scale, network=network, network_mode=network_mode)
    alpha = u_ctrl / jax.nn.sigmoid(h)
    b = h - W @ u_ctrl
    with genes:
        numpyro.deterministic("alpha", alpha)
        numpyro.deterministic("bias", b)
    log_s = net.gene_log_scales(data, genes, opts)
    net.record_scales(log_s, genes)
    ss = solve_conditions(W, b, alpha, log_s, u_ctrl, fallback=fallback)
    loc_p = floor + scale * net.solved(ss, u_ctrl, data)
    net.observe(loc_p, noise, data, genes, opts, likelihood=likelihood, y=y, unit=unit)


SPEC = ModelSpec(
    name="production_decay",
    model=model,
    assumes="each condition is the stable fixed point of du/dt = alpha s_p sigmoid(W u + b) - u; edits scale "
    "production and propagate through W; combinations compose edits (non-additive through saturation and feedback)",
    predicts_unseen_targets=True,
    side_information=_effects.has_embedding,
    prediction_sites=_effects.prediction_sites,
    resolve_options=net.resolve_options,
    prepare_options=net.prepare_options,
)
