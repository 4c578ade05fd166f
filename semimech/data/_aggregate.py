"""Aggregation of a :class:`~semimech.data.design.Design`: pseudobulk and control summaries.

Kept apart from the record itself; :meth:`Design.pseudobulk` and :meth:`Design.model_data` call in.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from semimech.errors import DesignError


def pseudobulk(design, *, by_batch: bool = True):
    """Aggregate rows per perturbation (and batch); see :meth:`Design.pseudobulk`."""
    if design.y is None:
        raise DesignError("cannot pseudobulk a prediction design.")
    b = design.batch_index if (by_batch and design.batch_index is not None) else np.zeros(design.n_obs, np.int32)
    keys = np.stack([design.perturbation_index, b], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    G = sp.csr_matrix((np.ones(design.n_obs), (inverse, np.arange(design.n_obs))), shape=(len(uniq), design.n_obs))
    n_cells = np.asarray(G @ design.n_cells).ravel()
    sums = np.asarray((G @ design.y).todense()) if sp.issparse(design.y) else G @ np.asarray(design.y)
    y = sums if design.is_counts else sums / np.asarray(G.sum(1))
    y_ss = None
    if not design.is_counts:
        # within-group sum of squares, so a Gaussian model of the pseudobulk is exact
        sq = design.y.multiply(design.y) if sp.issparse(design.y) else np.asarray(design.y) ** 2
        sumsq = np.asarray((G @ sq).todense()) if sp.issparse(sq) else G @ sq
        prev = 0.0 if design.y_ss is None else G @ np.asarray(design.y_ss)
        # rows may already be means of n_cells cells: weight by n_cells
        w = design.n_cells[:, None]
        if np.any(design.n_cells != 1):
            sums = G @ (w * design.dense_y())
            sumsq = G @ (w * design.dense_y() ** 2)
            y = sums / n_cells[:, None]
        y_ss = np.maximum(sumsq - n_cells[:, None] * y**2, 0.0) + prev
    sf = np.asarray(G @ design.size_factors).ravel() if design.is_counts else np.ones(len(uniq))
    has_batch = by_batch and design.batches is not None
    names = tuple(
        design.perturbations[p] + (f"|{design.batches[bb]}" if has_batch else "") for p, bb in uniq
    )
    return dataclasses.replace(
        design, y=np.asarray(y, dtype=float), obs_names=names, perturbation_index=uniq[:, 0].astype(np.int32),
        batch_index=uniq[:, 1].astype(np.int32) if has_batch else None,
        batches=design.batches if has_batch else None, size_factors=sf, n_cells=n_cells, y_ss=y_ss,
    )


def control_summaries(design) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-gene control location and scale, and the readout's noise floor; the same for cells
    and their pseudobulk.

    Counts: log of the mean rate (per unit size factor), scale 1, floor 0. Continuous: the
    cell-level mean and sd of the controls (pooled from means and within-group sums of squares
    when rows are pseudobulks), falling back to all rows' sd where the controls do not vary.
    The floor is ``s * sqrt(3 / N)`` over all ``N`` cells, with ``s`` the 90th percentile of
    the genes' cell-level sd (a typical expressed gene): by the rule of three, a gene never seen
    expressed in ``N`` cells is expressed in fewer than ``3 / N`` of them, so its cell-level sd
    is at most about an expressed gene's sd times ``sqrt(3 / N)``.
    """
    # every untreated row: the control of a label design, each context's untreated condition in a factor design
    untreated = np.asarray(design.target_matrix).sum(1) == 0
    ctrl = np.flatnonzero(untreated[design.perturbation_index])
    if design.is_counts:
        y = design.y[ctrl]
        y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=float)
        rate = y.sum(0) / design.size_factors[ctrl].sum()
        loc = np.log(rate + 1e-3 / max(design.size_factors[ctrl].mean(), 1e-12))
        return loc.astype(np.float32), np.ones(design.n_genes, np.float32), 0.0
    loc, sd = pooled_moments(design, ctrl)
    _, sd_all = pooled_moments(design, np.arange(design.n_obs))
    scale = np.maximum(np.where(sd > 0, sd, sd_all), 1e-3)
    expressed = sd_all[sd_all > 0]
    typical = float(np.quantile(expressed, 0.9)) if expressed.size else 1.0
    floor = typical * float(np.sqrt(3.0 / max(design.n_cells.sum(), 3.0)))
    return loc.astype(np.float32), scale.astype(np.float32), max(floor, 1e-6)


def readout_summaries(y) -> tuple[np.ndarray, np.ndarray]:
    """Each readout's centre and spread over the rows of ``y`` (rows x genes, the model's scale): the mean and
    sd of the rows' values, an sd that is zero or not finite taken as 1, and every sd at least 5% of the largest.

    The data-centred constants of :func:`semimech.models.signalling_network.network_option` (readout offsets
    and scales are priced in them); :meth:`Design.model_data` gives them for continuous readouts
    (``readout_center``, ``readout_spread``), so that a fit with a row mask (a cross-validation fold) computes
    them from its kept rows."""
    with np.errstate(all="ignore"):
        if sp.issparse(y):  # moments from the non-zeros (no dense copy)
            center = np.asarray(y.mean(axis=0), dtype=float).ravel()
            sq = np.asarray(y.multiply(y).mean(axis=0), dtype=float).ravel()
            spread = np.sqrt(np.maximum(sq - center**2, 0.0))
        else:
            yy = np.asarray(y, dtype=float)
            has_nan = np.isnan(yy).any()
            center = (np.nanmean if has_nan else np.mean)(yy, axis=0)
            spread = (np.nanstd if has_nan else np.std)(yy, axis=0)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    spread = np.maximum(spread, 0.05 * np.nanmax(spread))
    return center, spread


def pooled_moments(design, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell-level mean and sd of continuous readouts over ``rows`` (rows may be pseudobulks)."""
    y = design.y[rows]
    y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=float)
    n = design.n_cells[rows][:, None]
    total = n.sum()
    mean = (n * y).sum(0) / total
    ss = (n * (y - mean) ** 2).sum(0)
    if design.y_ss is not None:
        ss = ss + np.asarray(design.y_ss)[rows].sum(0)
    return mean, np.sqrt(ss / max(total - 1.0, 1.0))
