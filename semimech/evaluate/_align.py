"""Truth from a design, and alignment of predictions with it by label and gene (pure numpy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from semimech.data.design import Design
from semimech.errors import DesignError, PredictionError


@dataclasses.dataclass(frozen=True, eq=False)
class PointPrediction:
    """A point prediction of perturbation means (what a baseline returns).

    Attributes
    ----------
    perturbations, genes
        Row and column labels of ``values``.
    values
        Predicted means, ``(perturbations, genes)``, on the data scale.
    model
        Name of the method that made it.
    info
        Notes on how it was made (e.g. targets without a single-perturbation effect).
    """

    perturbations: tuple[str, ...]
    genes: tuple[str, ...]
    values: np.ndarray
    model: str
    info: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        v = np.array(self.values, dtype=float)
        if v.shape != (len(self.perturbations), len(self.genes)):
            raise PredictionError(f"values has shape {v.shape}, expected "
                                  f"({len(self.perturbations)}, {len(self.genes)}) = (perturbations, genes).")
        v.setflags(write=False)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "perturbations", tuple(self.perturbations))
        object.__setattr__(self, "genes", tuple(self.genes))
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))


def batch_rows(design: Design, batch: str | None) -> np.ndarray:
    """Boolean mask of the rows in ``batch`` (all rows for ``None``)."""
    if batch is None:
        return np.ones(design.n_obs, dtype=bool)
    if design.batches is None or batch not in design.batches:
        raise DesignError(f"batch {batch!r} is not a batch of the design (batches: {design.batches}); "
                          "build the Design with batch_key= to evaluate per batch or context.")
    return design.batch_index == design.batches.index(batch)


def observed_in(design: Design, batch: str | None = None) -> tuple[str, ...]:
    """Labels with at least one row (in ``batch``), control first."""
    present = set(np.unique(design.perturbation_index[batch_rows(design, batch)]).tolist())
    return tuple(p for i, p in enumerate(design.perturbations) if i in present)


def perturbation_means(design: Design, labels: Sequence[str] | None = None, *, batch: str | None = None
                       ) -> tuple[tuple[str, ...], np.ndarray]:
    """Pseudobulk mean per perturbation on the data scale, ``(labels, (perturbations, genes))``.

    Rows are weighted by the cells behind them (``n_cells``), so a pseudobulk design gives the
    same means as its single cells. For counts the mean is per unit size factor: summed counts
    divided by summed size factors (the scale of a model's ``mean`` site).
    ``labels`` default to every observed perturbation, control first. ``batch`` restricts to the
    rows of one batch (a cell line or context).
    """
    if design.y is None:
        raise DesignError("a prediction design holds no readouts; pass the test design with data.")
    in_batch = batch_rows(design, batch)
    observed = observed_in(design, batch)
    labels = observed if labels is None else tuple(labels)
    missing = [lab for lab in labels if lab not in observed]
    if missing:
        where = "" if batch is None else f" in batch {batch!r}"
        raise DesignError(f"perturbations with no rows{where} in the design: {missing}.")
    code = {p: i for i, p in enumerate(design.perturbations)}
    out = np.empty((len(labels), design.n_genes))
    for r, lab in enumerate(labels):
        rows = np.flatnonzero((design.perturbation_index == code[lab]) & in_batch)
        y = design.y[rows]
        y = np.asarray(y.toarray() if hasattr(y, "toarray") else y, dtype=float)
        if design.is_counts:
            out[r] = y.sum(0) / design.size_factors[rows].sum()
        else:
            w = design.n_cells[rows]
            out[r] = (w[:, None] * y).sum(0) / w.sum()
    return tuple(labels), out


def cell_counts(design: Design, labels: Sequence[str] | None = None) -> np.ndarray:
    """Cells behind each perturbation's mean (default: every observed label, control first).

    Pass it as ``num_cells`` to :func:`semimech.predict` so that the ``"observed_mean"`` draws
    carry the sampling noise of the test pseudobulk: ``predict(fit, test, num_cells=cell_counts(test))``.
    """
    labels = design.observed_perturbations() if labels is None else tuple(labels)
    code = {p: i for i, p in enumerate(design.perturbations)}
    missing = [lab for lab in labels if lab not in code]
    if missing:
        raise DesignError(f"perturbations not in the design: {missing}.")
    return np.array([design.n_cells[design.perturbation_index == code[lab]].sum() for lab in labels])


def control_mean(design: Design, *, batch: str | None = None) -> np.ndarray:
    """Mean of the design's control rows (in ``batch``), ``(genes,)``; raises when there are none."""
    if design.y is None or not np.any((design.perturbation_index == 0) & batch_rows(design, batch)):
        where = "" if batch is None else f" in batch {batch!r}"
        raise DesignError(f"the design has no control ({design.control!r}) rows{where} to serve as reference; "
                          "keep controls in every split (the split functions do).")
    return perturbation_means(design, [design.control], batch=batch)[1][0]


def perturbation_effects(design: Design) -> tuple[tuple[str, ...], np.ndarray]:
    """Observed change of each perturbation from control, ``(labels, (perturbations, genes))``.

    Without batches: mean minus control mean. With batches: the change is taken within each
    batch that has controls (mean in the batch minus that batch's control mean) and averaged
    over those batches, so that batch or cell-line baselines do not leak into effects; labels
    seen only in batches without controls use the pooled control.
    """
    labels, pooled = perturbation_means(design)
    if design.batches is None:
        return labels, pooled - control_mean(design)
    total = np.zeros_like(pooled)
    count = np.zeros(len(labels))
    for b in design.batches:
        obs = observed_in(design, b) if np.any(batch_rows(design, b)) else ()
        if design.control not in obs:
            continue
        ctrl = control_mean(design, batch=b)
        bl, bm = perturbation_means(design, obs, batch=b)
        idx = [labels.index(lab) for lab in bl]
        total[idx] += bm - ctrl
        count[idx] += 1
    fallback = pooled - control_mean(design)
    eff = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], fallback)
    return labels, eff


def key_of(design: Design, label: str) -> frozenset:
    """Order-free identity of a label: its set of targets (``A+B`` equals ``B+A``)."""
    return frozenset(design.targets_of(label))


def align_rows(design: Design, wanted: Sequence[str], have: Sequence[str], *, what: str) -> np.ndarray:
    """Index into ``have`` for each label of ``wanted``, matching by target set; clear error if absent."""
    index = {key_of(design, h): i for i, h in enumerate(have)}
    rows, missing = [], []
    for w in wanted:
        i = index.get(key_of(design, w))
        (missing.append(w) if i is None else rows.append(i))
    if missing:
        raise PredictionError(
            f"{what} has no rows for perturbations {missing} of the test design (it has {list(have)[:10]}). "
            "Predict every held-out perturbation, e.g. sm.predict(fit, test) or a baseline on the test labels.")
    return np.asarray(rows, dtype=int)


def align_genes(truth_genes: Sequence[str], have: Sequence[str], *, what: str) -> np.ndarray:
    """Index into ``have`` for each truth gene; raises naming the genes that differ."""
    pos = {g: i for i, g in enumerate(have)}
    missing = [g for g in truth_genes if g not in pos]
    extra = sorted(set(have) - set(truth_genes))
    if missing or extra:
        raise PredictionError(
            f"{what} and the test design have different genes: {len(missing)} test genes are not predicted "
            f"(e.g. {missing[:5]}), {len(extra)} predicted genes are not in the test design (e.g. {extra[:5]}). "
            "Predict on the test genes: fit and test must come from the same Design (split it with "
            "semimech.evaluate splits).")
    return np.asarray([pos[g] for g in truth_genes], dtype=int)


def held_out_labels(test: Design, labels: Sequence[str] | None = None, *, batch: str | None = None
                    ) -> tuple[str, ...]:
    """The perturbations to score: ``labels`` or every observed non-control label of ``test`` (in ``batch``)."""
    if labels is None:
        labels = tuple(p for p in observed_in(test, batch) if p != test.control)
    if len(labels) == 0:
        where = "" if batch is None else f" in batch {batch!r}"
        raise DesignError(f"the test design has no perturbed rows{where} to score (only controls).")
    return tuple(labels)
