"""Prediction designs of factor designs (labels, tables, other designs) and the MIDAS mapping.

:meth:`semimech.Design.with_perturbations` and :meth:`semimech.Design.with_conditions` call in;
each error names the row, the level or the context that cannot be answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from semimech.data import _factors as fx
from semimech.data._targets import parse_label
from semimech.errors import DesignError


def _resolve(train, key: tuple[tuple[str | None, str], ...], context: str | None, where: str,
             extra: list[tuple[str, str]], new_contexts: list[str]) -> tuple[tuple[str, ...], int | None]:
    """Check a requested condition against the training design: levels (target names) and context code.

    ``key`` holds ``(factor or None, level)`` pairs; a level unknown to training but a modelled
    gene is appended to ``extra`` (only network models can predict it). A context never seen in
    training is appended to ``new_contexts`` (its code follows the training contexts): models
    answer it from their learned population of contexts (fresh draws of its context deviations).
    """
    tf = dict(zip(train.targets, train.target_factors))
    genes = set(train.genes)
    known_extra = dict(extra)
    levels = []
    for f, x in key:
        if x in tf:
            if f is not None and tf[x] != f:
                raise DesignError(f"{where}: level {x!r} is a {tf[x]!r} level in training, not a {f!r} level; "
                                  f"put it in the {tf[x]!r} column.")
        elif x in known_extra:
            pass
        elif x in genes:
            known_extra[x] = f or fx.PERTURBATION_FACTOR
            extra.append((x, known_extra[x]))
        else:
            of = [t for t, g in tf.items() if f is None or g == f]
            raise DesignError(f"{where}: unknown level {x!r}" + ("" if f is None else f" of factor {f!r}")
                              + f": it is neither a treatment level of the training design nor a modelled gene. "
                              f"Known levels: {of[:20]}{' ...' if len(of) > 20 else ''}.")
        levels.append(x)
    c = None
    if train.contexts is not None:
        if context is None:
            raise DesignError(f"{where}: no context given; the design has contexts {list(train.contexts)[:10]}.")
        if context in train.contexts:
            c = train.contexts.index(context)
        else:
            if len(train.contexts) < 2:
                raise DesignError(
                    f"{where}: context {context!r} was never seen in training, and the training design has one "
                    f"context ({train.contexts[0]!r}): there is no population of contexts to draw a new one from. "
                    "Fit on several contexts, or predict in the training context.")
            if context not in new_contexts:
                new_contexts.append(context)
            c = len(train.contexts) + new_contexts.index(context)
    elif context is not None:
        raise DesignError(f"{where}: context {context!r} given, but the training design has no contexts.")
    return tuple(levels), c


def batch_index(train, batch, n: int):
    """Every one of ``n`` prediction rows in the training ``batch`` (None: no batch), checked."""
    if batch is None:
        return None
    if train.batches is None or batch not in train.batches:
        raise DesignError(f"batch {batch!r} is not a batch of this design ({train.batches}).")
    return np.full(n, train.batches.index(batch), dtype=np.int32)


def build(train, requests, *, labels=None, batch=None):
    """A prediction design from ``[(key, context, where)]`` requests (see :func:`_resolve`)."""
    from semimech.data.design import Design

    if not requests:
        raise DesignError("nothing to predict: no conditions were given.")
    extra: list[tuple[str, str]] = []
    new_contexts: list[str] = []
    resolved = [_resolve(train, key, ctx, where, extra, new_contexts) for key, ctx, where in requests]
    contexts = None if train.contexts is None else tuple(train.contexts) + tuple(new_contexts)
    targets = tuple(train.targets) + tuple(t for t, _ in extra)
    factors = tuple(train.target_factors) + tuple(f for _, f in extra)
    order = {f: i for i, f in enumerate(train.factor_names)}
    unknown_f = sorted({f for f in factors if f not in order})
    if unknown_f:
        raise DesignError(f"factors {unknown_f} are not factors of the training design ({list(order)}).")
    tcode = {t: i for i, t in enumerate(targets)}
    seen, rows = {}, []
    for (levels, c), (_, _, where) in zip(resolved, requests):
        k = (frozenset(levels), c)
        if k not in seen:
            seen[k] = len(rows)
            rows.append((levels, c))
    tm = np.zeros((len(rows), len(targets)), dtype=np.float32)
    for i, (levels, _) in enumerate(rows):
        tm[i, [tcode[t] for t in levels]] = 1.0
    ctx = None if train.contexts is None else np.array([c for _, c in rows], dtype=np.int32)
    if labels is None:
        base = train.untreated_label
        labels = []
        for levels, c in rows:
            srt = sorted(levels, key=lambda t: (order[factors[tcode[t]]], t))
            labels.append(fx.label(srt, None if c is None else contexts[c], control=base, sep=train.target_sep))
    elif len(labels) != len(rows):
        raise DesignError("with_perturbations got duplicate labels (two labels name the same condition).")
    bidx = batch_index(train, batch, len(rows))
    n = len(rows)
    return Design(
        y=None, obs_names=tuple(labels), genes=train.genes, perturbations=tuple(labels),
        perturbation_index=np.arange(n, dtype=np.int32), targets=targets, target_matrix=tm, control=train.control,
        batches=train.batches if batch is not None else None, batch_index=bidx, size_factors=np.ones(n),
        is_counts=train.is_counts, n_cells=np.ones(n), target_sep=train.target_sep, target_factors=factors,
        contexts=contexts, perturbation_context=ctx, factor_spec=train.factor_spec,
    )


def from_labels(train, labels: Sequence[str], *, batch=None):
    """Canonical or hand-written labels (``"TGFa+MEK12i@HepG2"``, any order of levels)."""
    labels = [str(lab) for lab in labels]
    if not labels:
        raise DesignError("with_perturbations needs at least one label.")
    keys = {p: k for p, k in zip(train.perturbations, train.condition_keys())}
    requests = []
    for lab in labels:
        if lab in keys:
            levels, ctx = keys[lab]
        else:
            base, ctx = fx.split_context(lab, train.contexts)
            levels = parse_label(base, train.untreated_label, train.target_sep)
        requests.append((tuple((None, t) for t in sorted(levels)), ctx, f"label {lab!r}"))
    return build(train, requests, labels=labels, batch=batch)


def from_design(train, design, *, batch=None):
    """The observed conditions of another design of the same experiment (a test split)."""
    keys = design.condition_keys()
    present = np.unique(design.perturbation_index) if design.y is not None else np.arange(len(keys))
    tf = dict(zip(design.targets, design.target_factors or [None] * len(design.targets)))
    requests = [(tuple((tf[t], t) for t in sorted(keys[i][0])), keys[i][1], f"condition {design.perturbations[i]!r}")
                for i in present]
    return build(train, requests, batch=batch)


def from_table(train, conditions, *, batch=None):
    """A DataFrame or a list of dicts, read with the training design's factor columns."""
    spec = train.factor_spec
    if isinstance(conditions, Mapping):
        conditions = [conditions]
    if isinstance(conditions, pd.DataFrame):
        frame, strict = conditions, True
    else:
        items = list(conditions)
        bad = [x for x in items if not isinstance(x, Mapping)]
        if bad:
            raise DesignError(f"a condition spec must be a dict of factor -> level(s), got {bad[0]!r}.")
        frame, strict = pd.DataFrame.from_records([dict(x) for x in items]), False
    if len(frame) == 0:
        raise DesignError("nothing to predict: the table of conditions is empty.")
    cols = [str(c) for c in frame.columns]
    factors = []
    for f, fcols in spec.factors:
        if all(c in cols for c in fcols):
            factors.append((f, fcols))
        elif f in cols:
            factors.append((f, (f,)))
        elif strict:
            raise DesignError(f"the table has no column for factor {f!r} (expected {list(fcols)} or {f!r}); add it "
                              f"(an empty value means no {f!r} level).")
    known = {c for _, fc in spec.factors for c in fc} | set(spec.names) | {spec.context_key, fx.CONTEXT_COLUMN}
    stray = [c for c in cols if c not in known]
    if not strict and stray:
        raise DesignError(f"condition specs name {stray}, which are neither factors ({list(spec.names)}) nor the "
                          f"context ({spec.context_key or fx.CONTEXT_COLUMN!r}).")
    context_key = None
    if train.contexts is not None:
        context_key = next((c for c in (spec.context_key, fx.CONTEXT_COLUMN) if c in cols), None)
        if context_key is None:
            raise DesignError(f"the table has no context column ({spec.context_key!r} or {fx.CONTEXT_COLUMN!r}); "
                              f"every condition needs a context (one of {list(train.contexts)[:10]}).")
    read = fx.FactorSpec(factors=tuple(factors), context_key=context_key, none=spec.none,
                         single_valued=tuple(f for f in spec.single_valued if f in dict(factors)))
    row_names = [str(i) for i in frame.index]
    keys, inverse, first = fx.row_conditions({c: frame[c].tolist() for c in read.columns}, row_names=row_names,
                                             spec=read, control=train.untreated_label, sep=train.target_sep)
    # requests in the order of the table's rows (first appearance of each condition)
    order = np.argsort(first, kind="stable")
    requests = []
    for k in order:
        levels, ctx = keys[k]
        requests.append((tuple(levels), ctx, f"row {row_names[first[k]]!r}"))
    return build(train, requests, batch=batch)


def midas_frame(table: pd.DataFrame, *, time=None, readouts=None,
                baseline_time=None) -> tuple[pd.DataFrame, list[str], str | None]:
    """``read_midas`` output -> (one row per sample with readout columns, readouts, the context column or None).

    With ``baseline_time`` the samples at that time join those at ``time`` without their stimuli (a
    stimulus has not acted at its own time 0; an inhibitor, given before it, has). ``time="contexts"``:
    every time point is kept, as the context (column ``"time"``: ``"0"``, ``"30"``, ...; one cell line)."""
    need = {"cell_line", "stimuli", "inhibitors", "time", "readout", "value", "row"}
    if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
        raise DesignError(f"from_midas takes the table of semimech.datasets.read_midas (columns {sorted(need)}).")
    at = table["time"].astype(float)  # each sample's time, read once
    times = sorted(float(t) for t in pd.unique(at))
    if isinstance(time, str):
        if time != "contexts":
            raise DesignError(f"time must be one of the table's time points {times} or 'contexts' (every time point "
                              f"a context), got {time!r}.")
        return _midas_time_contexts(table, at, readouts=readouts, baseline_time=baseline_time)
    later = [t for t in times if baseline_time is None or t != float(baseline_time)]
    if baseline_time is not None and float(baseline_time) not in times:
        raise DesignError(f"baseline_time={baseline_time!r} is not in the MIDAS table (times: {times}).")
    if time is None:
        if len(later) != 1:
            raise DesignError(f"the MIDAS table holds several time points {times}; pick one with time= "
                              f"(e.g. time={times[-1]:g}), or time='contexts' to keep them all as contexts.")
        time = later[0]
    if float(time) not in times:
        raise DesignError(f"time={time!r} is not in the MIDAS table (times: {times}).")
    if baseline_time is not None and float(baseline_time) == float(time):
        raise DesignError(f"baseline_time={baseline_time!r} is the time modelled (time={time!r}); the baseline is "
                          "another time point, usually 0.")
    base = None if baseline_time is None else table[at == float(baseline_time)]
    table = table[at == float(time)]
    if base is not None:
        table = pd.concat([table, base.assign(stimuli="none")], ignore_index=True)
    frame, reads = _midas_wide(table, readouts)
    has_cells = bool(frame["cell_line"].notna().all())
    if frame["cell_line"].notna().any() and not has_cells:
        raise DesignError("some MIDAS samples name a cell line and others do not; give every sample a cell line.")
    return frame, reads, "cell_line" if has_cells else None


def _midas_time_contexts(table: pd.DataFrame, at: pd.Series, *, readouts, baseline_time):
    """``midas_frame(time="contexts")``: every sample kept, its time point (as text) its context."""
    if baseline_time is not None:
        raise DesignError("baseline_time joins the t = 0 samples to one later time; with time='contexts' every "
                          "time point, t = 0 included, is its own context. Drop baseline_time=.")
    lines = [str(c) for c in pd.unique(table["cell_line"].dropna())]
    if len(lines) > 1:
        raise DesignError(f"time='contexts' makes the time points the contexts, but the table names {len(lines)} cell "
                          f"lines {lines}; select one first, e.g. table[table['cell_line'] == {lines[0]!r}].")
    if (table.assign(_t=at).groupby("row")["_t"].nunique() > 1).any():
        raise DesignError("a MIDAS sample (row) holds values at several time points; time='contexts' needs one time "
                          "per sample.")
    label = {t: f"{t:g}" for t in pd.unique(at)}
    frame, reads = _midas_wide(table, readouts)
    row_time = at.groupby(table["row"]).first()
    frame.insert(0, "time", [label[t] for t in row_time.loc[[int(i[3:]) for i in frame.index]]])
    return frame, reads, "time"


def _midas_wide(table: pd.DataFrame, readouts) -> tuple[pd.DataFrame, list[str]]:
    """One row per MIDAS sample: its cell line, stimuli and inhibitors, then one column per readout."""
    if readouts is not None:
        missing = sorted(set(readouts) - set(table["readout"].astype(str)))
        if missing:
            raise DesignError(f"readouts {missing} are not in the MIDAS table.")
        table = table[table["readout"].astype(str).isin(list(readouts))]
    wide = table.pivot_table(index="row", columns="readout", values="value", aggfunc="first", observed=True)
    reads = [str(r) for r in (readouts if readouts is not None else pd.unique(table["readout"].astype(str)))]
    wide.columns = [str(c) for c in wide.columns]
    wide = wide[reads]
    if wide.isna().to_numpy().any():
        r, c = np.argwhere(wide.isna().to_numpy())[0]
        raise DesignError(f"sample (row {wide.index[r]}) has no value for readout {reads[c]!r}: drop those samples, "
                          "or choose readouts= measured in every sample.")
    cond = table.drop_duplicates("row").set_index("row").loc[wide.index, ["cell_line", "stimuli", "inhibitors"]]
    frame = pd.concat([cond.astype(object), wide], axis=1)
    frame.index = [f"row{r}" for r in wide.index]
    return frame, reads
