"""Per-cell guide (gRNA) UMI counts and the guide -> target table of a CRISPR screen.

A :class:`GuideDesign` is to guides what :class:`semimech.Design` is to readouts: a frozen,
arrays-only record read once from AnnData (never modified), validated with errors that name
the problem and the fix. Guide assignment itself is latent and happens in the model
(:mod:`semimech.models.guide_assignment`); here only the observed counts are kept.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from types import MappingProxyType
from typing import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech.errors import DesignError

__all__ = ["NON_TARGETING", "GuideDesign"]

NON_TARGETING = ("non-targeting", "non_targeting", "nontargeting", "NT", "control", "safe-targeting")


@dataclasses.dataclass(frozen=True, eq=False)
class GuideDesign:
    """Observed guide UMI counts per cell and what each guide targets.

    Attributes
    ----------
    counts
        Cells x guides UMI counts, scipy CSR (float32 holding non-negative integers).
    obs_names
        Cell labels, in the order of ``counts`` rows.
    guides
        Guide labels, in the order of ``counts`` columns.
    guide_targets
        The target label of each guide (a non-targeting label for control guides).
    targets
        Sorted targeted genes (non-targeting labels excluded).
    guide_target_index
        For each guide, its index into ``targets``; ``-1`` for non-targeting guides.
    is_control_guide
        For each guide, whether it is non-targeting.
    batches, batch_index
        Batch labels and each cell's batch index; ``None`` without ``batch_key``.
    """

    counts: sp.csr_matrix
    obs_names: tuple[str, ...]
    guides: tuple[str, ...]
    guide_targets: tuple[str, ...]
    targets: tuple[str, ...]
    guide_target_index: np.ndarray
    is_control_guide: np.ndarray
    batches: tuple[str, ...] | None = None
    batch_index: np.ndarray | None = None

    def __post_init__(self):
        for name in ("guide_target_index", "is_control_guide", "batch_index"):
            arr = getattr(self, name)
            if arr is not None:
                arr = np.array(arr)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)
        for a in (self.counts.data, self.counts.indices, self.counts.indptr):
            a.setflags(write=False)

    @classmethod
    def from_anndata(cls, adata, *, guide_counts_key: str = "grna_counts", guide_table=None,
                     guide_key: str | None = None, target_key: str = "target",
                     non_targeting: Sequence[str] = NON_TARGETING, batch_key: str | None = None) -> "GuideDesign":
        """Read guide counts from ``adata.obsm`` and a guide -> target table (nothing is modified).

        Parameters
        ----------
        adata
            Cells x genes AnnData whose ``obsm[guide_counts_key]`` holds per-cell guide UMI
            counts (sparse, dense array or DataFrame with guide names as columns).
        guide_counts_key
            The ``obsm`` key of the guide counts.
        guide_table
            A DataFrame with one row per guide, or the ``adata.uns`` key of one. For an
            unnamed (array) count matrix its rows must follow the matrix columns; for a
            DataFrame count matrix, rows are matched by guide name.
        guide_key
            Column of the table with guide names; ``None``: the table's index.
        target_key
            Column of the table with each guide's target gene.
        non_targeting
            Target labels that mark non-targeting (control) guides.
        batch_key
            Optional ``obs`` column with each cell's batch (replicate, lane).
        """
        if guide_counts_key not in adata.obsm:
            raise DesignError(f"obsm has no {guide_counts_key!r} (keys: {list(adata.obsm.keys())}). "
                              "Pass guide_counts_key= the obsm entry with per-cell guide UMI counts.")
        raw = adata.obsm[guide_counts_key]
        table = _table(adata, guide_table, guide_counts_key)
        names, targets = _guide_names(table, guide_key, target_key)
        counts, names = _counts(raw, names, guide_counts_key)
        ctrl_labels = set(map(str, non_targeting))
        is_ctrl = np.array([t in ctrl_labels for t in targets], dtype=bool)
        tnames = tuple(sorted({t for t, c in zip(targets, is_ctrl) if not c}))
        code = {t: i for i, t in enumerate(tnames)}
        tindex = np.array([-1 if c else code[t] for t, c in zip(targets, is_ctrl)], dtype=np.int32)
        batches = bindex = None
        if batch_key is not None:
            if batch_key not in adata.obs.columns:
                raise DesignError(f"batch_key {batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
            lab = pd.Series(adata.obs[batch_key])
            if lab.isna().any():
                raise DesignError(f"{int(lab.isna().sum())} cells have no {batch_key!r}; label every cell's batch.")
            lab = [str(x) for x in lab]
            batches = tuple(sorted(set(lab)))
            bcode = {b: i for i, b in enumerate(batches)}
            bindex = np.array([bcode[b] for b in lab], dtype=np.int32)
        design = cls(counts=counts, obs_names=tuple(str(o) for o in adata.obs_names), guides=tuple(names),
                     guide_targets=tuple(targets), targets=tnames, guide_target_index=tindex,
                     is_control_guide=is_ctrl, batches=batches, batch_index=bindex)
        if not is_ctrl.any():
            warnings.warn("the guide table has no non-targeting guides (non_targeting="
                          f"{tuple(non_targeting)}): escapers can then be told from perturbed cells only by "
                          "their expression, and baseline expression rests on escapers. Pass non_targeting= "
                          "the label of your control guides.", UserWarning, stacklevel=2)
        elif batches is not None:
            design._warn_batches_without_controls()
        return design

    # ------------------------------------------------------------------ views
    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_guides(self) -> int:
        return self.counts.shape[1]

    @property
    def coords(self) -> Mapping[str, tuple[str, ...]]:
        """Dim name -> labels (``cells``, ``guides``, ``targets``, and ``batches`` if any)."""
        c = {"cells": self.obs_names, "guides": self.guides, "targets": self.targets}
        if self.batches is not None:
            c["batches"] = self.batches
        return MappingProxyType(c)

    def top_guide(self) -> tuple[np.ndarray, np.ndarray]:
        """Each cell's guide with most UMIs (index into ``guides``) and its share of the cell's UMIs."""
        top = np.asarray(self.counts.argmax(axis=1)).ravel()
        total = np.asarray(self.counts.sum(axis=1)).ravel()
        best = np.asarray(self.counts.max(axis=1).todense()).ravel()
        return top.astype(np.int32), np.where(total > 0, best / np.maximum(total, 1), 0.0)

    def is_control_cell(self) -> np.ndarray:
        """Cells whose most-counted guide is non-targeting (the controls of the screen)."""
        top, _ = self.top_guide()
        total = np.asarray(self.counts.sum(axis=1)).ravel()
        return self.is_control_guide[top] & (total > 0)

    def candidate_targets(self, num: int, *, guide_target_index=None) -> np.ndarray:
        """For each cell, the targets of its ``num`` most-counted targeting guides (-1 if fewer).

        ``guide_target_index`` overrides the guide -> target map (e.g. to give non-targeting
        guides a placebo target); guides mapped to -1 are skipped.
        """
        num = int(num)
        if num < 1:
            raise DesignError("num must be at least 1.")
        out = np.full((self.n_cells, num), -1, dtype=np.int32)
        c = self.counts
        tix = self.guide_target_index if guide_target_index is None else np.asarray(guide_target_index)
        for i in range(self.n_cells):
            lo, hi = c.indptr[i], c.indptr[i + 1]
            cols, vals = c.indices[lo:hi], c.data[lo:hi]
            keep = tix[cols] >= 0
            cols, vals = cols[keep], vals[keep]
            seen: list[int] = []
            for k in cols[np.argsort(-vals, kind="stable")]:
                t = int(tix[k])
                if t not in seen:
                    seen.append(t)
                if len(seen) == num:
                    break
            out[i, : len(seen)] = seen
        return out

    def _warn_batches_without_controls(self) -> None:
        ctrl = self.is_control_cell()
        missing = [b for i, b in enumerate(self.batches) if not ctrl[self.batch_index == i].any()]
        if missing:
            warnings.warn(
                f"batches {missing} contain no cells carrying a non-targeting guide: their baseline (batch "
                "offset) is learned only from escapers and unaffected genes, and perturbation effects measured "
                "there are compared with controls across batches, so their error includes the batch-effect "
                "variance, which more cells do not shrink. Put control guides in every batch.",
                UserWarning, stacklevel=3)

    def __repr__(self) -> str:
        nb = 0 if self.batches is None else len(self.batches)
        return (f"GuideDesign({self.n_cells} cells x {self.n_guides} guides, {len(self.targets)} targets, "
                f"{int(self.is_control_guide.sum())} non-targeting guides, {nb} batches)")


def _table(adata, guide_table, key) -> pd.DataFrame:
    if guide_table is None:
        raise DesignError(
            f"cells have guide counts (obsm[{key!r}]) but no guide table was given: semimech cannot tell which "
            "target each guide edits. Pass guide_table= a DataFrame (one row per guide, a target column) or the "
            "adata.uns key holding one."
        )
    if isinstance(guide_table, str):
        if guide_table not in adata.uns:
            raise DesignError(f"adata.uns has no {guide_table!r} (keys: {list(adata.uns.keys())}); "
                              "pass the guide table itself or its uns key.")
        guide_table = adata.uns[guide_table]
    if not isinstance(guide_table, pd.DataFrame):
        raise DesignError(f"guide_table must be a pandas DataFrame, got {type(guide_table).__name__}.")
    return guide_table


def _guide_names(table: pd.DataFrame, guide_key, target_key) -> tuple[list[str], list[str]]:
    if target_key not in table.columns:
        raise DesignError(f"target_key {target_key!r} is not a column of the guide table (columns: {list(table.columns)}).")
    if guide_key is None:
        names = [str(g) for g in table.index]
    elif guide_key not in table.columns:
        raise DesignError(f"guide_key {guide_key!r} is not a column of the guide table (columns: {list(table.columns)}).")
    else:
        names = [str(g) for g in table[guide_key]]
    tg = pd.Series(table[target_key])
    if tg.isna().any():
        bad = [n for n, miss in zip(names, tg.isna()) if miss][:10]
        raise DesignError(f"guides {bad} have no target in the guide table; give each guide a target or "
                          "a non-targeting label.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DesignError(f"guide table lists guides {dup[:10]} more than once; one row per guide.")
    return names, [str(t) for t in tg]


def _counts(raw, names: list[str], key: str) -> tuple[sp.csr_matrix, list[str]]:
    if isinstance(raw, pd.DataFrame):
        cols = [str(c) for c in raw.columns]
        absent = [n for n in names if n not in set(cols)]
        if absent:
            raise DesignError(f"guides {absent[:10]} of the guide table are not columns of obsm[{key!r}] "
                              f"(columns include {cols[:8]}). Fix the table's guide names or drop those guides.")
        untabled = [c for c in cols if c not in set(names)]
        if untabled:
            raise DesignError(f"obsm[{key!r}] has guides {untabled[:10]} that the guide table does not list: "
                              "add them (with their target) to the table.")
        raw = raw[names].to_numpy()
    m = sp.csr_matrix(raw, dtype=np.float64, copy=True) if sp.issparse(raw) else sp.csr_matrix(np.asarray(raw, dtype=np.float64))
    if m.ndim != 2 or m.shape[1] != len(names):
        raise DesignError(
            f"obsm[{key!r}] has {m.shape[1]} guide columns but the guide table lists {len(names)} guides; for an "
            "unnamed count matrix the table must have one row per column, in column order (or store the counts "
            "as a DataFrame with guide names as columns)."
        )
    v = m.data
    if not np.all(np.isfinite(v)):
        raise DesignError(f"obsm[{key!r}] contains NaN or infinite guide counts; guide counts must be UMI counts.")
    if np.any(v < 0) or np.any(np.mod(v, 1) != 0):
        kind = "negative" if np.any(v < 0) else "non-integer"
        raise DesignError(f"obsm[{key!r}] contains {kind} guide counts; the guide model needs raw guide UMI counts "
                          "(non-negative integers), not normalised or log-transformed values.")
    m.eliminate_zeros()
    m.sort_indices()
    return sp.csr_matrix(m, dtype=np.float32), names
