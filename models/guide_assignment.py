"""Latent guide assignment with escapers for CRISPR screens (MOI possibly above 1).

Generative story, per cell ``i``:

1. Guide ``k`` is present (``d_ik = 1``) with probability ``rho``, independently of other
   guides (so a cell may carry zero, one or several guides). Its UMI count is
   ``c_ik ~ NB(m1_k, phi1)`` if present and ``NB(m0_k, phi0)`` (ambient background) if not,
   with ``m1_k = m0_k * exp(softplus(gap_k)) > m0_k``.
2. A present guide of target ``t`` edits the cell with probability ``e_k``, its efficacy;
   ``logit e_k = logit_mu_t + sd * z_k`` (hierarchical around a per-target mean). A cell is
   perturbed at ``t`` if any of its present guides of ``t`` edits it; a cell carrying guides
   that all fail is an *escaper* and is modelled exactly like a control cell.
3. Expression of the modelled genes: ``y_ig ~ NB(s_i exp(b_g + batch_{j(i),g} +
   sum_t z_it beta_tg), phi_g)`` (or Poisson / ZINB, :mod:`semimech.measurement.counts`).

Marginalisation (no discrete latents reach the optimiser). Because guides are present
independently, ``p(c_i, y_i) = p(c_i) p(y_i | c_i)`` with ``p(c_i) = prod_k [(1 - rho) NB0 +
rho NB1]`` exactly, and given the guide counts the targets are perturbed independently with
``q_it = 1 - prod_{k in t} (1 - r_ik e_k)``, ``r_ik = P(d_ik = 1 | c_ik)``. The sum over the
``2^T`` perturbation states is truncated to *at most one perturbed target* among the cell's
``M`` candidate targets (those of its ``M`` most-counted targeting guides, default 2) plus
"unperturbed", with weights renormalised over these ``M + 1`` states: a logsumexp of ``M + 1``
expression log-likelihoods per cell. For a cell with one dominant guide (low MOI) this is the
exact two-component perturbed/escaper mixture. For MOI > 1 it drops double-perturbation states
(a cell edited at two targets is explained by the better-fitting single one) — adequate when
double edits are rare, and an underestimate of combined effects otherwise.

Sample sites
------------
baseline : (genes,)
    Log expression rate per unit size factor of unperturbed cells (molecules).
concentration : (genes,)
    NB concentration ``phi_g`` (negbin, zinb). ``gate`` : (genes,) ZINB technical zero prob.
batch_sd, batch_z, batch_effect : (), (batches, genes), (batches, genes)
    Hierarchical batch (replicate) offsets on the log scale; ``batch_effect = batch_sd * batch_z``.
effect_scale, effect_local, effect_z, effect : (), (targets, genes) x 3
    Horseshoe-shrunk knockout effects (log fold change) ``effect = scale * local * z``.
efficacy_target_logit : (targets,)
    ``logit_mu_t``; ``efficacy_target`` (targets,) is its sigmoid.
efficacy_sd, efficacy_z, efficacy : (), (guides,), (guides,)
    Per-guide efficacy ``e_k`` (0 for non-targeting guides).
escaper_fraction : (targets,)
    ``1 - mean_k e_k`` over the target's guides: the share of cells carrying one of its guides
    that are not edited (guides weighted equally).
guide_bg_log_mean, guide_fg_log_gap : (guides,)
    ``log m0_k`` and ``gap_k`` of the guide-count mixture (UMIs).
presence_prob, guide_bg_concentration, guide_fg_concentration : ()
    ``rho``, ``phi0``, ``phi1``.
guide_counts, y : (cells,)
    Factors: marginal log-likelihoods of guide counts and of expression given guide counts.

Negative control on real data: ``fit_guides(..., placebo=True)`` gives the non-targeting
guides a target of their own (``PLACEBO``); its "efficacy" is what the escaper mixture finds
without any editing (natural heterogeneity), the floor against which other targets' efficacies
are read.

Fit with :func:`fit_guides` (SVI over minibatches of cells; :func:`semimech.fit_svi` does not
feed sparse minibatches), then :func:`perturbation_probabilities` and :func:`effect_table`.
"""

from __future__ import annotations

from semimech.infer.spec import ModelSpec
from semimech.models._guide_core import cell_terms, derive, model
from semimech.models._guide_fit import PLACEBO, fit_guides, perturbation_probabilities
from semimech.models._guide_sim import simulate_guide_screen
from semimech.models._guide_tables import (
    batch_effect_table,
    effect_table,
    efficacy_table,
    escaper_table,
)

SPEC = ModelSpec(
    name="guide_assignment",
    model=model,
    assumes="guides are present independently (two-component UMI mixture); a present guide edits with its "
    "efficacy, otherwise the cell is an escaper that looks like a control; effects add on the log scale; "
    "at most one perturbed target per cell (candidate truncation)",
    mean_site="effect",
    default_options={"likelihood": "negbin"},
)

__all__ = ["PLACEBO", "SPEC", "batch_effect_table", "cell_terms", "derive", "effect_table", "efficacy_table", "escaper_table",
           "fit_guides", "model", "perturbation_probabilities", "simulate_guide_screen"]
