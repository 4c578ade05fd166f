"""Treatment structure for models: factors, contexts, level pairs (what ``Design.model_data`` adds).

Arrays only; a model sees these through ``design.model_data()``. Pairs are the unordered pairs
of levels that occur together in at least one condition of the design; a model keeps one
interaction term per pair and reuses it wherever the pair occurs (in any context, inside any
larger combination). ``predict`` aligns pairs between designs by the names of their two levels.
Context cells are the ``(context, level)`` and ``(context, pair)`` combinations that occur in
some condition (plates ``context_targets`` and ``context_pairs``): a model keeps a context
deviation for each, and ``predict`` aligns them by context and level names.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def factor_pair_names(factor_names) -> tuple[str, ...]:
    """``"a|b"`` for every unordered pair of factors, a factor with itself included (a <= b)."""
    f = list(factor_names)
    return tuple(f"{f[a]}|{f[b]}" for a in range(len(f)) for b in range(a, len(f)))


def _factor_pair_code(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return (lo * n - lo * (lo - 1) // 2 + (hi - lo)).astype(np.int32)


def level_pairs(target_matrix) -> np.ndarray:
    """``(pairs, 2)`` target indices ``i < j`` of the level pairs that occur in some condition."""
    tm = np.asarray(target_matrix) > 0
    pairs = set()
    for row in tm[tm.sum(1) >= 2]:
        pairs.update(combinations(np.flatnonzero(row).tolist(), 2))
    return np.array(sorted(pairs), dtype=np.int32).reshape(-1, 2)


def pair_labels(targets, pairs) -> tuple[str, ...]:
    return tuple(f"{targets[i]}|{targets[j]}" for i, j in np.asarray(pairs))


def _pair_incidence(tm, pairs) -> tuple[list[int], list[int]]:
    """(condition, pair) incidence: for each condition with two or more levels, the index in ``pairs``
    of every pair of its levels."""
    code = {(int(i), int(j)): q for q, (i, j) in enumerate(pairs)}
    rows, cols = [], []
    for p in np.flatnonzero(tm.sum(1) >= 2):
        for ij in combinations(np.flatnonzero(tm[p]).tolist(), 2):
            rows.append(p)
            cols.append(code[ij])
    return rows, cols


def _occurring(ctx_of_rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(context, col)`` pairs among incidences (sorted) and each incidence's index among them."""
    keys = np.stack([np.asarray(ctx_of_rows, np.int64), np.asarray(cols, np.int64)], axis=1).reshape(-1, 2)
    if keys.shape[0] == 0:
        return np.zeros((0, 2), np.int32), np.zeros(0, np.int32)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    return uniq.astype(np.int32), np.asarray(inverse).ravel().astype(np.int32)


def context_cells(target_matrix, perturbation_context) -> tuple[np.ndarray, np.ndarray]:
    """``(context, target)`` and ``(context, pair)`` index pairs that occur in the design's conditions."""
    tm = np.asarray(target_matrix) > 0
    ctx = np.zeros(tm.shape[0], np.int64) if perturbation_context is None else np.asarray(perturbation_context)
    rows, cols = np.nonzero(tm)
    ct, _ = _occurring(ctx[rows], cols)
    prow, pcol = _pair_incidence(tm, level_pairs(tm))
    cp, _ = _occurring(ctx[np.asarray(prow, np.int64)], pcol)
    return ct, cp


def structure(target_matrix, target_factor, n_factors: int, perturbation_context, contexts) -> dict:
    """The model-facing treatment arrays of a design (see :meth:`semimech.Design.model_data`)."""
    tm = np.asarray(target_matrix) > 0
    n_pert = tm.shape[0]
    level_rows, level_cols = np.nonzero(tm)
    pairs = level_pairs(tm)
    pair_rows, pair_cols = _pair_incidence(tm, pairs)
    tf = np.asarray(target_factor, dtype=np.int32)
    ctx = np.zeros(n_pert, np.int32) if perturbation_context is None else np.asarray(perturbation_context, np.int32)
    n_ctx = 1 if contexts is None else len(contexts)
    untreated = tm.sum(1) == 0
    context_control = np.full(n_ctx, -1, dtype=np.int32)
    for c in range(n_ctx):
        hit = np.flatnonzero(untreated & (ctx == c))
        if hit.size:
            context_control[c] = hit[0]
    context_targets, level_context_col = _occurring(ctx[level_rows], level_cols)
    context_pairs, pair_context_col = _occurring(ctx[np.asarray(pair_rows, np.int64)], pair_cols)
    return {
        "target_factor": tf,
        "n_factors": int(n_factors),
        "perturbation_context": ctx,
        "n_contexts": n_ctx,
        "context_control": context_control,
        "n_levels": tm.sum(1).astype(np.float32),
        "max_levels": int(tm.sum(1).max()) if n_pert else 0,
        "level_rows": level_rows.astype(np.int32),
        "level_cols": level_cols.astype(np.int32),
        "pair_index": pairs,
        "pair_factor_pair": _factor_pair_code(tf[pairs[:, 0]], tf[pairs[:, 1]], int(n_factors)),
        "n_factor_pairs": int(n_factors) * (int(n_factors) + 1) // 2,
        "pair_rows": np.asarray(pair_rows, dtype=np.int32),
        "pair_cols": np.asarray(pair_cols, dtype=np.int32),
        "context_targets": context_targets,
        "context_target_factor": tf[context_targets[:, 1]],
        "level_context_col": level_context_col,
        "context_pairs": context_pairs,
        "pair_context_col": pair_context_col,
    }
