"""Probabilistic scores from predictive draws (pure numpy/scipy).

``truth`` is ``(perturbations, genes)``; ``draws`` are predictive draws of the same quantity,
``(draws, perturbations, genes)`` — for an observed pseudobulk mean use the ``"observed_mean"``
draws of :func:`semimech.predict` (population mean plus the sampling noise of that many cells).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float
from scipy import special, stats

from semimech.errors import PredictionError

__all__ = ["LEVELS", "CalibrationReport", "calibration_report", "coverage", "crps", "log_predictive_density", "pit",
           "pit_calibration", "pit_histogram"]

LEVELS = (0.5, 0.8, 0.9, 0.95)

Matrix = Float[np.ndarray, "perturbations genes"]
Draws = Float[np.ndarray, "draws perturbations genes"]


def _check(truth, draws) -> tuple[np.ndarray, np.ndarray]:
    truth = np.atleast_2d(np.asarray(truth, float))
    draws = np.asarray(draws, float)
    if draws.ndim == 2:
        draws = draws[:, None, :] if truth.shape[0] == 1 else draws[:, :, None]
    if draws.ndim != 3 or draws.shape[1:] != truth.shape:
        raise PredictionError(
            f"draws {draws.shape} must be (draws, perturbations, genes) matching truth {truth.shape}.")
    if draws.shape[0] < 2:
        raise PredictionError("probabilistic scores need at least 2 predictive draws; a point prediction has none.")
    return truth, draws


def coverage(truth: Matrix, draws: Draws, levels: Sequence[float] = LEVELS) -> np.ndarray:
    """Fraction of genes whose truth lies in the central predictive interval, ``(levels, perturbations)``.

    The interval at level ``l`` spans the ``(1 - l)/2`` and ``(1 + l)/2`` quantiles of the draws
    (endpoints included). A calibrated predictive covers a fraction ``l`` on average.
    """
    truth, draws = _check(truth, draws)
    out = []
    for level in levels:
        if not 0 < level < 1:
            raise PredictionError(f"interval levels must lie in (0, 1), got {level}.")
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        out.append(((truth >= lo) & (truth <= hi)).mean(axis=1))
    return np.asarray(out)


def pit(truth: Matrix, draws: Draws) -> Matrix:
    """Probability integral transform: the predictive CDF at the truth, per perturbation x gene.

    ``mean(draws < truth) + 0.5 * mean(draws == truth)`` (ties split evenly). Uniform on [0, 1]
    for a calibrated predictive; U-shaped when overconfident, peaked when underconfident.
    """
    truth, draws = _check(truth, draws)
    return (draws < truth).mean(0) + 0.5 * (draws == truth).mean(0)


def pit_histogram(pit_values, *, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Counts of PIT values in ``bins`` equal bins of [0, 1], and the bin edges."""
    values = np.asarray(pit_values, float).ravel()
    return np.histogram(values, bins=bins, range=(0.0, 1.0))


def crps(truth: Matrix, draws: Draws, *, weights=None) -> Matrix:
    """Continuous ranked probability score of the empirical predictive, per perturbation x gene.

    ``E|X - y| - E|X - X'| / 2`` with ``X, X'`` drawn from the draws' empirical distribution (all
    pairs, i.e. the exact CRPS of the empirical CDF); computed in O(S log S) from sorted draws.
    Lower is better; for a point prediction it reduces to the absolute error. Same units as
    the data. ``weights`` (draws,) or (draws, perturbations), each column summing to one (e.g.
    PSIS weights): the CRPS of the weighted empirical distribution; ``None``: equal weights.
    """
    truth, draws = _check(truth, draws)
    s = draws.shape[0]
    if weights is None:
        first = np.abs(draws - truth).mean(0)
        x = np.sort(draws, axis=0)
        w = (2 * np.arange(1, s + 1) - s - 1).reshape(-1, 1, 1)
        spread = 2.0 * (w * x).sum(0) / s**2  # = E|X - X'| over all s^2 ordered pairs
        return first - 0.5 * spread
    w = np.asarray(weights, float)
    w = np.broadcast_to(w.reshape(s, -1, 1), draws.shape)
    first = (w * np.abs(draws - truth)).sum(0)
    order = np.argsort(draws, axis=0)
    xs, ws = np.take_along_axis(draws, order, axis=0), np.take_along_axis(w, order, axis=0)
    cw = np.cumsum(ws, axis=0)
    spread = 2.0 * (ws * xs * (2.0 * cw - ws - 1.0)).sum(0)  # E|X - X'| under the weights
    return first - 0.5 * spread


def log_predictive_density(truth: Matrix, draws: Draws | None = None, *, loglik=None,
                           min_sd: float = 1e-12) -> np.ndarray:
    """Held-out log predictive density of the truth, summed over genes, per perturbation (nats).

    Two estimators:

    - ``loglik`` given, ``(draws, perturbations)`` or ``(draws, perturbations, genes)``: the
      model's per-draw log density of the truth; the result is
      ``log mean_s exp(sum_g loglik[s, p, g])`` (the usual Monte Carlo estimate of
      ``log p(y_test | y_train)``; genes are summed inside each draw).
    - otherwise a **Gaussian approximation** of the predictive: per perturbation x gene, a normal
      with the draws' mean and sd (floored at ``min_sd``), genes treated as independent.
      No kernel density estimate is used. It ignores correlation between genes and heavy tails,
      so compare models with the same estimator only.
    """
    if loglik is not None:
        ll = np.asarray(loglik, float)
        if ll.ndim == 3:
            ll = ll.sum(-1)
        if ll.ndim != 2:
            raise PredictionError(f"loglik must be (draws, perturbations[, genes]), got shape {ll.shape}.")
        return special.logsumexp(ll, axis=0) - np.log(ll.shape[0])
    if draws is None:
        raise PredictionError("log_predictive_density needs draws or loglik.")
    truth, draws = _check(truth, draws)
    mu = draws.mean(0)
    sd = np.maximum(draws.std(0, ddof=1), min_sd)
    return stats.norm.logpdf(truth, mu, sd).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
    """Empirical interval coverage against nominal, with a binomial test per level.

    Attributes
    ----------
    table
        One row per level: ``nominal``, ``empirical``, ``covered``, ``n``, ``ci_low``, ``ci_high``
        (Clopper-Pearson interval of the empirical coverage), ``p_value`` (two-sided exact
        binomial test of the nominal rate) and ``flag`` (``"too narrow"``, ``"too wide"``, ``"ok"``).
    verdict
        ``"overconfident"`` (some intervals cover too little, none too much), ``"underconfident"``
        (the reverse), ``"miscalibrated"`` (both) or ``"calibrated"``.
    alpha
        Family-wise level; each level is tested at ``alpha / len(levels)`` (Bonferroni).
    """

    table: pd.DataFrame
    verdict: str
    alpha: float

    def __str__(self) -> str:
        rows = [f"  {r.nominal:.0%}: covered {r.empirical:.3f} (95% CI {r.ci_low:.3f}-{r.ci_high:.3f}, "
                f"n={r.n}, p={r.p_value:.2g}) {r.flag}" for r in self.table.itertuples()]
        return "\n".join([f"predictive intervals are {self.verdict}"] + rows)


def calibration_report(truth: Matrix, draws: Draws, *, levels: Sequence[float] = LEVELS,
                       alpha: float = 0.05) -> CalibrationReport:
    """Say whether predictive intervals are calibrated, overconfident or underconfident.

    Pools every perturbation x gene entry: at each level the number covered is compared with
    ``Binomial(n, level)`` by an exact two-sided test at ``alpha / len(levels)``. The test treats
    entries as independent; genes of one perturbation share posterior uncertainty, so with
    strong correlation the test is anti-conservative (flags small deviations). Read the
    empirical coverage, not just the verdict.
    """
    truth, draws = _check(truth, draws)
    n = truth.size
    covered = (coverage(truth, draws, levels) * truth.shape[1]).sum(axis=1).round().astype(int)
    return _report(covered, n, levels, alpha)


def pit_calibration(pit_values, *, levels: Sequence[float] = LEVELS, alpha: float = 0.05) -> CalibrationReport:
    """:func:`calibration_report` from PIT values: the central interval at level ``l`` covers a
    value when its PIT lies in ``[(1 - l) / 2, (1 + l) / 2]``.

    Use it for predictives known only through their PIT (leave-out predictives of
    :func:`semimech.evaluate.cv.cross_validate`, weighted by PSIS). With no values the
    verdict is ``"not estimated"``.
    """
    u = np.asarray(pit_values, float).ravel()
    u = u[np.isfinite(u)]
    if u.size == 0:
        table = pd.DataFrame({"nominal": list(levels)})
        return CalibrationReport(table=table, verdict="not estimated", alpha=alpha)
    covered = np.array([int(np.sum((u >= (1 - lv) / 2) & (u <= (1 + lv) / 2))) for lv in levels])
    return _report(covered, u.size, levels, alpha)


def _report(covered, n: int, levels: Sequence[float], alpha: float) -> CalibrationReport:
    rows = []
    for level, k in zip(levels, covered):
        test = stats.binomtest(int(k), n, level)
        ci = test.proportion_ci(confidence_level=0.95)
        significant = test.pvalue < alpha / len(levels)
        flag = "ok" if not significant else ("too narrow" if k / n < level else "too wide")
        rows.append({"nominal": level, "empirical": k / n, "covered": int(k), "n": n, "ci_low": ci.low,
                     "ci_high": ci.high, "p_value": test.pvalue, "flag": flag})
    table = pd.DataFrame(rows)
    narrow, wide = (table.flag == "too narrow").any(), (table.flag == "too wide").any()
    verdict = ("miscalibrated" if narrow and wide else "overconfident" if narrow else "underconfident" if wide
               else "calibrated")
    return CalibrationReport(table=table, verdict=verdict, alpha=alpha)
