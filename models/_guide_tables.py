"""Tidy posterior tables of a guide-assignment fit: effects, efficacies, escapers, batches."""

from __future__ import annotations

import numpy as np
import pandas as pd

from semimech.errors import DesignError


def _draws(fit, site: str) -> np.ndarray:
    if site not in fit.samples:
        raise DesignError(f"the fit has no {site!r} draws (sites: {sorted(fit.samples)}).")
    return fit.flat(site)


def _summ(d: np.ndarray, prob: float) -> dict:
    lo, hi = np.quantile(d, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return {"mean": d.mean(0), "sd": d.std(0), "lo": lo, "hi": hi}


def _select(labels, wanted, what):
    if wanted is None:
        return list(range(len(labels)))
    pos = {x: i for i, x in enumerate(labels)}
    missing = [w for w in wanted if w not in pos]
    if missing:
        raise DesignError(f"{what} {missing} are not in the fit (known: {list(labels)[:12]} ...).")
    return [pos[w] for w in wanted]


def effect_table(fit, *, targets=None, genes=None, prob: float = 0.9) -> pd.DataFrame:
    """Knockout effects (log fold change of perturbed vs unperturbed cells) per target x gene.

    Columns: ``target``, ``gene``, ``mean``, ``sd``, ``lo``, ``hi`` (central ``prob`` interval),
    ``fold_change`` (``exp(mean)``), ``excludes_zero``.
    """
    o = fit.options
    ti = _select(o["targets"], targets, "targets")
    gi = _select(o["genes"], genes, "genes")
    d = _draws(fit, "effect")[:, ti][:, :, gi]
    s = _summ(d, prob)
    frame = pd.DataFrame({"target": np.repeat([o["targets"][i] for i in ti], len(gi)),
                          "gene": np.tile([o["genes"][j] for j in gi], len(ti))})
    for k, v in s.items():
        frame[k] = np.asarray(v).ravel()
    frame["fold_change"] = np.exp(frame["mean"])
    frame["excludes_zero"] = (frame["lo"] > 0) | (frame["hi"] < 0)
    return frame


def efficacy_table(fit, *, prob: float = 0.9) -> pd.DataFrame:
    """Per-guide efficacy (probability that a present guide edits its cell); targeting guides only.

    Columns: ``guide``, ``target``, ``mean``, ``sd``, ``lo``, ``hi``.
    """
    o = fit.options
    s = _summ(_draws(fit, "efficacy"), prob)
    frame = pd.DataFrame({"guide": list(o["guides"]), "target": list(o["guide_targets"]),
                          **{k: np.asarray(v) for k, v in s.items()}})
    return frame[frame["target"].isin(o["targets"])].reset_index(drop=True)


def escaper_table(fit, probabilities: pd.DataFrame | None = None, *, prob: float = 0.9) -> pd.DataFrame:
    """Fraction of escapers per target: model-based (``1 - mean guide efficacy``) and, given the
    per-cell table of :func:`perturbation_probabilities`, the posterior share of cells whose top
    guide targets ``t`` that are escapers (``observed_escaper_share``, with ``n_cells``)."""
    o = fit.options
    s = _summ(_draws(fit, "escaper_fraction"), prob)
    frame = pd.DataFrame({"target": list(o["targets"]), **{k: np.asarray(v) for k, v in s.items()}})
    if probabilities is not None:
        p = probabilities[probabilities["top_guide_target"].isin(o["targets"])]
        g = p.groupby("top_guide_target")
        share = (g["p_escaper"].sum() / (g["p_escaper"].sum() + g["p_perturbed"].sum())).rename("observed_escaper_share")
        frame = frame.merge(share, left_on="target", right_index=True, how="left")
        frame = frame.merge(g.size().rename("n_cells"), left_on="target", right_index=True, how="left")
    return frame


def batch_effect_table(fit, *, genes=None, prob: float = 0.9) -> pd.DataFrame:
    """Batch (replicate) offsets on the log scale per batch x gene, with intervals."""
    o = fit.options
    if not o.get("batches"):
        raise DesignError("the fit has no batches; pass batch_key= when building the designs.")
    gi = _select(o["genes"], genes, "genes")
    d = _draws(fit, "batch_effect")[:, :, gi]
    s = _summ(d, prob)
    frame = pd.DataFrame({"batch": np.repeat(list(o["batches"]), len(gi)),
                          "gene": np.tile([o["genes"][j] for j in gi], len(o["batches"]))})
    for k, v in s.items():
        frame[k] = np.asarray(v).ravel()
    return frame
