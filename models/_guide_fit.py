"""SVI over sparse minibatches of cells for the guide-assignment model, and per-cell posteriors."""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import scipy.sparse as sp
from numpyro.infer import SVI, Predictive, Trace_ELBO

from semimech._rng import as_key
from semimech.data.design import Design
from semimech.data.guides import GuideDesign
from semimech.errors import DesignError
from semimech.infer import _args, _arviz
from semimech.infer.fit import Fit, _check_losses
from semimech.infer.minibatch import batch_aware_minibatches, uniform_minibatches
from semimech.measurement.counts import PaddedRows, check_count_likelihood, padded_capacity, padded_rows
from semimech.models._guide_core import cell_terms, derive, model
from semimech.models._guide_svi import latent_sites, make_guide, sample_posterior

SAMPLERS = ("uniform", "batch_aware")
_TOP_LEVEL_DIMS = {"effect": ("targets", "genes"), "batch_effect": ("batches", "genes"), "efficacy": ("guides",),
                   "efficacy_target": ("targets",), "escaper_fraction": ("targets",),
                   "efficacy_target_logit": ("targets",)}


class Prepared(NamedTuple):
    """Everything the minibatch loop needs, computed once (no dense count matrix)."""

    data: dict
    y: sp.csr_matrix
    guide_counts: sp.csr_matrix
    candidates: np.ndarray
    size_factors: np.ndarray
    batch_index: np.ndarray
    is_control: np.ndarray
    genes: tuple
    batches: tuple | None
    targets: tuple


PLACEBO = "non-targeting (placebo)"


def prepare(design: Design, guides: GuideDesign, *, genes=None, num_candidates: int = 2,
            placebo: bool = False) -> Prepared:
    """Check that ``design`` and ``guides`` describe the same cells and build the model data.

    With ``placebo``, non-targeting guides get a target of their own (:data:`PLACEBO`), with an
    efficacy and effects like any other: a negative control fitted alongside the real targets.
    """
    if not isinstance(design, Design) or not isinstance(guides, GuideDesign):
        raise DesignError("fit_guides needs a semimech.Design (expression) and a GuideDesign (guide counts).")
    if design.y is None or not design.is_counts:
        raise DesignError("the guide-assignment model needs raw expression counts: build the Design from UMI counts.")
    if tuple(design.obs_names) != tuple(guides.obs_names):
        raise DesignError("the Design and the GuideDesign list different cells (or a different order); build both "
                          "from the same AnnData.")
    names = tuple(design.genes) if genes is None else tuple(str(g) for g in genes)
    col = {g: i for i, g in enumerate(design.genes)}
    missing = [g for g in names if g not in col]
    if missing:
        raise DesignError(f"genes {missing[:10]} are not genes of the design; choose from design.genes.")
    y = design.y if sp.issparse(design.y) else sp.csr_matrix(design.y)
    y = sp.csr_matrix(y[:, [col[g] for g in names]], dtype=np.float32)
    sf = np.asarray(design.size_factors, dtype=np.float32)
    if design.batch_index is not None:
        bidx, batches = np.asarray(design.batch_index), design.batches
    elif guides.batch_index is not None:
        bidx, batches = np.asarray(guides.batch_index), guides.batches
    else:
        bidx, batches = np.zeros(design.n_obs, np.int32), None
    ctrl = guides.is_control_cell()
    base_rows = ctrl if ctrl.any() else np.ones(design.n_obs, bool)
    rate = np.asarray((sp.diags(1.0 / sf[base_rows]) @ y[base_rows]).mean(0)).ravel()
    bg_loc, gap_loc = _guide_init(guides)
    targets = tuple(guides.targets) + ((PLACEBO,) if placebo else ())
    tix = np.asarray(guides.guide_target_index)
    if placebo:
        if not guides.is_control_guide.any():
            raise DesignError("placebo=True needs non-targeting guides, and the guide table has none.")
        tix = np.where(tix < 0, len(guides.targets), tix)
    onehot = np.zeros((guides.n_guides, len(targets)), np.float32)
    onehot[tix >= 0, tix[tix >= 0]] = 1.0
    data = {"n_obs": design.n_obs, "n_genes": len(names), "n_guides": guides.n_guides,
            "n_targets": len(targets), "n_batches": 0 if batches is None else len(batches),
            "baseline_loc": np.log(rate + 1e-3).astype(np.float32), "guide_bg_loc": bg_loc, "guide_gap_loc": gap_loc,
            "guide_target_index": tix.astype(np.int32), "guide_target_onehot": onehot}
    cand = guides.candidate_targets(num_candidates, guide_target_index=tix)
    return Prepared(data, y, guides.counts, cand, sf, bidx.astype(np.int32), ctrl, names, batches, targets)


def _guide_init(guides: GuideDesign) -> tuple[np.ndarray, np.ndarray]:
    """Empirical starting points: log background mean and the log gap to the present mean."""
    c = guides.counts.tocsc()
    top, _ = guides.top_guide()
    n = guides.n_cells
    bg, gap = np.zeros(guides.n_guides, np.float32), np.zeros(guides.n_guides, np.float32)
    for k in range(guides.n_guides):
        col = np.zeros(n, np.float32)
        col[c.indices[c.indptr[k]:c.indptr[k + 1]]] = c.data[c.indptr[k]:c.indptr[k + 1]]
        on = top == k
        fg = np.median(col[on]) if on.any() else 50.0
        m0 = col[~on].mean() if (~on).any() else 0.1
        bg[k] = np.log(m0 + 0.05)
        d = max(np.log(max(fg, 1.0)) - bg[k], 0.5)
        gap[k] = d + np.log(-np.expm1(-d))  # inverse softplus
    return bg, gap


def minibatch(prep: Prepared, index, weight, *, capacity: tuple[int, int]) -> tuple[dict, PaddedRows]:
    """One minibatch as arrays: expression and guide counts as padded sparse rows.

    ``capacity``: padded lengths for the expression and the guide counts
    (:func:`capacities`), so that every minibatch of a size shares one compiled shape.
    """
    capacity, guide_capacity = capacity
    index = np.asarray(index)
    cells = {"index": index.astype(np.int32), "weight": np.asarray(weight, np.float32),
             "guide_counts": padded_rows(prep.guide_counts, index, capacity=guide_capacity),
             "candidates": prep.candidates[index], "size_factors": prep.size_factors[index],
             "batch_index": prep.batch_index[index]}
    return cells, padded_rows(prep.y, index, capacity=capacity)


def capacities(prep: Prepared, batch_size: int) -> tuple[int, int]:
    """Padded non-zero capacities (expression, guide counts) for minibatches of ``batch_size``."""
    return padded_capacity(prep.y, batch_size), padded_capacity(prep.guide_counts, batch_size)


def _init_values(data) -> dict:
    K, T, G = data["n_guides"], data["n_targets"], data["n_genes"]
    return {"baseline": jnp.asarray(data["baseline_loc"]), "guide_bg_log_mean": jnp.asarray(data["guide_bg_loc"]),
            "guide_fg_log_gap": jnp.asarray(data["guide_gap_loc"]), "effect_z": jnp.zeros((T, G)),
            "effect_local": jnp.ones((T, G)), "efficacy_z": jnp.zeros(K), "presence_prob": jnp.asarray(0.05),
            "guide_bg_concentration": jnp.asarray(0.5), "guide_fg_concentration": jnp.asarray(1.0),
            "concentration": jnp.full(G, 3.0), "effect_scale": jnp.asarray(0.3), "gate": jnp.full(G, 0.05),
            "efficacy_target_logit": jnp.zeros((T, 1)), "efficacy_sd": jnp.asarray(0.5), "batch_sd": jnp.asarray(0.2),
            "batch_z": jnp.zeros((max(data["n_batches"], 1), G))}


def fit_guides(design: Design, guides: GuideDesign, *, rng_key, genes=None, num_steps: int = 2000,
               batch_size: int = 512, sampler: str = "uniform", control_fraction: float = 0.25,
               learning_rate: float = 0.01, num_samples: int = 200, num_candidates: int = 2, placebo: bool = False,
               likelihood: str = "negbin", effect_prior_scale: float = 0.5,
               efficacy_prior: tuple[float, float] = (1.0, 1.5)) -> Fit:
    """Fit the guide-assignment model by SVI over minibatches of cells (mean-field normal guide).

    Parameters
    ----------
    design
        Expression counts, size factors and batches (perturbation labels are not used).
    guides
        Guide UMI counts and the guide -> target table, for the same cells in the same order.
    rng_key
        Int seed or JAX key.
    genes
        Genes to model (default all of ``design.genes``).
    num_steps, batch_size, learning_rate
        Adam steps (gradient-clipped), cells per minibatch, step size.
    sampler
        ``"uniform"`` or ``"batch_aware"`` (minibatches within one batch, with its controls,
        :func:`semimech.infer.minibatch.batch_aware_minibatches`).
    control_fraction
        With ``sampler="batch_aware"``: the share of each minibatch given to the batch's control cells
        (0 < f < 1; default 0.25). Not used by the uniform sampler.
    num_samples
        Posterior draws kept.
    num_candidates
        ``M``: candidate targets per cell (see the module docstring of ``guide_assignment``).
    placebo
        Give non-targeting guides a placebo target (:data:`PLACEBO`) with its own efficacy and
        effects: a negative control. A placebo "efficacy" well above 0 means the mixture finds
        a subpopulation among control cells too, so similar efficacies of other targets are
        natural heterogeneity, not editing.
    likelihood
        ``"negbin"``, ``"zinb"`` or ``"poisson"`` for expression.
    effect_prior_scale
        Half-normal scale of the global scale of the horseshoe knockout effects (site ``effect_scale``,
        log fold change; default 0.5).
    efficacy_prior
        ``(location, scale)`` of the normal prior of each target's mean efficacy logit (site
        ``efficacy_target_logit``; default ``(1.0, 1.5)``); the scale must be positive.

    Returns
    -------
    A :class:`semimech.Fit` whose ``options`` record how to rebuild minibatches and whose
    ``idata`` has dims ``genes``, ``targets``, ``guides``, ``batches``.
    """
    check_count_likelihood(likelihood)
    num_steps = _args.count("num_steps", num_steps, what="Adam steps")
    batch_size = _args.count("batch_size", batch_size, what="cells per minibatch")
    learning_rate = _args.rate("learning_rate", learning_rate)
    num_samples = _args.count("num_samples", num_samples, what="posterior draws")
    num_candidates = _args.count("num_candidates", num_candidates, what="candidate targets per cell")
    effect_prior_scale = _args.number("effect_prior_scale", effect_prior_scale, error=DesignError)
    try:
        loc, scale = (float(v) for v in efficacy_prior)
    except (TypeError, ValueError):
        loc = scale = float("nan")
    if not (np.isfinite(loc) and np.isfinite(scale) and scale > 0):
        raise DesignError("efficacy_prior must be (location, scale) of the efficacy logits' normal prior, finite, "
                          f"with scale > 0; got {efficacy_prior!r}.")
    if sampler not in SAMPLERS:
        raise DesignError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    prep = prepare(design, guides, genes=genes, num_candidates=num_candidates, placebo=placebo)
    n = prep.data["n_obs"]
    bsz = min(int(batch_size), n)
    k_fit, k_batch, k_draw, k_det = jax.random.split(as_key(rng_key), 4)
    if sampler == "batch_aware":
        if prep.batches is None:
            raise DesignError("sampler='batch_aware' needs batches: pass batch_key= to the Design or GuideDesign.")
        stream = batch_aware_minibatches(prep.batch_index, prep.is_control, batch_size=bsz, rng_key=k_batch,
                                         control_fraction=control_fraction)
    else:
        stream = uniform_minibatches(n, batch_size=bsz, rng_key=k_batch)
    capacity = capacities(prep, bsz)
    opts = {"likelihood": likelihood, "effect_prior_scale": effect_prior_scale, "efficacy_prior": tuple(efficacy_prior)}
    mdl = functools.partial(model, prep.data, **opts)
    latents, dims = latent_sites(mdl)  # global sites only: without cells the model stops before the plate
    guide = make_guide(latents, _init_values(prep.data))
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(learning_rate))
    svi = SVI(mdl, guide, optim, Trace_ELBO())
    state = jax.jit(lambda key: svi.init(key, cells=None, y=None))(k_fit)
    update = jax.jit(svi.stable_update)  # a step with a non-finite loss or gradient leaves the parameters as they were
    trace = []
    t0 = time.perf_counter()
    for step in range(int(num_steps)):
        cells, y = minibatch(prep, *next(stream), capacity=capacity)
        state, loss = update(state, cells=cells, y=y)
        trace.append(loss)
        if step == 0:  # the first call compiles: time the loop from the second step on
            jax.block_until_ready(loss)
            t0 = time.perf_counter()
    losses = np.asarray(jax.device_get(trace), dtype=np.float64) / n  # negative ELBO per cell
    seconds = time.perf_counter() - t0
    _check_losses(losses)
    skipped = int((~np.isfinite(losses)).sum())
    params = svi.get_params(state)
    post = sample_posterior(k_draw, params, latents, int(num_samples))
    det = ["effect", "efficacy", "efficacy_target", "escaper_fraction"] + (["batch_effect"] if prep.batches else [])
    pred = jax.jit(lambda key, s: Predictive(mdl, posterior_samples=s, return_sites=det)(key))
    post.update({k: np.asarray(v) for k, v in pred(k_det, post).items()})
    post["efficacy_target_logit"] = post["efficacy_target_logit"][..., 0]
    dims = {**dims, **_TOP_LEVEL_DIMS}
    dims = {k: v for k, v in dims.items() if k in post}
    samples = {k: v[None] for k, v in post.items()}
    coords = {"genes": prep.genes, "targets": prep.targets, "guides": guides.guides}
    if prep.batches is not None:
        coords["batches"] = prep.batches
    idata = _arviz.to_datatree(samples, dims, coords, attrs={"posterior": {"model": "guide_assignment", "method": "svi"}})
    from semimech.models.guide_assignment import SPEC

    options = {**opts, "genes": prep.genes, "targets": prep.targets, "guides": guides.guides, "placebo": placebo,
               "guide_targets": tuple(PLACEBO if c else t for t, c in zip(guides.guide_targets, guides.is_control_guide))
               if placebo else guides.guide_targets, "batches": prep.batches, "num_candidates": int(num_candidates), "batch_size": bsz, "sampler": sampler,
               "num_steps": int(num_steps), "fit_seconds": seconds, "skipped_steps": skipped,
               "cells_per_second": (num_steps - 1) * bsz / seconds if num_steps > 1 else float("nan")}
    return Fit(spec=SPEC, design=design, samples=samples, dims=dims, method="svi", options=options,
               losses=losses, idata=idata)


def _draw_params(fit: Fit, data: dict, num_draws: int) -> dict:
    s = {k: np.asarray(v)[0, :num_draws] for k, v in fit.samples.items()}
    return jax.jit(jax.vmap(lambda r: derive(r, data)))(s)


def perturbation_probabilities(fit: Fit, guides: GuideDesign, *, num_draws: int = 100, chunk_size: int = 1024,
                               prob: float = 0.9) -> pd.DataFrame:
    """Per-cell posterior probability of being perturbed, as a tidy table (one row per cell).

    Columns: ``cell``, ``batch``, ``top_guide``, ``top_guide_target``, ``top_guide_share``
    (its share of the cell's guide UMIs), ``p_top_guide_present``, ``target`` (the candidate
    target most probably perturbed; empty when the cell has no targeting guide counts),
    ``p_perturbed`` (posterior mean given guide counts and expression) with ``p_perturbed_lo``
    / ``_hi`` (central ``prob`` interval over posterior draws), ``p_perturbed_from_guides``
    (before seeing expression), ``p_escaper`` (carries a targeting guide, not perturbed).
    Cells are processed ``chunk_size`` at a time; counts are never densified beyond a chunk.
    """
    o = fit.options
    if "num_candidates" not in o:
        raise DesignError("this Fit was not made by fit_guides; perturbation_probabilities needs a guide-assignment fit.")
    if tuple(guides.guides) != tuple(o["guides"]):
        raise DesignError("the GuideDesign's guides differ from those the model was fitted with.")
    prep = prepare(fit.design, guides, genes=o["genes"], num_candidates=o["num_candidates"],
                   placebo=o.get("placebo", False))
    data, n = prep.data, prep.data["n_obs"]
    params = _draw_params(fit, data, num_draws)
    bsz = min(int(chunk_size), n)
    capacity = capacities(prep, bsz)
    lik = o["likelihood"]
    ctrl_guide = jnp.asarray(guides.is_control_guide)

    @jax.jit
    def one(params, cells, y):
        def per_draw(p):
            t = cell_terms(p, data, cells, y, likelihood=lik)
            g = cells["guide_counts"]
            r0 = t["presence_zero"]
            pres = jnp.broadcast_to(r0, (bsz, r0.shape[0])).at[g.rows, g.cols].add(g.mask * (t["presence_nonzero"] - r0[g.cols]))
            carry = -jnp.expm1(jnp.where(ctrl_guide, 0.0, jnp.log1p(-jnp.clip(pres, 0, 1 - 1e-7))).sum(-1))
            return 1 - jnp.exp(t["log_post"]), 1 - jnp.exp(t["log_prior"][:, 0]), pres, carry
        post, prior, pres, carry = jax.vmap(per_draw)(params)
        return post, prior, pres.mean(0), carry.mean(0)

    top, share = guides.top_guide()
    rows = []
    for start in range(0, n, bsz):
        idx = np.arange(start, min(start + bsz, n))
        pad = np.concatenate([idx, np.zeros(bsz - idx.size, idx.dtype)])
        cells, y = minibatch(prep, pad, np.ones(bsz), capacity=capacity)
        post, prior, pres, carry = (np.asarray(a) for a in one(params, cells, y))
        k = idx.size
        p_pert = post[:, :k, 0]  # 1 - P(unperturbed)
        p_target = 1 - post[:, :k, 1:]  # P(perturbed at candidate m)
        best = p_target.mean(0).argmax(1)
        cand = prep.candidates[idx, best]
        lo, hi = np.quantile(p_pert, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        pp, pr = p_pert.mean(0), prior[:, :k].mean(0)
        esc = np.clip((carry[:k] - pr) * (1 - pp) / np.maximum(1 - pr, 1e-12), 0.0, 1.0)
        rows.append(pd.DataFrame({
            "cell": [guides.obs_names[i] for i in idx],
            "batch": ["" if prep.batches is None else prep.batches[b] for b in prep.batch_index[idx]],
            "top_guide": [guides.guides[g] for g in top[idx]],
            "top_guide_target": [guides.guide_targets[g] for g in top[idx]],
            "top_guide_share": share[idx], "p_top_guide_present": pres[:k][np.arange(k), top[idx]],
            "target": ["" if c < 0 else prep.targets[c] for c in cand],
            "p_perturbed": pp, "p_perturbed_lo": lo, "p_perturbed_hi": hi, "p_perturbed_from_guides": pr,
            "p_escaper": esc}))
    return pd.concat(rows, ignore_index=True)
