"""The experimental design: the only place that knows AnnData and pandas.

A :class:`Design` freezes what a model needs from a perturbation experiment: the readout
matrix, which perturbation (a set of targets) and which batch each row received, size factors,
and the category encodings. Models see only ``design.model_data()``, a dict of arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech.data import _conditions
from semimech.data import _factors as fx
from semimech.data import _validate as v
from semimech.data._aggregate import control_summaries, pseudobulk, readout_summaries
from semimech.data._structure import context_cells, factor_pair_names, level_pairs, pair_labels, structure
from semimech.data._targets import encode_targets, parse_label, target_gene_index
from semimech.errors import DesignError

__all__ = ["Design"]


@dataclasses.dataclass(frozen=True, eq=False)
class Design:
    """A frozen perturbation design: readouts, conditions, batches, encodings.

    Build it with :meth:`from_anndata`, :meth:`from_frame` or :meth:`from_midas`; do not call
    the constructor directly. Rows are cells (or pseudobulk samples); columns are genes (readouts).

    **Conditions.** A condition is a set of treatments plus a context. Two ways to say it:

    - *labels* (``perturbation_key``): one column with a label per row, combinations joined by
      ``target_sep`` (``"KLF1+MAP2K6"``); ``control`` labels untreated rows.
    - *factors* (``factors``, ``context_key``): each treatment is a level of a named factor
      (stimulus, inhibitor, genetic perturbation, dose, ...); ``factors={"stimulus": "stim",
      "inhibitor": ["inh1", "inh2"]}`` maps factor names to one or several columns. A cell holds
      one level, several levels (a list/tuple/set, or a string joined by ``target_sep``:
      ``"IL1a+INS"`` is two stimulus levels), or none (a missing value, ``""``, a value in
      ``none`` or the control label). ``context_key`` names a column with one context (cell
      line) per row. ``perturbation_key`` may be combined with factors: it becomes the factor
      ``"perturbation"``.

    A condition is identified by its set of levels and its context: labels, aliases and the
    order of levels never matter. Factor designs get canonical labels: levels in factor order
    joined by ``target_sep``, ``control`` for no level, and ``"@context"`` with contexts
    (``"TGFa+MEK12i+PI3Ki@HepG2"``, ``"control@HepG2"``). Untreated conditions come first, one
    per context; ``control`` is the first of them. MIDAS tables map directly:
    ``Design.from_midas(read_midas(path), time=30)`` (stimuli and inhibitors become factors
    ``"stimulus"`` and ``"inhibitor"``, the cell line the context; to model log10 values, pass
    ``table.assign(value=np.log10(table["value"] + 1))``).

    **Prediction.** :func:`semimech.predict` takes labels (``"TGFa+MEK12i@HepG2"``), or a whole
    table of conditions across contexts in one call: a DataFrame with the training factor columns
    (or columns named after the factors) and the context column (or ``"context"``), or a list of
    dicts such as ``{"stimulus": ["IL1a", "TGFa"], "inhibitor": "MEK12i", "context": "HepG2"}``
    (missing factors mean no level). Any set of seen levels can be asked for, including
    combinations never seen together. See :meth:`with_conditions`.

    Attributes
    ----------
    y
        Readouts, rows x genes: a numpy array or a scipy CSR matrix (CSR stays CSR); ``None`` in a
        prediction design (:meth:`with_perturbations`). Counts are held as int32 (exact, no
        float64 copy of a large count matrix), other readouts as float64; :meth:`dense_y` gives floats.
    obs_names, genes
        Row and column labels.
    perturbations
        Condition labels; the control label is first.
    perturbation_index
        For each row, its index into ``perturbations``.
    targets
        Sorted names of the treatment levels (perturbed genes, drugs, stimuli).
    target_matrix
        ``perturbations x targets`` 0/1 matrix: which levels each condition holds.
    control
        The control label (factor designs with contexts: the first context's untreated condition).
    batches, batch_index
        Batch labels and each row's batch index; ``None`` when no batch is given.
    size_factors
        Per-row library-size factors (mean 1); ones for continuous readouts.
    is_counts
        True when ``y`` holds non-negative integer counts.
    n_cells
        Number of single cells behind each row (1 for single-cell data; group sizes after
        :meth:`pseudobulk`).
    target_sep
        The separator joining the levels of a combination in a label (default ``"+"``).
    y_ss
        For continuous readouts after :meth:`pseudobulk`: each row's within-group sum of squares about
        its mean, rows x genes, so a Gaussian model of the pseudobulk is exact; ``None`` otherwise.
    noise
        The measurement-error model attached by :meth:`with_noise`; ``None`` without one.
    target_factors
        Factor of each target, aligned with ``targets``; ``None`` for label designs (one factor,
        ``"perturbation"``).
    contexts, perturbation_context
        Sorted context labels and each condition's index into them; ``None`` without contexts.
    factor_spec
        The factor columns, context column and "none" values the design was read with (a
        prediction table is read the same way); ``None`` for label designs.

    Models see ``model_data()``; its treatment keys are documented there.
    """

    y: np.ndarray | sp.csr_matrix | None
    obs_names: tuple[str, ...]
    genes: tuple[str, ...]
    perturbations: tuple[str, ...]
    perturbation_index: np.ndarray
    targets: tuple[str, ...]
    target_matrix: np.ndarray
    control: str
    batches: tuple[str, ...] | None
    batch_index: np.ndarray | None
    size_factors: np.ndarray
    is_counts: bool
    n_cells: np.ndarray
    target_sep: str = "+"
    y_ss: np.ndarray | None = None
    noise: Any = None
    target_factors: tuple[str, ...] | None = None
    contexts: tuple[str, ...] | None = None
    perturbation_context: np.ndarray | None = None
    factor_spec: fx.FactorSpec | None = None

    def __post_init__(self):
        for name in ("perturbation_index", "target_matrix", "batch_index", "size_factors", "n_cells", "y_ss",
                     "perturbation_context"):
            arr = getattr(self, name)
            if arr is not None:
                arr = np.array(arr)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)
        if isinstance(self.y, np.ndarray):
            y = self.y.copy() if self.y.flags.writeable else self.y
            y.setflags(write=False)
            object.__setattr__(self, "y", y)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_anndata(
        cls,
        adata,
        *,
        perturbation_key: str | None = None,
        control: str | None = None,
        factors=None,
        context_key: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
        size_factor_key: str | None = None,
        target_sep: str = "+",
        counts: bool | None = None,
        genes: Sequence[str] | None = None,
        none: Sequence[str] = ("none",),
        single_valued: Sequence[str] = (),
    ) -> "Design":
        """Read a design from an AnnData object (never modified).

        Parameters
        ----------
        adata
            Cells x genes AnnData.
        perturbation_key
            ``obs`` column with the condition label of each cell; combinations join their
            targets with ``target_sep`` (``"KLF1+MAP2K6"``).
        control
            The label of unperturbed (control) cells; it must occur in the column. With
            ``factors`` (default ``"control"``): the label of untreated conditions.
        factors, context_key, none, single_valued
            Treatment factors (see the class docstring): ``{factor: column(s)}`` of ``obs``,
            the context (cell line) column, values meaning "no level", and factors that allow
            at most one level per row (the context always does).
        batch_key
            Optional ``obs`` column with the batch (replicate, lane, plate) of each cell.
        layer
            Take readouts from ``adata.layers[layer]`` instead of ``adata.X``.
        size_factor_key
            Optional ``obs`` column with library-size factors. For counts without it, size
            factors are total counts divided by their mean.
        counts
            Whether the readouts are counts. ``None`` (default) decides from the data: all
            values non-negative whole numbers no larger than 2**31 - 1 (integer or float
            dtype). ``True`` insists and raises if they are not.
        genes
            Optional subset of ``var_names`` to model.
        """
        _check_anndata(adata)
        target_sep = v.target_sep(target_sep)
        if perturbation_key is not None and perturbation_key not in adata.obs.columns:
            raise DesignError(
                f"perturbation_key {perturbation_key!r} is not a column of adata.obs "
                f"(columns: {list(adata.obs.columns)}). Pass the column that holds each cell's perturbation label."
            )
        spec = _factor_spec(adata.obs.columns, perturbation_key, factors, context_key, none, single_valued, "adata.obs")
        if batch_key is not None and batch_key not in adata.obs.columns:
            raise DesignError(f"batch_key {batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
        if layer is not None and layer not in adata.layers:
            raise DesignError(f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}).")
        if layer is None and adata.X is None:
            raise DesignError(
                f"adata.X is None: this AnnData holds its readouts in a layer. Pass layer= one of "
                f"{list(adata.layers.keys())} (e.g. layer='counts' for raw counts)." if len(adata.layers) else
                "adata.X is None and adata has no layers: this AnnData holds no readouts. Set adata.X to the "
                "cells x genes matrix first."
            )
        X = adata.X if layer is None else adata.layers[layer]
        var_names = [str(g) for g in adata.var_names]
        if isinstance(genes, str):  # one gene, not its letters
            genes = [genes]
        if genes is not None:
            missing = [g for g in genes if g not in set(var_names)]
            if missing:
                raise DesignError(f"genes not in adata.var_names: {missing[:10]}. Model only genes present in the data.")
            v.unique_names(list(genes), what="genes=", fix="List each gene once.")
            v.unique_names([g for g in var_names if g in set(genes)], what="adata.var_names of the genes= chosen",
                           fix="Call adata.var_names_make_unique() (or pick the columns yourself) first.")
            col = {g: i for i, g in enumerate(var_names)}
            idx = [col[g] for g in genes]
            X = X[:, idx]
            var_names = list(genes)
        sf = None
        obs_names = [str(o) for o in adata.obs_names]
        if size_factor_key is not None:
            if size_factor_key not in adata.obs.columns:
                raise DesignError(f"size_factor_key {size_factor_key!r} is not a column of adata.obs.")
            sf = v.numeric_column(adata.obs[size_factor_key], key=size_factor_key, what="size_factor_key",
                                  rows=obs_names, fix=_SF_FIX)
        v.warn_repeated_rows(obs_names, fix="Call adata.obs_names_make_unique() first.")
        return cls._build(
            y=X,
            obs_names=obs_names,
            genes=var_names,
            labels=None if perturbation_key is None else adata.obs[perturbation_key],
            control=control,
            spec=spec,
            table=adata.obs,
            batch_labels=None if batch_key is None else adata.obs[batch_key],
            size_factors=sf,
            size_factor_key=size_factor_key,
            counts=counts,
            target_sep=target_sep,
            n_cells=None,
        )

    @classmethod
    def from_frame(
        cls,
        frame,
        *,
        readouts: Sequence[str],
        perturbation_key: str | None = None,
        control: str | None = None,
        factors=None,
        context_key: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        n_cells_key: str | None = None,
        target_sep: str = "+",
        counts: bool | None = None,
        none: Sequence[str] = ("none",),
        single_valued: Sequence[str] = (),
    ) -> "Design":
        """Read a bulk or pseudobulk design from a pandas DataFrame (never modified).

        Rows are samples; ``readouts`` name the measured columns; ``perturbation_key``,
        ``batch_key``, ``size_factor_key`` and ``n_cells_key`` name condition columns;
        ``factors``, ``context_key``, ``none`` and ``single_valued`` describe treatment factors
        (see the class docstring and :meth:`from_anndata`); ``control``, ``target_sep`` and ``counts``
        as in :meth:`from_anndata`.
        """
        _check_frame(frame)
        target_sep = v.target_sep(target_sep)
        cols = list(frame.columns)
        spec = _factor_spec(cols, perturbation_key, factors, context_key, none, single_valued, "the frame")
        for key, what in ((perturbation_key, "perturbation_key"), (batch_key, "batch_key"),
                          (size_factor_key, "size_factor_key"), (n_cells_key, "n_cells_key")):
            if key is not None and key not in cols:
                raise DesignError(f"{what} {key!r} is not a column of the frame (columns: {cols}).")
        if isinstance(readouts, str):  # one column, not its letters
            readouts = [readouts]
        elif not isinstance(readouts, Iterable):
            raise DesignError(f"readouts= must name the measured columns (a list of column names), got "
                              f"{type(readouts).__name__} {readouts!r:.40}.")
        readouts = list(readouts)  # a generator or other one-pass iterable is read once
        missing = [r for r in readouts if r not in cols]
        if missing:
            raise DesignError(f"readout columns not in the frame: {missing}.")
        if len(readouts) == 0:
            raise DesignError("readouts is empty: name at least one measured column.")
        y = v.frame_readouts(frame, list(readouts))
        obs_names = [str(i) for i in frame.index]
        v.warn_repeated_rows(obs_names, fix="Give the frame a unique index first (frame.reset_index(drop=True), or "
                                            "pd.concat(..., ignore_index=True)).")
        return cls._build(
            y=y,
            obs_names=obs_names,
            genes=[str(r) for r in readouts],
            labels=None if perturbation_key is None else frame[perturbation_key],
            control=control,
            spec=spec,
            table=frame,
            batch_labels=None if batch_key is None else frame[batch_key],
            size_factors=None if size_factor_key is None else v.numeric_column(
                frame[size_factor_key], key=size_factor_key, what="size_factor_key", rows=obs_names, fix=_SF_FIX),
            size_factor_key=size_factor_key,
            counts=counts,
            target_sep=target_sep,
            n_cells=None if n_cells_key is None else v.numeric_column(
                frame[n_cells_key], key=n_cells_key, what="n_cells_key", rows=obs_names,
                fix="n_cells must be the number of cells behind each row: convert the column (pd.to_numeric)."),
        )

    @classmethod
    def from_midas(cls, table, *, time=None, readouts: Sequence[str] | None = None,
                   control: str = "control", baseline_time=None) -> "Design":
        """A factor design from a MIDAS table (:func:`semimech.datasets.read_midas` output, never modified).

        Each sample (MIDAS row) at the chosen ``time`` becomes a row; its stimuli and inhibitors
        become levels of the factors ``"stimulus"`` and ``"inhibitor"`` (a combined stimulus such
        as ``"IL1a+INS"`` is two stimulus levels; ``"none"`` is no level) and its cell line the
        context (when the file names cell lines). Values are taken as they are: for log10 values
        pass ``table.assign(value=np.log10(table["value"] + 1))``. ``time`` is required when the
        table holds several time points; ``readouts`` selects and orders readouts; ``control``
        (default ``"control"``) is the label of untreated conditions, as in :meth:`from_anndata` with factors.

        ``time="contexts"``: every time point is kept and is the context (``design.contexts``:
        ``"0"``, ``"30"``, ...; the table must name one cell line: select it first), for a model fitted
        to all time points at once, e.g. ``signalling_network`` with ``times="contexts"`` (each
        context's time since the stimulus).

        ``baseline_time`` (CellNOpt's convention, e.g. ``0``): the samples measured at that time are the
        cells before the stimulus acted, so they join the design *without their stimuli* (an inhibitor,
        given before the stimulus, keeps its level): files such as ToyMMB or LiverDREAM have no
        unstimulated sample at the later time, only these. Their values are taken as they are, on the
        scale of the rest.
        """
        frame, reads, context = _conditions.midas_frame(table, time=time, readouts=readouts,
                                                        baseline_time=baseline_time)
        return cls.from_frame(frame, readouts=reads, factors={"stimulus": "stimuli", "inhibitor": "inhibitors"},
                              context_key=context, control=control)

    @classmethod
    def _build(cls, *, y, obs_names, genes, labels, control, batch_labels, size_factors, counts,
               target_sep, n_cells, spec=None, table=None, size_factor_key=None) -> "Design":
        control = v.control_label(control)  # target_sep: checked by the constructors, this method's only callers
        n = len(obs_names)
        if n == 0 or len(genes) == 0:
            raise DesignError(f"empty design: {n} rows x {len(genes)} genes. Pass data with at least one cell and one gene.")
        v.unique_names(genes, what="gene names", fix="Call adata.var_names_make_unique(), or pass genes= / "
                       "readouts= naming each gene once.")
        y = v.readouts(y, genes=genes, rows=obs_names)
        is_counts = v.count_mode(y, counts)
        y = v.stored(y, is_counts)
        extra = {}
        if spec is None:  # a label design, exactly as before factors existed
            if control is None:
                raise DesignError("control= is required with perturbation_key: the label of unperturbed rows.")
            labels = v.labels(labels, what="perturbation label", sep=target_sep)
            v.check_control(labels, control)
            perturbations = (control,) + tuple(sorted(set(labels) - {control}))
            v.check_perturbed(perturbations, control)
            code = {p: i for i, p in enumerate(perturbations)}
            perturbation_index = np.array([code[p] for p in labels], dtype=np.int32)
            targets, target_matrix = encode_targets(perturbations, control, target_sep)
        else:
            if labels is not None and control is not None:
                v.check_control(v.labels(labels, what="perturbation label", sep=target_sep), control)
            control = "control" if control is None else control
            keys, inverse, _ = fx.row_conditions({c: table[c].tolist() for c in spec.columns},
                                                 row_names=list(obs_names), spec=spec, control=control, sep=target_sep)
            cond = fx.encode(keys, inverse, factor_names=spec.names, control=control, sep=target_sep,
                             has_context=spec.context_key is not None)
            perturbations, perturbation_index, control = cond.perturbations, cond.perturbation_index, cond.control
            targets, target_matrix = cond.targets, cond.target_matrix
            extra = dict(target_factors=cond.target_factors, contexts=cond.contexts,
                         perturbation_context=cond.perturbation_context, factor_spec=spec)
        untreated = np.asarray(target_matrix).sum(1)[perturbation_index] == 0
        batches = batch_index = None
        if batch_labels is not None:
            blabels = v.labels(batch_labels, what="batch label")
            batches = tuple(sorted(set(blabels)))
            bcode = {b: i for i, b in enumerate(batches)}
            batch_index = np.array([bcode[b] for b in blabels], dtype=np.int32)
            v.warn_batches_without_controls(batches, batch_index, untreated)
        size_factors = v.size_factors(size_factors, y, is_counts, n, key=size_factor_key, rows=obs_names)
        n_cells = np.ones(n) if n_cells is None else v.positive(n_cells, "n_cells")
        return cls(
            y=y, obs_names=tuple(obs_names), genes=tuple(genes), perturbations=perturbations,
            perturbation_index=perturbation_index, targets=targets, target_matrix=target_matrix,
            control=control, batches=batches, batch_index=batch_index, size_factors=size_factors,
            is_counts=is_counts, n_cells=n_cells, target_sep=target_sep, **extra,
        )

    # ------------------------------------------------------------------ views
    @property
    def n_obs(self) -> int:
        return len(self.obs_names)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def coords(self) -> Mapping[str, tuple[str, ...]]:
        """Dimension name -> labels; the same names as the model plates and ArviZ dims."""
        c = {"cells": self.obs_names, "genes": self.genes, "perturbations": self.perturbations,
             "targets": self.targets}
        if self.batches is not None:
            c["batches"] = self.batches
        if self.noise is not None and self.noise.grouped:
            c["noise_groups"] = self.noise.group_names()
        if self.factor_spec is not None:
            c["factors"] = self.factor_names
            c["factor_pairs"] = factor_pair_names(self.factor_names)
            c["target_pairs"] = pair_labels(self.targets, level_pairs(self.target_matrix))
        if self.contexts is not None:
            c["contexts"] = self.contexts
            ct, cp = context_cells(self.target_matrix, self.perturbation_context)
            pairs = pair_labels(self.targets, level_pairs(self.target_matrix))
            c["context_targets"] = tuple(f"{self.targets[t]}@{self.contexts[k]}" for k, t in ct)
            c["context_pairs"] = tuple(f"{pairs[q]}@{self.contexts[k]}" for k, q in cp)
        return MappingProxyType(c)

    @property
    def factor_names(self) -> tuple[str, ...]:
        """Factor names in order (``("perturbation",)`` for a label design)."""
        return (fx.PERTURBATION_FACTOR,) if self.factor_spec is None else self.factor_spec.names

    def dense_y(self, dtype=np.float64) -> np.ndarray:
        """Readouts as a dense float array (a copy, float64 unless ``dtype``); raises on a prediction design.

        ``y`` itself holds counts as int32 (dense or CSR) and other readouts as float64.
        """
        if self.y is None:
            raise DesignError("this is a prediction design: it holds no readouts.")
        y = self.y.astype(dtype) if sp.issparse(self.y) else self.y
        return y.toarray() if sp.issparse(y) else np.array(y, dtype=dtype)

    def targets_of(self, label: str) -> tuple[str, ...]:
        """The targets a condition label edits (empty for the control)."""
        if self.factor_spec is None:
            return parse_label(label, self.control, self.target_sep)
        i = self._label_code.get(label)
        if i is not None:
            return tuple(t for t, on in zip(self.targets, self.target_matrix[i]) if on)
        base, _ = fx.split_context(label, self.contexts)
        return parse_label(base, self.untreated_label, self.target_sep)

    @property
    def untreated_label(self) -> str:
        """The label of no treatment, without the context (``"control"``)."""
        return fx.split_context(self.control, self.contexts)[0] if self.contexts is not None else self.control

    @functools.cached_property
    def _label_code(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.perturbations)}

    def condition_keys(self) -> list[tuple[frozenset, str | None]]:
        """Per condition, its identity: ``(frozenset of target names, context or None)``."""
        tm = np.asarray(self.target_matrix) > 0
        ctx = [None] * tm.shape[0] if self.contexts is None else [self.contexts[c] for c in self.perturbation_context]
        return [(frozenset(self.targets[j] for j in np.flatnonzero(row)), c) for row, c in zip(tm, ctx)]

    def condition_table(self) -> pd.DataFrame:
        """One row per condition (index: its label): a column per factor with the tuple of its
        levels (sorted), and ``"context"`` when the design has contexts."""
        tf = self.target_factors or (fx.PERTURBATION_FACTOR,) * len(self.targets)
        cols = {f: [] for f in self.factor_names}
        for levels, _ in self.condition_keys():
            for f in cols:
                cols[f].append(tuple(sorted(t for t in levels if tf[self.targets.index(t)] == f)))
        frame = pd.DataFrame(cols, index=pd.Index(self.perturbations, name="perturbation"))
        if self.contexts is not None:
            frame[fx.CONTEXT_COLUMN] = [self.contexts[c] for c in self.perturbation_context]
        return frame

    def model_data(self) -> dict[str, Any]:
        """The arrays-only view a model sees.

        Keys: ``perturbation_index`` (rows,), ``target_matrix`` (perturbations x targets),
        ``is_combination`` (perturbations,), ``batch_index`` (rows,) or None, ``n_batches``,
        ``size_factors`` (rows,), ``n_cells`` (rows,), ``n_genes``, ``baseline_loc`` and
        ``baseline_scale`` (genes,) — empirical control summaries used to centre priors on
        the data's scale (log scale for counts) — ``noise_floor``, the resolution of a
        continuous readout (see :func:`semimech.measurement.observe`), for continuous readouts
        ``readout_center`` and ``readout_spread`` (genes,), every row's mean and sd per readout
        (:func:`semimech.data._aggregate.readout_summaries`), and
        ``target_gene_index`` (targets,): each target's column among ``genes``, -1 for a
        target that is not a modelled gene (network models propagate edits through it).

        Treatment structure (defaults for label designs: one factor, one context):
        ``target_factor`` (targets,) factor code of each target; ``factor_names``,
        ``n_factors``; ``perturbation_context`` (perturbations,) context code; ``n_contexts``;
        ``context_control`` (contexts,) index of each context's untreated condition among
        perturbations (-1 if absent); ``n_levels`` (perturbations,) levels per condition and
        ``max_levels`` (int) their maximum;
        ``level_rows``, ``level_cols`` (nonzeros of ``target_matrix``); ``pair_index``
        (pairs, 2) target indices of each level pair occurring in some condition (the
        ``target_pairs`` plate); ``pair_factor_pair`` (pairs,) the code of its pair of factors
        among ``n_factor_pairs`` (order of :func:`factor_pair_names`: (0,0), (0,1), ...,
        (1,1), ...); ``pair_rows``, ``pair_cols``: which condition holds which pair;
        ``context_targets`` (n, 2) the (context, target) combinations occurring in some
        condition (plate ``context_targets``), ``context_target_factor`` their factor codes and
        ``level_context_col`` the index of each ``(level_rows, level_cols)`` incidence among them;
        ``context_pairs`` (n, 2) the (context, pair) combinations (plate ``context_pairs``) and
        ``pair_context_col`` the index of each ``(pair_rows, pair_cols)`` incidence among them.
        """
        data = {
            "perturbation_index": np.asarray(self.perturbation_index),
            "target_matrix": np.asarray(self.target_matrix, dtype=np.float32),
            "is_combination": (np.asarray(self.target_matrix).sum(1) >= 2).astype(np.float32),
            "batch_index": None if self.batch_index is None else np.asarray(self.batch_index),
            "n_batches": 0 if self.batches is None else len(self.batches),
            "size_factors": np.asarray(self.size_factors, dtype=np.float32),
            "n_cells": np.asarray(self.n_cells, dtype=np.float32),
            "n_genes": self.n_genes,
            "n_obs": self.n_obs,
            "y_ss": None if self.y_ss is None else np.asarray(self.y_ss, dtype=np.float32),
            "target_gene_index": target_gene_index(self.targets, self.genes),
            "factor_names": self.factor_names,
        }
        fcode = {f: i for i, f in enumerate(self.factor_names)}
        tf = np.zeros(len(self.targets), np.int32) if self.target_factors is None else \
            np.array([fcode[f] for f in self.target_factors], dtype=np.int32)
        data.update(structure(self.target_matrix, tf, len(self.factor_names), self.perturbation_context, self.contexts))
        if self.y is not None:
            from semimech.measurement.noise import learned, use_floor

            loc, scale, floor = control_summaries(self)
            noise = self.noise if self.noise is not None else learned()
            data["baseline_loc"], data["baseline_scale"] = loc, scale
            data["noise_floor"] = floor if use_floor(noise, self) else 0.0
            if not self.is_counts:  # the readouts' centre and spread over every row (signalling_network's scales)
                center, spread = readout_summaries(self.y)
                data["readout_center"], data["readout_spread"] = center.astype(np.float32), spread.astype(np.float32)
            data.update(noise.model_data(self))
        return data

    def with_noise(self, noise) -> "Design":
        """The same design with a measurement-error model (:mod:`semimech.measurement.noise`).

        ``noise``: e.g. ``semimech.measurement.xmap(additive=50, multiplicative=0.1)``,
        ``fixed(0.1)``, ``from_replicates(replicate_design)`` or ``learned(resolution_floor=True)``.
        """
        from semimech.measurement.noise import NoiseModel

        if not isinstance(noise, NoiseModel):
            hint = (f" For a known sd, pass semimech.measurement.fixed({noise!r})."
                    if isinstance(noise, (int, float, np.integer, np.floating, Mapping)) else "")
            raise DesignError(f"noise must be a semimech.measurement NoiseModel (fixed, xmap, from_replicates, "
                              f"learned), got {type(noise).__name__}.{hint}")
        if self.is_counts and noise.kind != "learned":
            raise DesignError("a known measurement sd applies to continuous readouts; this design holds counts "
                              "(negative binomial: the noise is the dispersion, learned per gene).")
        noise.model_data(self)  # per-readout values must name this design's readouts
        return dataclasses.replace(self, noise=noise)

    # ------------------------------------------------------------------ derived designs
    def subset(self, rows) -> "Design":
        """Rows selected by a boolean mask (one entry per row) or integer positions; encodings are kept.

        Keeping the encodings (all perturbation labels, all targets) is what lets a model
        fitted on a training subset align its draws with a test subset by label. Positions are
        ``0 .. n_obs - 1`` (no negative positions) and may repeat (a bootstrap resample).

        Raises
        ------
        DesignError
            A mask of another length than the rows, positions out of range, anything but
            booleans or integers, or a selection of no rows.
        """
        if self.y is None:
            raise DesignError("cannot subset a prediction design.")
        idx = v.row_positions(rows, self.n_obs)
        y = self.y[idx]
        return dataclasses.replace(
            self, y=y.tocsr() if sp.issparse(y) else y, obs_names=tuple(self.obs_names[i] for i in idx),
            perturbation_index=self.perturbation_index[idx],
            batch_index=None if self.batch_index is None else self.batch_index[idx],
            size_factors=self.size_factors[idx], n_cells=self.n_cells[idx],
            y_ss=None if self.y_ss is None else self.y_ss[idx],
        )

    def select_perturbations(self, labels: Sequence[str], *, include_control: bool = True) -> "Design":
        """Rows whose perturbation is in ``labels`` (plus the controls by default)."""
        unknown = [lab for lab in labels if lab not in self.perturbations]
        if unknown:
            raise DesignError(f"perturbations not in the design: {unknown}.")
        keep = set(labels) | ({self.control} if include_control else set())
        codes = [i for i, p in enumerate(self.perturbations) if p in keep]
        return self.subset(np.isin(self.perturbation_index, codes))

    def observed_perturbations(self) -> tuple[str, ...]:
        """Labels with at least one row in this design (control first)."""
        present = set(np.unique(self.perturbation_index).tolist())
        return tuple(p for i, p in enumerate(self.perturbations) if i in present)

    def with_perturbations(self, labels: Sequence[str], *, batch: str | None = None) -> "Design":
        """A prediction design: one row per requested label, no readouts.

        Labels may be new combinations (``"KLF1+TGFBR2"``) whose targets the design knows,
        in any order of their parts; targets that are modelled genes but were never
        perturbed are appended to ``targets`` (only mechanistic models can predict those).
        In a design with contexts a label ends with ``@context`` (``"TGFa+MEK12i@HepG2"``).
        """
        if self.factor_spec is not None:
            return _conditions.from_labels(self, labels, batch=batch)
        labels = [str(lab) for lab in labels]
        if not labels:
            raise DesignError("with_perturbations needs at least one label.")
        known_targets = list(self.targets)
        genes = set(self.genes)
        for lab in labels:
            for t in parse_label(lab, self.control, self.target_sep):
                if t not in known_targets:
                    if t not in genes:
                        raise DesignError(
                            f"unknown target {t!r} in {lab!r}: it is neither a perturbed target of this design "
                            f"nor a modelled gene. Known targets: {list(self.targets)}."
                        )
                    known_targets.append(t)
        tcode = {t: i for i, t in enumerate(known_targets)}
        tm = np.zeros((len(labels), len(known_targets)), dtype=np.float32)
        for i, lab in enumerate(labels):
            for t in parse_label(lab, self.control, self.target_sep):
                tm[i, tcode[t]] = 1.0
        if len(set(labels)) != len(labels):
            raise DesignError("with_perturbations got duplicate labels.")
        bidx = _conditions.batch_index(self, batch, len(labels))
        return Design(
            y=None, obs_names=tuple(labels), genes=self.genes, perturbations=tuple(labels),
            perturbation_index=np.arange(len(labels), dtype=np.int32), targets=tuple(known_targets),
            target_matrix=tm, control=self.control, batches=self.batches if batch is not None else None,
            batch_index=bidx, size_factors=np.ones(len(labels)), is_counts=self.is_counts,
            n_cells=np.ones(len(labels)), target_sep=self.target_sep,
        )

    def with_conditions(self, conditions, *, batch: str | None = None) -> "Design":
        """A prediction design from a table of conditions: one row per distinct condition, in table order.

        ``conditions`` is a DataFrame holding the training factor columns (or columns named
        after the factors) and the context column (or ``"context"``), read exactly like the
        training table; a list of dicts ``{factor: level(s), "context": ...}`` (missing factors
        mean no level); or another :class:`Design` of the same experiment (its observed
        conditions). Rows naming the same condition are predicted once. Any set of seen levels
        may be asked for, in combinations never seen together; an unknown level or a level in the
        wrong factor's column is an error naming the row. A context never seen in training is
        kept as a new context after the training ones (an error when training had one context);
        :func:`semimech.predict` refuses it unless ``new_contexts="population"`` is passed.
        """
        if isinstance(conditions, Design):
            if conditions.factor_spec is None and self.factor_spec is None:
                return self.with_perturbations(
                    conditions.perturbations if conditions.y is None else conditions.observed_perturbations(),
                    batch=batch)
            if self.factor_spec is None:
                raise DesignError("the training design has no factors; predict label designs by label.")
            return _conditions.from_design(self, conditions, batch=batch)
        if self.factor_spec is None:
            raise DesignError("a table of conditions needs a factor design (built with factors= or context_key=); "
                              "this design has labels only: pass labels such as 'A+B'.")
        return _conditions.from_table(self, conditions, batch=batch)

    def pseudobulk(self, *, by_batch: bool = True) -> "Design":
        """Aggregate rows per perturbation (and batch): sums for counts, means otherwise.

        For counts the size factor of a group is the sum of its cells' size factors, so the
        count model keeps its meaning; ``n_cells`` records group sizes. Continuous designs keep
        the within-group sums of squares (``y_ss``), so a Gaussian model of the pseudobulk is exact.
        """
        return pseudobulk(self, by_batch=by_batch)

    def __repr__(self) -> str:
        kind = "prediction design" if self.y is None else ("counts" if self.is_counts else "continuous")
        nb = 0 if self.batches is None else len(self.batches)
        return (f"Design({self.n_obs} rows x {self.n_genes} genes, {len(self.perturbations)} perturbations, "
                f"{len(self.targets)} targets, {nb} batches, {kind}, control={self.control!r})")


def _factor_spec(columns, perturbation_key, factors, context_key, none, single_valued, where):
    """The :class:`FactorSpec` of a factor design, or None for a label design."""
    if factors is None and context_key is None:
        if perturbation_key is None:
            raise DesignError("say what each row received: perturbation_key= (a column of condition labels) and/or "
                              "factors= (treatment factor columns, e.g. {'inhibitor': 'inhibitors'}).")
        return None
    cols = [str(c) for c in columns]
    if context_key is not None and str(context_key) not in cols:
        raise DesignError(f"context_key {context_key!r} is not a column of {where} (columns: {cols}).")
    if isinstance(none, str):
        none = (none,)
    return fx.FactorSpec(factors=fx.factor_columns(factors, cols, perturbation_key=perturbation_key),
                         context_key=None if context_key is None else str(context_key),
                         none=tuple(str(x) for x in none), single_valued=tuple(str(x) for x in single_valued))


_SF_FIX = ("Size factors must be positive numbers, one per row: convert the column (pd.to_numeric), or leave "
           "size_factor_key out (counts then use each row's total count).")


def _is_anndata(x) -> bool:
    from anndata import AnnData

    return isinstance(x, AnnData)


def _check_frame(frame) -> None:
    """``from_frame`` needs a DataFrame; a wrong container gets the constructor (or the conversion) it needs."""
    if isinstance(frame, pd.DataFrame):
        return
    if _is_anndata(frame):
        raise DesignError("Design.from_frame needs a pandas DataFrame, got an AnnData: use "
                          "Design.from_anndata(adata, perturbation_key=..., control=...).")
    if isinstance(frame, pd.Series):
        raise DesignError(f"Design.from_frame needs a pandas DataFrame, got a Series ({frame.name!r}): pass the whole "
                          "table holding the readout and label columns (a single column: series.to_frame()).")
    raise DesignError(f"Design.from_frame needs a pandas DataFrame (one row per sample; readout and label columns), "
                      f"got {type(frame).__name__}. Wrap an array first: pd.DataFrame(array, columns=[...]) and "
                      "add the label column; for an AnnData use Design.from_anndata.")


def _check_anndata(adata) -> None:
    """``from_anndata`` needs an AnnData; a table gets pointed to ``from_frame``."""
    if _is_anndata(adata):
        return
    if isinstance(adata, pd.DataFrame):
        raise DesignError("Design.from_anndata needs an AnnData, got a DataFrame: use Design.from_frame(frame, "
                          "readouts=[...measured columns...], perturbation_key=..., control=...).")
    raise DesignError(f"Design.from_anndata needs an AnnData (cells x genes, labels in adata.obs), got "
                      f"{type(adata).__name__}. Build one first (anndata.AnnData(X=matrix, obs=labels_frame)), or "
                      "use Design.from_frame for a table.")
