"""One table of held-out metrics per perturbation, for a model's Prediction or a baseline."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from semimech.data.design import Design
from semimech.errors import PredictionError
from semimech.evaluate import probabilistic as cal
from semimech.evaluate import metrics as m
from semimech.evaluate._align import (
    PointPrediction,
    align_genes,
    align_rows,
    control_mean,
    held_out_labels,
    observed_in,
    perturbation_means,
)
from semimech.evaluate.baselines import BASELINES, DEFAULT_BASELINES

__all__ = ["Aligned", "align", "calibration", "score", "score_baselines"]


@dataclasses.dataclass(frozen=True, eq=False)
class Aligned:
    """Truth and prediction on the same perturbations and genes (what every metric consumes).

    Attributes
    ----------
    perturbations, genes
        Labels (the test design's order).
    truth
        Observed pseudobulk means of the test design, ``(perturbations, genes)``.
    point
        Point prediction: the posterior mean of the ``"mean"`` draws, or a baseline's values.
    draws
        Predictive draws ``(draws, perturbations, genes)`` of the chosen kind, or ``None``.
    control
        Reference control mean ``(genes,)``.
    centroids, centroid_labels
        Observed means of every perturbation available (test, plus training when the
        reference is a design), for centroid accuracy.
    perturbed_centroid
        Systema's reference: the mean of the training perturbation means when the reference
        is a design, else of the test perturbation means, ``(genes,)``.
    model
        Name of the predicting model.
    """

    perturbations: tuple[str, ...]
    genes: tuple[str, ...]
    truth: np.ndarray
    point: np.ndarray
    draws: np.ndarray | None
    control: np.ndarray
    centroids: np.ndarray
    centroid_labels: tuple[str, ...]
    perturbed_centroid: np.ndarray
    model: str


def align(prediction, test: Design, *, kind: str = "observed_mean", reference=None,
          labels: Sequence[str] | None = None, batch: str | None = None) -> Aligned:
    """Match a prediction to the test design's truth by perturbation label and gene.

    Parameters
    ----------
    prediction
        A :class:`semimech.Prediction` (draws) or a :class:`PointPrediction` (a baseline).
    test
        The held-out design; its observed non-control perturbations are scored.
    kind
        Which draws give the predictive distribution of the observed pseudobulk:
        ``"observed_mean"`` (default; ``predict(..., num_cells=...)``) or ``"mean"``.
    reference
        The control reference: ``None`` (the test design's control rows), a training Design
        (its controls; its perturbations also join the centroids), or a ``(genes,)`` array.
    labels
        Score only these perturbations (default: all held-out ones).
    batch
        Score within one batch or context (a cell line): truth, control reference and
        centroids come from its rows only. Predict for it with ``predict(..., batch=...)``.
    """
    labels = held_out_labels(test, labels, batch=batch)
    _, truth = perturbation_means(test, labels, batch=batch)
    if isinstance(prediction, PointPrediction):
        have, genes, point, draws = prediction.perturbations, prediction.genes, prediction.values, None
    elif hasattr(prediction, "draws") and hasattr(prediction, "perturbations"):
        have, genes = prediction.perturbations, prediction.genes
        if kind not in prediction.draws or "mean" not in prediction.draws:
            raise PredictionError(f"the prediction has no {kind!r} draws (it has {sorted(prediction.draws)}); for "
                                  "'observed_mean' predict with num_cells=semimech.evaluate.cell_counts(test).")
        point = np.asarray(prediction.draws["mean"]).mean(0)
        draws = np.asarray(prediction.draws[kind])
    else:
        raise PredictionError(f"cannot score a {type(prediction).__name__}; pass a semimech.Prediction or a "
                              "PointPrediction from semimech.evaluate baselines.")
    what = f"the prediction of {getattr(prediction, 'model', '?')!r}"
    rows = align_rows(test, labels, have, what=what)
    cols = align_genes(test.genes, genes, what=what)
    point = np.asarray(point, float)[np.ix_(rows, cols)]
    if draws is not None:
        draws = draws[:, rows][:, :, cols]
    centroid_labels, centroids = perturbation_means(test, batch=batch)
    perturbed = centroids[[i for i, p in enumerate(centroid_labels) if p != test.control]].mean(0)
    if isinstance(reference, Design):
        if tuple(reference.genes) != tuple(test.genes):
            raise PredictionError("the reference design and the test design have different genes; split one Design.")
        control = control_mean(reference, batch=batch)
        tl, tm = perturbation_means(reference, observed_in(reference, batch), batch=batch)
        train_pert = [i for i, p in enumerate(tl) if p != reference.control]
        if train_pert:
            perturbed = tm[train_pert].mean(0)
        extra = [i for i, p in enumerate(tl) if p not in set(centroid_labels)]
        centroid_labels = centroid_labels + tuple(tl[i] for i in extra)
        centroids = np.concatenate([centroids, tm[extra]])
    elif reference is None:
        control = control_mean(test, batch=batch)
    else:
        control = np.asarray(reference, float)
        if control.shape != (test.n_genes,):
            raise PredictionError(f"reference array must be the control mean (genes,) = ({test.n_genes},), "
                                  f"got {control.shape}.")
    keep = [i for i, p in enumerate(centroid_labels) if p != test.control]
    return Aligned(perturbations=labels, genes=tuple(test.genes), truth=truth, point=point, draws=draws,
                   control=control, centroids=centroids[keep], centroid_labels=tuple(centroid_labels[i] for i in keep),
                   perturbed_centroid=perturbed, model=str(getattr(prediction, "model", "?")))


def score(prediction, test: Design, *, kind: str = "observed_mean", reference=None,
          labels: Sequence[str] | None = None, batch: str | None = None, levels: Sequence[float] = cal.LEVELS,
          n_de: int = 20, top_expressed: int | None = 1000) -> pd.DataFrame:
    """Held-out metrics per perturbation, plus a ``"mean"`` row (the average over perturbations).

    Columns
    -------
    ``l2``: Euclidean distance of point prediction and truth over the ``top_expressed`` genes
    by control mean (1000 as in Ahlmann-Eltze et al. 2025; all genes when there are fewer or with
    ``None``). ``rmse``: root mean squared error over all genes. ``pearson_delta``: correlation
    of predicted and observed change from control (GEARS). ``pearson_delta_pert``: the same with
    Systema's perturbed centroid as reference (the mean of the training perturbations when
    ``reference`` is the training design, else of the test perturbations). ``mse_top_de``: MSE on the
    ``n_de`` genes with the largest observed change. ``direction``: sign agreement of the changes
    on those genes. ``centroid_accuracy``: Systema's centroid accuracy against every available
    perturbation centroid. ``coverage_50`` ...: fraction of genes inside the central predictive
    intervals. ``crps``: mean CRPS over genes. ``lpd``: log predictive density summed over genes
    (Gaussian approximation of the draws, see :func:`log_predictive_density`). Probabilistic
    columns are NaN for point predictions.

    The point prediction of a model is the posterior mean of its ``"mean"`` draws; the
    probabilistic columns use the ``kind`` draws. The truth is the test pseudobulk mean per
    perturbation; the control reference is described in :func:`align` (pass the training
    design as ``reference`` to use training controls and centroids).
    """
    a = align(prediction, test, kind=kind, reference=reference, labels=labels, batch=batch)
    genes = None if top_expressed is None else m.top_expressed_genes(a.control, top_expressed)
    own = np.array([a.centroid_labels.index(p) if p in a.centroid_labels else -1 for p in a.perturbations])
    nan = np.full(len(a.perturbations), np.nan)
    centroid_acc = nan.copy()
    if len(a.centroids) > 1 and np.any(own >= 0):
        centroid_acc[own >= 0] = m.centroid_accuracy(a.point[own >= 0], a.centroids, own[own >= 0])
    cols = {
        "l2": m.l2(a.truth, a.point, genes=genes),
        "rmse": m.rmse(a.truth, a.point),
        "pearson_delta": m.pearson_delta(a.truth, a.point, a.control),
        "pearson_delta_pert": m.pearson_delta(a.truth, a.point, a.perturbed_centroid),
        "mse_top_de": m.mse_top_de(a.truth, a.point, a.control, n=n_de),
        "direction": m.direction_accuracy(a.truth, a.point, a.control, n=n_de),
        "centroid_accuracy": centroid_acc,
    }
    cov = cal.coverage(a.truth, a.draws, levels) if a.draws is not None else [nan] * len(levels)
    for level, c in zip(levels, cov):
        cols[f"coverage_{int(round(level * 100))}"] = c
    cols["crps"] = cal.crps(a.truth, a.draws).mean(1) if a.draws is not None else nan
    cols["lpd"] = cal.log_predictive_density(a.truth, a.draws) if a.draws is not None else nan
    frame = pd.DataFrame(cols)
    frame.insert(0, "perturbation", list(a.perturbations))
    frame.insert(0, "model", a.model)
    mean = frame.drop(columns=["model", "perturbation"]).mean(numeric_only=True)
    mean_row = pd.DataFrame([{"model": a.model, "perturbation": "mean", **mean.to_dict()}])
    return pd.concat([frame, mean_row], ignore_index=True)


def score_baselines(train: Design, test: Design, *, baselines: Sequence[str] = DEFAULT_BASELINES,
                    labels: Sequence[str] | None = None, batch: str | None = None, **score_options) -> pd.DataFrame:
    """The :func:`score` table for each baseline (point predictions: probabilistic columns NaN).

    Baselines are fitted on ``train`` and predict the held-out labels of ``test``. ``score_options``
    go to :func:`score`; pass the same ``reference`` as for the model's table (``reference=train``
    adds the training perturbations to the centroids) so that the rows compare. With ``batch``
    the baselines predict for that batch (its control plus changes learned in training, e.g.
    from other cell lines) and are scored within it.
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise PredictionError(f"unknown baselines {unknown}; choose from {list(BASELINES)}.")
    labels = held_out_labels(test, labels, batch=batch)
    tables = [score(BASELINES[b](train, labels, batch=batch), test, labels=labels, batch=batch, **score_options)
              for b in baselines]
    return pd.concat(tables, ignore_index=True)


def calibration(prediction, test: Design, *, kind: str = "observed_mean", levels: Sequence[float] = cal.LEVELS,
                alpha: float = 0.05, labels: Sequence[str] | None = None, batch: str | None = None
                ) -> cal.CalibrationReport:
    """:func:`calibration_report` of a Prediction's intervals on the held-out perturbations."""
    a = align(prediction, test, kind=kind, labels=labels, batch=batch)
    if a.draws is None:
        raise PredictionError("a point prediction has no intervals to calibrate.")
    return cal.calibration_report(a.truth, a.draws, levels=levels, alpha=alpha)
