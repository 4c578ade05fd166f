"""Point metrics on arrays (pure numpy): truth and prediction ``(perturbations, genes)``.

Conventions: ``truth`` holds observed pseudobulk means, ``pred`` predicted means, ``control``
the control mean ``(genes,)``; a *change* (delta) is a mean minus ``control``. Every function
returns one value per perturbation ``(perturbations,)``.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from scipy.spatial.distance import cdist

from semimech.errors import PredictionError

__all__ = ["centroid_accuracy", "direction_accuracy", "energy_distance", "l2", "mse_top_de", "pearson_delta", "rmse",
           "top_de_genes", "top_expressed_genes"]

Matrix = Float[np.ndarray, "perturbations genes"]
Vector = Float[np.ndarray, "genes"]


def _pair(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = np.atleast_2d(np.asarray(truth, float)), np.atleast_2d(np.asarray(pred, float))
    if truth.shape != pred.shape:
        raise PredictionError(f"truth {truth.shape} and prediction {pred.shape} differ in shape; "
                              "align them by perturbation and gene first (semimech.evaluate.score does).")
    return truth, pred


def top_expressed_genes(expression: Vector, n: int) -> np.ndarray:
    """Indices of the ``n`` genes with the highest ``expression`` (e.g. the control mean)."""
    expression = np.asarray(expression, float)
    return np.sort(np.argsort(-expression, kind="stable")[: min(n, expression.size)])


def top_de_genes(truth: Matrix, control: Vector, n: int = 20) -> np.ndarray:
    """Per perturbation, indices of the ``n`` genes with the largest observed ``|truth - control|``."""
    delta = np.abs(np.atleast_2d(truth) - np.asarray(control))
    return np.argsort(-delta, axis=1, kind="stable")[:, : min(n, delta.shape[1])]


def l2(truth: Matrix, pred: Matrix, *, genes=None) -> np.ndarray:
    """Euclidean distance between prediction and truth over genes, per perturbation.

    ``genes`` optionally restricts to an index (e.g. ``top_expressed_genes(control, 1000)``,
    the L2 of Ahlmann-Eltze et al. 2025 on the 1000 most expressed genes).
    """
    truth, pred = _pair(truth, pred)
    if genes is not None:
        truth, pred = truth[:, genes], pred[:, genes]
    return np.sqrt(((truth - pred) ** 2).sum(axis=1))


def rmse(truth: Matrix, pred: Matrix, *, genes=None) -> np.ndarray:
    """Root mean squared error over genes, per perturbation (``l2 / sqrt(genes)``).

    The RMSE pooled over perturbations (every perturbation x gene entry, as in the HepG2 task
    of the shared data README) is ``sqrt(mean(rmse ** 2))`` of these values.
    """
    truth, pred = _pair(truth, pred)
    n = truth.shape[1] if genes is None else len(np.atleast_1d(genes))
    return l2(truth, pred, genes=genes) / np.sqrt(n)


def pearson_delta(truth: Matrix, pred: Matrix, control: Vector) -> np.ndarray:
    """Pearson correlation over genes of ``pred - control`` with ``truth - control`` (GEARS).

    NaN where either change is constant (e.g. the "no change" baseline). Pass the mean of the
    perturbation centroids as ``control`` for Systema's perturbed-centroid reference.
    """
    truth, pred = _pair(truth, pred)
    dt, dp = truth - control, pred - control
    dt = dt - dt.mean(1, keepdims=True)
    dp = dp - dp.mean(1, keepdims=True)
    den = np.sqrt((dt**2).sum(1) * (dp**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dt * dp).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def mse_top_de(truth: Matrix, pred: Matrix, control: Vector, *, n: int = 20) -> np.ndarray:
    """Mean squared error on each perturbation's ``n`` most changed genes (largest ``|truth - control|``)."""
    truth, pred = _pair(truth, pred)
    idx = top_de_genes(truth, control, n)
    return np.mean((np.take_along_axis(truth, idx, 1) - np.take_along_axis(pred, idx, 1)) ** 2, axis=1)


def direction_accuracy(truth: Matrix, pred: Matrix, control: Vector, *, n: int | None = 20) -> np.ndarray:
    """Fraction of genes where the predicted change has the observed change's sign.

    On each perturbation's ``n`` most changed genes (largest ``|truth - control|``; ``None``: all
    genes). Signs compare with ``numpy.sign``, so an exactly zero change matches only zero.
    """
    truth, pred = _pair(truth, pred)
    idx = top_de_genes(truth, control, truth.shape[1] if n is None else n)
    st = np.sign(np.take_along_axis(truth - control, idx, 1))
    sp_ = np.sign(np.take_along_axis(pred - control, idx, 1))
    return np.mean(st == sp_, axis=1)


def centroid_accuracy(pred: Matrix, centroids: Matrix, own: np.ndarray) -> np.ndarray:
    """Systema's centroid accuracy: how much closer a prediction is to its own true centroid.

    For prediction ``i`` with true centroid ``centroids[own[i]]``, the fraction of the *other*
    centroids that are strictly farther (Euclidean) from the prediction than its own; 1 means
    the prediction identifies its perturbation, 0.5 is chance. Following Viñas Torné et al.
    (2025, Nat Biotechnol), ``centroids`` should hold every perturbation's observed mean (test and
    training), and distances are between profiles (the reference, control or perturbed
    centroid, cancels in a Euclidean distance).
    """
    pred = np.atleast_2d(np.asarray(pred, float))
    centroids = np.atleast_2d(np.asarray(centroids, float))
    own = np.asarray(own, dtype=int)
    if centroids.shape[0] < 2:
        raise PredictionError("centroid_accuracy needs at least two centroids to compare against.")
    if pred.shape[1] != centroids.shape[1] or own.shape != (pred.shape[0],):
        raise PredictionError("pred, centroids and own disagree in shape: pred (P, G), centroids (Q, G), own (P,).")
    d = cdist(pred, centroids)
    self_d = d[np.arange(len(own)), own]
    farther = (d > self_d[:, None]).sum(1)  # the own centroid is never strictly farther than itself
    return farther / (centroids.shape[0] - 1)


def energy_distance(x: Float[np.ndarray, "n genes"], y: Float[np.ndarray, "m genes"]) -> float:
    """Energy distance between two samples of profiles (e.g. observed cells vs predicted cells).

    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with Euclidean norms (Székely & Rizzo; the squared
    form, zero iff the distributions agree); the within-sample terms average over distinct
    pairs (U-statistics), so the estimate is unbiased and may be slightly negative.
    """
    x = np.asarray(x, float).reshape(len(x), -1)
    y = np.asarray(y, float).reshape(len(y), -1)
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise PredictionError("energy_distance needs two samples of at least 2 rows over the same genes.")

    def mean_dist(a, b, *, same):
        d = cdist(a, b)
        return d.sum() / (len(a) * (len(a) - 1)) if same else d.mean()

    return float(2 * mean_dist(x, y, same=False) - mean_dist(x, x, same=True) - mean_dist(y, y, same=True))
