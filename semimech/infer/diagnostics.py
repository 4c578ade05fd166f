"""Convergence diagnostics of a fit."""

from __future__ import annotations

import numpy as np

from semimech.infer import _arviz


def diagnostics(fit) -> dict:
    """A dict summarising convergence.

    NUTS: ``divergences``, ``max_rhat`` and ``min_ess_bulk`` over all latent sites (R-hat
    needs two or more chains), ``worst_site``. SVI: ``final_loss``, ``loss_rel_change``
    (relative change of the mean loss between the last two tenths of the run; small means
    converged), ``nan_steps``.
    """
    out = {"model": fit.spec.name, "method": fit.method, "chains": fit.num_chains, "draws": fit.num_draws}
    if fit.method == "nuts":
        out["divergences"] = int(np.asarray(fit.sample_stats["diverging"]).sum())
        latent = [k for k in fit.samples if not k.startswith("_")]
        stats = _arviz.rhat_ess(fit.idata, latent)
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
    return out


def format_diagnostics(d: dict) -> str:
    """One human-readable block."""
    lines = [f"model {d['model']} fitted by {d['method']} ({d['chains']} chain(s) x {d['draws']} draws)"]
    if d["method"] == "nuts":
        lines.append(f"  divergences: {d['divergences']}   max R-hat: {d['max_rhat']:.3f}   "
                     f"min bulk ESS: {d['min_ess_bulk']:.0f}   (worst: {d['worst_site']})")
    else:
        lines.append(f"  final loss (-ELBO): {d['final_loss']:.4g}   relative change over the last tenth: "
                     f"{d['loss_rel_change']:.2e}   NaN steps: {d['nan_steps']}")
    return "\n".join(lines)
