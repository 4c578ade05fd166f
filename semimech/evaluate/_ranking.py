"""The ranking rules of :func:`semimech.evaluate.compare`.

Models are ranked by a proper score (CRPS by default, or elpd, or L2) with ties: a model's rank is
one plus the number of models whose per-unit score is better by more than ``tie_se`` standard
errors of the paired difference (:func:`_ranks`, :func:`_pairwise_se`), so models closer than
that share a rank. Rank 1 also needs the points: a model tied first by the score whose
cross-validated L2 is worse than another first-ranked model's by more than ``tie_se`` SE ranks
below it (:func:`point_separation`); :func:`point_gap_notes` notes first-ranked models whose
point error is far from the best's, and :func:`below_text` writes the ``below`` column.
The public path of these names is :mod:`semimech.evaluate.compare`, which imports them from here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def _pairwise_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of the sum of paired pointwise differences: ``sqrt(n) sd(a - b)``, the sample sd
    (``ddof=1``), as the loo package's ``se_diff``. With few units (5 held-out doubles on Norman) the
    ``ddof=0`` form (arviz-stats' ``dse`` column) is ``sqrt((n - 1) / n)`` of it: 11% smaller at n = 5,
    which would call differences separated that are not. One unit: no spread to estimate (NaN: tied)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        return float("nan")
    return float(np.sqrt(d.size * np.var(d, ddof=1)))


def _ranks(pointwise: Mapping, tie_se: float) -> tuple[dict, dict, dict]:
    """Rank = 1 + the number of models better by more than ``tie_se`` standard errors of the paired difference.

    ``pointwise``: model -> per-unit values, higher is better (elpd, or minus the L2 error).

    Returns ``(rank, tied, above)``: ``tied[a]`` the models within ``tie_se`` SE of ``a``;
    ``above[a]`` the models that separate ``a`` (better by more than ``tie_se`` SE), each as
    ``(name, difference, SE of the paired difference)``, largest difference first. Ties are not
    transitive: ``a`` can be tied with the best model yet ranked below another one.
    """
    names = list(pointwise)
    pw = {n: np.asarray(pointwise[n], dtype=float) for n in names}
    rank, ties, above = {}, {}, {}
    for a in names:
        better, tied = [], []
        for b in names:
            if a == b:
                continue
            diff = float(pw[b].sum() - pw[a].sum())
            se = _pairwise_se(pw[b], pw[a])
            if not np.isfinite(se):   # one unit: no evidence on the spread, so no separation
                tied.append(b)
            elif diff > tie_se * se and diff > 0:
                better.append((b, diff, se))
            elif abs(diff) <= tie_se * se:
                tied.append(b)
        rank[a], ties[a], above[a] = len(better) + 1, tied, sorted(better, key=lambda t: -t[1])
    return rank, ties, above


def point_separation(points: Mapping, tie_se: float) -> dict[str, tuple[list, str]]:
    """First-ranked models that the evidence separates on their predictive *mean* (``{model: (below, note)}``).

    ``points``: model -> per-unit cross-validated L2 (``cv.l2``; lower is better) of the models
    tied first by the ranking score. A proper score of the whole predictive (CRPS, log density)
    can tie a model first on the strength of its intervals while its point predictions are the
    worst: on Sachs 2005 (session 17) production_decay with the per-target misfit tied first by
    CRPS while the held out separated it from the best by RMSE (1.553 against 1.169). A model
    shares rank 1 only if the evidence separates it from no other first-ranked model on the
    point error either: one whose per-unit L2 is worse than another first-ranked model's by
    more than ``tie_se`` SE of the paired difference (:func:`_pairwise_se`, as for the score)
    gets rank ``1 + the number of such models``, each listed in ``below`` with "on points".
    Models without an L2 for every unit are left as ranked.
    """
    finite = {n: np.asarray(v, dtype=float) for n, v in points.items()
              if v is not None and np.size(v) and np.all(np.isfinite(np.asarray(v, dtype=float)))}
    if len(finite) < 2:
        return {}
    neg = {n: -v / v.size for n, v in finite.items()}   # higher is better, per-unit means
    _, _, above = _ranks(neg, tie_se)
    out = {}
    for name, better in above.items():
        if better:
            best, diff, se = better[0]
            out[name] = (better, f"tied first by the score, but separated on points: its cross-validated L2 is "
                                 f"{finite[name].mean():.3f} against {finite[best].mean():.3f} ({best}), "
                                 f"{diff / se:.1f} SE of the paired difference: ranked below the models it is "
                                 "separated from")
    return out


def below_text(better, *, fmt: str = ".3f", on: str = "") -> str:
    """``below`` entries: each separating model, its paired difference and that difference's SE (``on``: e.g.
    ``" on points"`` for a separation on the per-unit L2 rather than the score)."""
    return "; ".join(f"{b} by {d:{fmt}}{on} (SE {se:{fmt}})" for b, d, se in better)


#: A first-ranked model whose cross-validated L2 exceeds the best ranked model's by more than this factor gets a note.
POINT_GAP = 1.25


def point_gap_notes(table: pd.DataFrame, *, rank_by: str) -> dict[str, str]:
    """Notes for first-ranked models whose predictive *mean* is far worse than the best's (``{model: note}``).

    ``table``: the ranked models, with ``rank`` and ``cv_l2``. A proper score of the whole
    predictive (CRPS, log density) can tie a model first on the strength of its intervals while its
    point predictions are the worst: on Sachs 2005, production_decay with the per-target misfit
    tied first by CRPS while its cross-validated L2 was 1.39x the best's and its held-out RMSE the
    worst (``benchmarks/RESULTS_compare.md``, session 17). :data:`POINT_GAP` is a reporting
    threshold, not a test.
    """
    l2 = pd.to_numeric(table["cv_l2"], errors="coerce")
    if l2.notna().sum() < 2:
        return {}
    best = l2.idxmin()
    out = {}
    for name in table.index[(pd.to_numeric(table["rank"], errors="coerce") == 1) & l2.notna()]:
        ratio = l2[name] / l2[best]
        if name != best and ratio > POINT_GAP:
            out[name] = (f"first by {rank_by}, but its predictive mean is {ratio:.2f}x as far from the left-out data as "
                         f"the best's (cross-validated L2 {l2[name]:.3f} against {l2[best]:.3f}, {best}): its intervals, "
                         "not its point predictions, earn the rank")
    return out
