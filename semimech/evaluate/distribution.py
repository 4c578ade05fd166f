"""Distributional evaluation: predicted cells against observed cells (energy distance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from semimech._rng import host_rng
from semimech.data.design import Design
from semimech.errors import DesignError, PredictionError
from semimech.evaluate._align import held_out_labels, key_of
from semimech.evaluate.baselines import additive as additive_means
from semimech.evaluate.metrics import energy_distance

__all__ = ["cells_of", "score_distribution", "shifted_control_cells"]


def cells_of(design: Design, label: str) -> np.ndarray:
    """The single-cell rows of one perturbation, ``(cells, genes)`` (a copy)."""
    if design.y is None or np.any(design.n_cells != 1):
        raise DesignError("distributional scores need single-cell rows; pass the design before pseudobulk().")
    if label not in design.perturbations:
        raise DesignError(f"{label!r} is not a perturbation of the design.")
    rows = design.perturbation_index == design.perturbations.index(label)
    y = design.y[np.flatnonzero(rows)]
    return np.array(y.toarray() if hasattr(y, "toarray") else y, dtype=float)


def _subsample(x: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or len(x) <= n:
        return x
    return x[np.sort(rng.choice(len(x), size=n, replace=False))]


def score_distribution(samples: Mapping[str, np.ndarray], test: Design, *, labels: Sequence[str] | None = None,
                       max_cells: int | None = 500, rng_key=0, model: str = "prediction") -> pd.DataFrame:
    """Energy distance between predicted and observed cells, per held-out perturbation.

    Parameters
    ----------
    samples
        Label -> predicted cells ``(cells, genes)`` over the test design's genes (in order).
    test
        Single-cell test design.
    labels
        The perturbations to score (each needs predicted cells in ``samples``); default every observed
        non-control label of ``test``.
    max_cells
        Subsample each side to at most this many cells (the cost is quadratic); ``None``: all.
    rng_key
        Seed of the subsampling.
    model
        Name for the ``model`` column.

    Returns
    -------
    DataFrame with ``model``, ``perturbation``, ``energy_distance`` (see
    :func:`~semimech.evaluate.energy_distance`; 0 for identical distributions), ``n_observed`` and
    ``n_predicted``, plus a ``"mean"`` row.
    """
    labels = held_out_labels(test, labels)
    rng = host_rng(rng_key)
    by_key = {key_of(test, k): k for k in samples}
    rows = []
    for lab in labels:
        k = by_key.get(key_of(test, lab))
        if k is None:
            raise PredictionError(f"no predicted cells for {lab!r}; samples has {list(samples)[:10]}.")
        pred = np.asarray(samples[k], dtype=float)
        if pred.ndim != 2 or pred.shape[1] != test.n_genes:
            raise PredictionError(
                f"predicted cells for {lab!r} must be (cells, {test.n_genes} genes), got {pred.shape}.")
        obs = _subsample(cells_of(test, lab), max_cells, rng)
        pred = _subsample(pred, max_cells, rng)
        rows.append({"model": model, "perturbation": lab, "energy_distance": energy_distance(obs, pred),
                     "n_observed": len(obs), "n_predicted": len(pred)})
    frame = pd.DataFrame(rows)
    mean = {"model": model, "perturbation": "mean", "energy_distance": frame.energy_distance.mean(),
            "n_observed": frame.n_observed.mean(), "n_predicted": frame.n_predicted.mean()}
    return pd.concat([frame, pd.DataFrame([mean])], ignore_index=True)


def shifted_control_cells(train: Design, labels, *, shift: str = "additive") -> dict[str, np.ndarray]:
    """Distributional baselines: the training control cells, shifted by a baseline's change.

    ``shift="none"``: the control cells themselves (no change); ``"additive"``: control cells plus
    the additive baseline's change (sum of single effects) — a mean shift that keeps the
    control's cell-to-cell spread.
    """
    if shift not in ("none", "additive"):
        raise DesignError(f"shift must be 'none' or 'additive', got {shift!r}.")
    ctrl = cells_of(train, train.control)
    labels = held_out_labels(labels) if isinstance(labels, Design) else tuple(labels)
    if shift == "none":
        return {lab: ctrl.copy() for lab in labels}
    means = additive_means(train, labels)
    base = ctrl.mean(0)
    return {lab: ctrl + (means.values[i] - base) for i, lab in enumerate(labels)}
