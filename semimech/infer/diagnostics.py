"""Convergence diagnostics of a fit."""

from __future__ import annotations

import numpy as np

from semimech.infer import _arviz
from semimech.infer.idata import posterior_tree


def diagnostics(fit, *, steady_state: bool = True) -> dict:
    """A dict summarising convergence, and for steady-state models the steady-state assumption.

    NUTS: ``divergences``, ``max_rhat`` and ``min_ess_bulk`` over all latent sites (R-hat
    needs two or more chains), ``worst_site``. SVI: ``final_loss``, ``loss_rel_change``
    (relative change of the mean loss between the last two tenths of the run; small means
    converged), ``nan_steps`` (steps whose loss or gradient was NaN/inf, e.g. a failed
    steady-state solve: SVI skips them, leaving the parameters unchanged) and ``steps``.

    Models that record ``ok_fraction``: ``solved_draws``, the fraction of posterior draws
    whose steady-state solve converged for every training condition. Steady-state models
    (:func:`semimech.checks.is_steady_state_model`), unless ``steady_state=False``: from
    :func:`semimech.checks.steady_state_diagnostics` (a few draws, multi-start; cached per
    fit), ``steady_state_min_fraction`` (over conditions, the fraction of draws with a stable,
    unique steady state), ``steady_state_worst`` (that condition), ``steady_state_all``
    (fraction of draws where every condition has one), ``steady_state_draws`` and
    ``steady_state_by_condition`` (label -> fraction; the full table, with ``stable`` and
    ``unique`` separately, is ``semimech.checks.steady_state_diagnostics(fit)[0]``).
    """
    out = {"model": fit.spec.name, "method": fit.method, "chains": fit.num_chains, "draws": fit.num_draws}
    if fit.method == "nuts":
        out["divergences"] = int(np.asarray(fit.sample_stats["diverging"]).sum())
        latent = [k for k in fit.samples if not k.startswith("_")]
        stats = _arviz.rhat_ess(posterior_tree(fit), latent)
        rh = {k: v[0] for k, v in stats.items()}
        es = {k: v[1] for k, v in stats.items()}
        out["max_rhat"] = float(np.nanmax(list(rh.values()))) if fit.num_chains > 1 else float("nan")
        out["min_ess_bulk"] = float(np.nanmin(list(es.values())))
        out["worst_site"] = max(rh, key=lambda k: -np.inf if np.isnan(rh[k]) else rh[k]) if fit.num_chains > 1 \
            else min(es, key=es.get)
    else:
        losses = np.asarray(fit.losses)
        finite = losses[np.isfinite(losses)]
        tenth = max(1, len(losses) // 10)
        last, prev = np.nanmean(losses[-tenth:]), np.nanmean(losses[-2 * tenth:-tenth] if len(losses) >= 2 * tenth else losses)
        out["final_loss"] = float(finite[-1]) if finite.size else float("nan")
        out["loss_rel_change"] = float(abs(prev - last) / max(abs(last), 1e-12))
        out["nan_steps"] = int(np.sum(~np.isfinite(losses)))
        out["steps"] = int(losses.size)
    if "ok_fraction" in fit.samples:
        out["solved_draws"] = float(np.mean(fit.flat("ok_fraction") >= 1.0))
    if steady_state:
        out.update(_steady_state(fit))
    return out


def _steady_state(fit) -> dict:
    from semimech.checks import is_steady_state_model, steady_state_diagnostics

    if not is_steady_state_model(fit.spec):
        return {}
    table, summary = steady_state_diagnostics(fit)
    frac = table.set_index("perturbation")["stable_unique"]
    return {"steady_state_min_fraction": float(frac.min()), "steady_state_worst": str(frac.idxmin()),
            "steady_state_all": float(summary), "steady_state_draws": int(table.attrs["draws"]),
            "steady_state_by_condition": {str(k): float(v) for k, v in frac.items()}}


def format_diagnostics(d: dict) -> str:
    """One human-readable block."""
    lines = [f"model {d['model']} fitted by {d['method']} ({d['chains']} chain(s) x {d['draws']} draws)"]
    if d["method"] == "nuts":
        lines.append(f"  divergences: {d['divergences']}   max R-hat: {d['max_rhat']:.3f}   "
                     f"min bulk ESS: {d['min_ess_bulk']:.0f}   (worst: {d['worst_site']})")
    else:
        steps = d.get("steps")
        share = f" of {steps} ({d['nan_steps'] / steps:.2%})" if steps else ""
        lines.append(f"  final loss (-ELBO): {d['final_loss']:.4g}   relative change over the last tenth: "
                     f"{d['loss_rel_change']:.2e}   non-finite steps skipped: {d['nan_steps']}{share}")
    if "solved_draws" in d:
        lines.append(f"  steady-state solve converged for every condition in {d['solved_draws']:.0%} of draws")
    if "steady_state_min_fraction" in d:
        lines.append(f"  stable, unique steady state ({d['steady_state_draws']} draws, multi-start): worst condition "
                     f"{d['steady_state_worst']!r} in {d['steady_state_min_fraction']:.0%} of draws; every condition "
                     f"at once in {d['steady_state_all']:.0%}")
    return "\n".join(lines)
