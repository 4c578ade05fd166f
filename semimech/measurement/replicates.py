"""Replicates in a design: duplicated rows, replicate groups, the pooled replicate sd.

Rows of one condition (perturbation x batch) are replicates: a Gaussian model reads their
spread as measurement noise. Rows identical in every readout are almost always copies of one
measurement (a shared control pasted into several blocks, a merged table), and read as
replicates they claim zero noise; :func:`duplicate_rows` finds them so that fits can report them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from semimech.errors import DesignError


def condition_groups(design) -> np.ndarray:
    """One integer per row: its condition (perturbation x batch)."""
    groups = np.asarray(design.perturbation_index, np.int64)
    if design.batch_index is not None:
        groups = groups * (len(design.batches) + 1) + np.asarray(design.batch_index)
    return groups


def _dense(design) -> np.ndarray:
    y = design.y
    return np.asarray(y.toarray() if sp.issparse(y) else y, dtype=float)


def duplicate_rows(design) -> list[tuple[str, ...]]:
    """Sets of rows of one condition whose readouts are all identical (each set: row names).

    Only rows that carry a single observation each (``n_cells == 1``, no within-group sums
    of squares) are compared: identical pseudobulks of many cells are not copies by accident.
    """
    return [tuple(design.obs_names[r] for r in rows) for rows in _duplicate_positions(design)]


def _duplicate_positions(design) -> list[np.ndarray]:
    """:func:`duplicate_rows` as row positions (names need not be unique: a frame's index after ``pd.concat``)."""
    if design.y is None or design.is_counts:
        return []
    single = np.asarray(design.n_cells) == 1
    if design.y_ss is not None:
        single &= ~np.any(np.asarray(design.y_ss) > 0, axis=1)
    groups = condition_groups(design)
    y = _dense(design)
    out = []
    for g in np.unique(groups[single]):
        rows = np.flatnonzero((groups == g) & single)
        if rows.size < 2:
            continue
        _, inverse, counts = np.unique(y[rows], axis=0, return_inverse=True, return_counts=True)
        for k in np.flatnonzero(counts > 1):
            out.append(rows[np.asarray(inverse).ravel() == k])
    return out


def _copies_dropped(design) -> np.ndarray:
    """Which rows to keep: every row but the second and later copies of an exact duplicate."""
    keep = np.ones(design.n_obs, bool)
    for rows in _duplicate_positions(design):
        keep[rows[1:]] = False
    return keep


def replicate_sd(design) -> tuple[np.ndarray, np.ndarray]:
    """Pooled within-condition sd per readout and its degrees of freedom, from replicate rows.

    Exact duplicate rows are kept once. Rows that are pseudobulks contribute their
    within-group sums of squares (cell-level spread) as well.
    """
    if design.y is None or design.is_counts:
        raise DesignError("replicate sds need a design with continuous readouts (not counts, not a prediction design).")
    keep = _copies_dropped(design)
    y, groups, n = _dense(design)[keep], condition_groups(design)[keep], np.asarray(design.n_cells, float)[keep]
    ss = np.zeros(design.n_genes)
    df = 0.0
    for g in np.unique(groups):
        rows = groups == g
        w = n[rows][:, None]
        if w.sum() < 2:
            continue
        mean = (w * y[rows]).sum(0) / w.sum()
        ss += (w * (y[rows] - mean) ** 2).sum(0)
        df += w.sum() - 1.0
    if design.y_ss is not None:
        ss += np.asarray(design.y_ss)[keep].sum(0)
    if df < 1:
        names = sorted({design.obs_names[r] for r in np.flatnonzero(~keep)})[:5]
        hint = f" (exact duplicates dropped: {names})" if names else ""
        raise DesignError("no condition has two or more replicate rows, so no replicate sd can be estimated"
                          f"{hint}. Pass rows measured more than once under one condition.")
    sd = np.sqrt(ss / df)
    if np.any(sd <= 0):
        bad = [g for g, s in zip(design.genes, sd) if s <= 0]
        raise DesignError(f"replicate sd is 0 for readouts {bad[:10]}: replicates never differ there. Give a fixed "
                          "sd for them (semimech.measurement.fixed) or drop them.")
    return sd, np.full(design.n_genes, df)


def residual_df(design) -> int:
    """Rows minus the rank of the additive mean structure (intercept, batches, targets, combinations).

    Without replicates, the noise is identified only by structure: effects shared across
    conditions (a drug given in several contexts, a target in several combinations) leave
    residual degrees of freedom; each combination gets its own column (its interaction), so
    a design where every condition has its own free mean has 0.
    """
    pidx = np.asarray(design.perturbation_index)
    tm = np.asarray(design.target_matrix, float)
    cols = [np.ones((design.n_obs, 1)), tm[pidx]]
    if design.batch_index is not None:
        cols.append(np.eye(len(design.batches))[np.asarray(design.batch_index)][:, 1:])
    combos = np.flatnonzero(tm.sum(1) >= 2)
    if combos.size:
        cols.append((pidx[:, None] == combos[None, :]).astype(float))
    x = np.concatenate(cols, axis=1)
    return int(design.n_obs - np.linalg.matrix_rank(x))


def has_replicates(design) -> bool:
    """Whether some condition is observed more than once (replicate rows, cells, or sums of squares)."""
    if design.y_ss is not None and np.any(np.asarray(design.y_ss) > 0):
        return True
    if np.any(np.asarray(design.n_cells) > 1):
        return True
    groups = condition_groups(design)
    keep = _copies_dropped(design)
    return np.unique(groups[keep]).size < int(keep.sum())
