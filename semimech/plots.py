"""Plots of predictions, calibration and effects (matplotlib only; each returns the Figure).

matplotlib is imported when a plot is made, never at ``import semimech``. Choose a backend
yourself (``matplotlib.use("Agg")`` for files); close figures you no longer need. :func:`show`
is how the notebooks output a figure: inline in Jupyter, saved to a folder when asked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semimech.data.design import Design
from semimech.errors import PredictionError
from semimech.evaluate import probabilistic as cal
from semimech.evaluate.score import align

__all__ = ["calibration_curve", "forest", "posterior_predictive_check", "predicted_vs_observed", "show"]

FIGURES_ENV_VAR = "SEMIMECH_FIGURES"
_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def show(fig, name: str, *, folder: str | os.PathLike[str] | None = None) -> Path | None:
    """Display a figure, or save it when a folder is given: how the notebooks output figures.

    Parameters
    ----------
    fig
        A matplotlib Figure.
    name
        File name used when saving (e.g. ``"calibration.png"``).
    folder
        Save ``folder / name`` and close the figure. Default: the folder named by the
        environment variable ``SEMIMECH_FIGURES`` (the notebook tests set it); when neither is
        given the figure is displayed: inline in Jupyter/IPython, in a window with an
        interactive backend; with a non-interactive backend (a headless script) it is closed
        and a one-line hint says how to keep it.

    Returns
    -------
    The path written, or None when the figure was displayed.
    """
    plt = _plt()
    folder = folder if folder is not None else os.environ.get(FIGURES_ENV_VAR) or None
    if folder is not None:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        print(f"figure saved: {path}")
        return path
    ipython = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if ipython is not None:
        from IPython.display import display

        display(fig)
        plt.close(fig)  # the inline backend would otherwise show it a second time at the end of the cell
    elif plt.get_backend().lower() in _NON_INTERACTIVE:
        plt.close(fig)
        print(f"figure {name!r} not shown (non-interactive matplotlib backend); "
              f"set {FIGURES_ENV_VAR}=<folder> to save the figures")
    else:
        plt.show()
    return None


def _grid(n: int, *, ncols: int = 4, size: float = 3.0):
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = _plt().subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _diagonal(ax, x, y):
    lo = float(np.nanmin([np.nanmin(x), np.nanmin(y)]))
    hi = float(np.nanmax([np.nanmax(x), np.nanmax(y)]))
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", zorder=0)


def predicted_vs_observed(prediction, test: Design, *, kind: str = "observed_mean", prob: float = 0.9,
                          labels: Sequence[str] | None = None, pooled: bool = False, reference=None,
                          batch: str | None = None, max_panels: int = 16):
    """Predicted vs observed change from control, one point per gene, with predictive intervals.

    Parameters
    ----------
    prediction
        A :class:`semimech.Prediction` (error bars: central ``prob`` interval of the ``kind``
        draws) or a :class:`~semimech.evaluate.PointPrediction` (no bars).
    test
        The held-out design (truth = its pseudobulk means).
    kind, prob
        Which draws give the intervals, ``"observed_mean"`` (default) or ``"mean"`` (as in
        :func:`semimech.evaluate.align`), and the central interval's probability (default 0.9).
    labels
        Plot only these perturbations (default: every held-out one).
    pooled
        One panel for all perturbations (coloured) instead of one panel per perturbation.
    reference, batch
        Control reference and batch (context) as in :func:`semimech.evaluate.align`.
    max_panels
        At most this many perturbations are drawn (the first ones).
    """
    a = align(prediction, test, kind=kind, reference=reference, labels=labels, batch=batch)
    n = min(len(a.perturbations), max_panels)
    obs = a.truth[:n] - a.control
    pred = a.point[:n] - a.control
    if a.draws is not None:
        lo, hi = np.quantile(a.draws[:, :n], [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        err = np.stack([pred - (lo - a.control), (hi - a.control) - pred]).clip(min=0)
    else:
        err = None
    if pooled:
        fig, axes = _grid(1, size=5.0)
        axes = [axes[0]] * n
    else:
        fig, axes = _grid(n)
    for i in range(n):
        ax = axes[i]
        yerr = None if err is None else err[:, i]
        ax.errorbar(obs[i], pred[i], yerr=yerr, fmt="o", ms=2.5, lw=0.5, alpha=0.7, label=a.perturbations[i])
        if not pooled:
            _diagonal(ax, obs[i], pred[i])
            ax.set_title(a.perturbations[i], fontsize=9)
    if pooled:
        _diagonal(axes[0], obs, pred)
        axes[0].legend(fontsize=7, markerscale=2)
        axes[0].set_title(f"{a.model}: predicted vs observed change")
    for ax in set(axes):
        ax.set_xlabel("observed change")
        ax.set_ylabel("predicted change" + ("" if err is None else f" ({prob:.0%} interval)"))
    fig.tight_layout()
    return fig


def calibration_curve(predictions, test: Design, *, kind: str = "observed_mean",
                      levels: Sequence[float] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2)),
                      labels: Sequence[str] | None = None):
    """Nominal vs empirical coverage of central predictive intervals, with PIT histograms.

    ``predictions`` is a Prediction or a mapping ``name -> Prediction``. The grey band is the
    95% range of the empirical coverage of a calibrated predictive with as many independent
    entries (binomial); points below the diagonal mean intervals that are too narrow.
    """
    if not isinstance(predictions, Mapping):
        predictions = {getattr(predictions, "model", "prediction"): predictions}
    fig, (ax, ax_pit) = _plt().subplots(1, 2, figsize=(9, 4))
    levels = np.asarray(levels, float)
    n = None
    for name, pred in predictions.items():
        a = align(pred, test, kind=kind, labels=labels)
        if a.draws is None:
            raise PredictionError(f"{name!r} is a point prediction: it has no intervals to calibrate.")
        cov = (cal.coverage(a.truth, a.draws, levels) * a.truth.shape[1]).sum(1) / a.truth.size
        n = a.truth.size
        ax.plot(levels, cov, "o-", ms=3, label=name)
        ax_pit.hist(cal.pit(a.truth, a.draws).ravel(), bins=10, range=(0, 1), histtype="step", density=True,
                    label=name)
    from scipy import stats

    band = stats.binom.interval(0.95, n, levels)
    ax.fill_between(levels, band[0] / n, band[1] / n, color="0.85", zorder=0, label="calibrated (95%)")
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--")
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", xlim=(0, 1), ylim=(0, 1),
           title="interval calibration")
    ax.legend(fontsize=8)
    ax_pit.axhline(1.0, color="0.4", lw=0.8, ls="--")
    ax_pit.set(xlabel="PIT", ylabel="density", title="PIT histogram (flat = calibrated)")
    fig.tight_layout()
    return fig


def forest(fit, *, genes: Sequence[str], targets: Sequence[str] | None = None, site: str = "effect",
           prob: float = 0.9):
    """Forest plot of perturbation effects from a Fit: posterior mean and interval per target.

    Parameters
    ----------
    fit
        A :class:`semimech.Fit` with a site over ``(targets, genes)`` (``"effect"`` by default).
    genes
        Genes to show, one panel each.
    targets
        Targets to show (default: all), one row each.
    prob
        Probability of the central interval (thick line); the thin line spans 0.99 of the draws.
    """
    if site not in fit.samples:
        raise PredictionError(f"the fit has no site {site!r}; sites: {sorted(fit.samples)}.")
    dims = tuple(fit.dims.get(site, ()))
    if dims != ("targets", "genes"):
        raise PredictionError(f"site {site!r} has dims {dims}; a forest plot needs ('targets', 'genes').")
    genes = [genes] if isinstance(genes, str) else list(genes)
    all_targets = list(fit.design.targets)
    targets = all_targets if targets is None else list(targets)
    bad = [g for g in genes if g not in fit.design.genes] + [t for t in targets if t not in all_targets]
    if bad or not genes:
        raise PredictionError(f"unknown genes or targets {bad} (or no genes given); choose from the fit's design.")
    from matplotlib.ticker import MaxNLocator

    draws = fit.flat(site)
    ti = [all_targets.index(t) for t in targets]
    fig, axes = _grid(len(genes), ncols=3, size=3.5)
    ypos = np.arange(len(targets))[::-1]
    for ax, gene in zip(axes, genes):
        d = draws[:, ti, fit.design.genes.index(gene)]
        lo, hi = np.quantile(d, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        lo99, hi99 = np.quantile(d, [0.005, 0.995], axis=0)
        ax.hlines(ypos, lo99, hi99, color="0.6", lw=0.8)
        ax.hlines(ypos, lo, hi, color="C0", lw=2.5)
        ax.plot(d.mean(0), ypos, "o", color="C0", ms=3)
        ax.axvline(0.0, color="0.4", lw=0.8, ls="--")
        ax.set_yticks(ypos, targets, fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_title(gene, fontsize=9)
        ax.set_xlabel(f"{site} ({prob:.0%} interval)")
    fig.tight_layout()
    return fig


def posterior_predictive_check(prediction, design: Design, *, kind: str = "observed_mean", prob: float = 0.9):
    """Observed vs predicted pseudobulk means of every perturbation x gene, and standardised residuals.

    Left: observed mean vs posterior predictive mean with central ``prob`` intervals (red: outside).
    Right: histogram of ``(observed - predictive mean) / predictive sd`` against a standard normal.
    ``prediction`` must cover every observed perturbation of ``design`` (control included),
    e.g. ``sm.predict(fit, design, rng_key=0, num_cells=...)``.
    """
    a = align(prediction, design, kind=kind, labels=design.observed_perturbations())
    if a.draws is None:
        raise PredictionError("a posterior predictive check needs predictive draws, not a point prediction.")
    mean, sd = a.draws.mean(0), a.draws.std(0)
    lo, hi = np.quantile(a.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    out = (a.truth < lo) | (a.truth > hi)
    fig, (ax, ax_z) = _plt().subplots(1, 2, figsize=(9, 4))
    ax.errorbar(a.truth.ravel(), mean.ravel(), yerr=np.stack([(mean - lo).ravel(), (hi - mean).ravel()]).clip(min=0),
                fmt="o", ms=2, lw=0.4, alpha=0.5, color="C0")
    ax.plot(a.truth[out], mean[out], "o", ms=2.5, color="C3", label=f"outside {prob:.0%} ({out.mean():.1%})")
    _diagonal(ax, a.truth, mean)
    ax.set(xlabel="observed pseudobulk mean", ylabel="predicted (posterior predictive)", title=a.model)
    ax.legend(fontsize=8)
    z = ((a.truth - mean) / np.where(sd > 0, sd, np.nan)).ravel()
    z = z[np.isfinite(z)]
    ax_z.hist(z, bins=40, density=True, color="C0", alpha=0.6)
    grid = np.linspace(-4, 4, 200)
    ax_z.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), color="0.3", lw=1)
    ax_z.set(xlabel="standardised residual", ylabel="density", title="residuals vs N(0, 1)")
    fig.tight_layout()
    return fig
