"""Treatment-structured conditions: factor columns -> a set of treatment levels and a context per row.

A condition is identified by its set of levels (each a level of a named factor: stimulus,
inhibitor, genetic perturbation, dose, ...) and its context (cell line). Labels are generated
from that identity, so aliases and the order of levels never matter. Everything here works on
the distinct value combinations of the columns, not row by row, so a million-cell design costs
one ``pd.factorize`` per column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from semimech.data._validate import MISSING_TEXT
from semimech.errors import DesignError

CONTEXT_SEP = "@"
PERTURBATION_FACTOR = "perturbation"
CONTEXT_COLUMN = "context"


@dataclasses.dataclass(frozen=True)
class FactorSpec:
    """How a table names treatments: factor columns, the context column, values meaning "no level".

    ``factors`` is ``((factor, (column, ...)), ...)`` in factor order; ``context_key`` the
    context column (None without contexts); ``none`` the values that mean "no level" (besides
    missing values and the control label); ``single_valued`` the factors allowing one level per row.
    """

    factors: tuple[tuple[str, tuple[str, ...]], ...]
    context_key: str | None = None
    none: tuple[str, ...] = ("none",)
    single_valued: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.factors)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for _, fc in self.factors for c in fc) + ((self.context_key,) if self.context_key else ())


@dataclasses.dataclass(frozen=True)
class Conditions:
    """The encoded conditions of a design (see :func:`encode`)."""

    perturbations: tuple[str, ...]
    perturbation_index: np.ndarray
    targets: tuple[str, ...]
    target_factors: tuple[str, ...]
    target_matrix: np.ndarray
    contexts: tuple[str, ...] | None
    perturbation_context: np.ndarray | None
    control: str


def factor_columns(factors, columns, *, perturbation_key: str | None = None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Normalise ``factors`` to ``((factor, (column, ...)), ...)`` and check that the columns exist.

    ``factors`` is a mapping ``{factor: column or [columns]}`` or a list of columns (each its own
    factor, named after the column). With ``perturbation_key`` its column becomes the factor
    ``"perturbation"`` (labels split on the target separator), listed first.
    """
    cols = [str(c) for c in columns]
    out = [] if perturbation_key is None else [(PERTURBATION_FACTOR, (str(perturbation_key),))]
    if factors is None:
        return tuple(out)
    if isinstance(factors, str):
        raise DesignError(f"factors={factors!r} is a string; pass a mapping {{factor: column(s)}}, e.g. "
                          f"factors={{'inhibitor': {factors!r}}}, or a list of columns.")
    items = list(factors.items()) if isinstance(factors, Mapping) else [(c, c) for c in factors]
    for name, fcols in items:
        fcols = (fcols,) if isinstance(fcols, str) else tuple(fcols)
        if not fcols:
            raise DesignError(f"factor {name!r} names no column.")
        missing = [c for c in fcols if str(c) not in cols]
        if missing:
            raise DesignError(f"factor {name!r}: columns {missing} are not in the table (columns: {cols}).")
        out.append((str(name), tuple(str(c) for c in fcols)))
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DesignError(f"factor names {dupes} are given twice"
                          + (" ('perturbation' is the factor of perturbation_key)" if PERTURBATION_FACTOR in dupes else "")
                          + ". Give each factor one name (several columns of one factor go in a list).")
    return tuple(out)


def _scalar(v) -> str | None:
    """One cell value as a level name, or None for a missing value."""
    if v is None or (not isinstance(v, str) and pd.api.types.is_scalar(v) and pd.isna(v)):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    s = str(v).strip()
    return s or None


def _hashable(v):
    if isinstance(v, (list, tuple, np.ndarray, pd.Series)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, (set, frozenset)):
        return tuple(sorted((_hashable(x) for x in v), key=str))
    return v


def _missing_text(lv: str, where: str) -> None:
    """A level that reads as a missing value turned into text (``"nan"`` after ``.astype(str)``) is an error."""
    if lv in MISSING_TEXT:
        raise DesignError(f"{where}: value {lv!r} reads as a missing value turned into text (e.g. by .astype(str) on "
                          "a column with missing values). Leave the cell missing (NaN or None: no level), give it a "
                          f"real level name, or list it in none= if it means no level.")


def _levels(value, *, none: frozenset, sep: str, split: bool, where: str) -> tuple[str, ...]:
    """The levels a cell names: a list/tuple/set of levels, or a string split on ``sep``."""
    if isinstance(value, tuple):
        out = []
        for v in value:
            lv = _scalar(v)
            if lv is None or lv in none:
                continue
            _missing_text(lv, where)
            if split and sep in lv:
                raise DesignError(f"{where}: level {lv!r} contains the separator {sep!r}. A combination of levels is a "
                                  f"set of levels: list them separately ({lv.split(sep)}).")
            out.append(lv)
        return tuple(out)
    lv = _scalar(value)
    if lv is None or lv in none:
        return ()
    if not split:
        _missing_text(lv, where)
        return (lv,)
    parts = [p.strip() for p in lv.split(sep)]
    if any(p == "" for p in parts):
        raise DesignError(f"{where}: malformed value {lv!r} (empty part around {sep!r}).")
    parts = [p for p in parts if p not in none]
    for p in parts:
        _missing_text(p, where)
    return tuple(parts)


def _codes(values) -> tuple[np.ndarray, list]:
    codes, uniques = pd.factorize(pd.Series([_hashable(v) for v in values], dtype=object), use_na_sentinel=False)
    return np.asarray(codes), list(uniques)


def row_conditions(table: Mapping[str, Sequence], *, row_names: Sequence[str], spec: FactorSpec, control: str,
                   sep: str):
    """Per row, its levels by factor and its context, computed once per distinct combination.

    Returns ``(keys, inverse, first)``: ``keys[k] = (levels, context)`` with ``levels`` a tuple
    of ``(factor, level)`` pairs (sorted by factor order, then level) and ``context`` a string
    or None; ``inverse[row]`` indexes ``keys``; ``first[k]`` is the first row of ``keys[k]``.
    """
    factors, context_key, single_valued = spec.factors, spec.context_key, spec.single_valued
    none = frozenset(str(x) for x in spec.none) | {str(control)}
    factor_order = [f for f, _ in factors]
    unknown_single = sorted(set(single_valued) - set(factor_order))
    if unknown_single:
        raise DesignError(f"single_valued names {unknown_single}, which are not factors ({factor_order}).")
    cols = [c for _, fc in factors for c in fc] + ([context_key] if context_key is not None else [])
    n = len(row_names)
    codes, uniques = zip(*[_codes(table[c]) for c in cols]) if cols else ((), ())
    stacked = np.stack(codes, axis=1) if cols else np.zeros((n, 1), dtype=np.int64)
    combos, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
    keys = []
    for combo, row in zip(combos, first):
        where = f"row {row_names[row]!r}"
        per_factor, j = [], 0
        for fi, (f, fc) in enumerate(factors):
            lv = set()
            for c in fc:
                lv.update(_levels(uniques[j][combo[j]], none=none, sep=sep, split=True,
                                  where=f"{where}, column {c!r}"))
                j += 1
            if f in single_valued and len(lv) > 1:
                raise DesignError(f"{where}: factor {f!r} is single-valued but the row names {len(lv)} of its levels "
                                  f"{sorted(lv)}. Give one level per row, or drop {f!r} from single_valued.")
            per_factor.extend((fi, f, x) for x in lv)
        context = None
        if context_key is not None:
            ctx = _levels(uniques[j][combo[j]], none=frozenset(), sep=sep, split=False, where=f"{where}, column {context_key!r}")
            if len(ctx) != 1:
                raise DesignError(f"{where}: the context column {context_key!r} names {len(ctx)} contexts "
                                  f"{list(ctx)}; every row needs exactly one context (cell line).")
            context = ctx[0]
            if CONTEXT_SEP in context:
                raise DesignError(f"{where}: context {context!r} contains {CONTEXT_SEP!r}, which separates a "
                                  f"condition's levels from its context in labels; rename the context.")
        keys.append((tuple((f, x) for _, f, x in sorted(per_factor)), context))
    _check_level_names(keys, factors, row_names, first)
    return keys, np.asarray(inverse).ravel(), first


def _check_level_names(keys, factors, row_names, first) -> None:
    """A level name belongs to one factor (targets are named by level)."""
    owner: dict[str, tuple[str, int]] = {}
    for k, (levels, _) in enumerate(keys):
        for f, x in levels:
            if x in owner and owner[x][0] != f:
                f0, k0 = owner[x]
                pert = PERTURBATION_FACTOR in (f, f0)
                raise DesignError(
                    f"level {x!r} appears in factor {f0!r} (row {row_names[first[k0]]!r}) and in factor {f!r} "
                    f"(row {row_names[first[k]]!r})"
                    + (": it is also a perturbation label of the perturbation column" if pert else "")
                    + ". A treatment is named once: rename one of them (e.g. '10uM' and '10min').")
            owner.setdefault(x, (f, k))


def label(levels: Sequence[str], context: str | None, *, control: str, sep: str) -> str:
    """The canonical label of a condition: levels joined by ``sep`` (``control`` if none), ``@context``."""
    base = sep.join(levels) if levels else control
    return base if context is None else f"{base}{CONTEXT_SEP}{context}"


def split_context(lab: str, contexts) -> tuple[str, str | None]:
    """``"A+B@ctx"`` -> ``("A+B", "ctx")`` for a design with contexts; ``(lab, None)`` otherwise."""
    if contexts is None:
        return lab, None
    base, sep, ctx = lab.rpartition(CONTEXT_SEP)
    if not sep:
        raise DesignError(f"label {lab!r} names no context; this design has contexts {list(contexts)[:8]}: "
                          f"write '{lab}{CONTEXT_SEP}<context>'.")
    return base, ctx


def encode(keys, inverse, *, factor_names: Sequence[str], control: str, sep: str, has_context: bool) -> Conditions:
    """Labels, targets and the target matrix of the distinct conditions of a design.

    Untreated conditions come first (one per context, in context order), the others follow
    sorted by context and label. Targets (level names) are sorted, as in label designs.
    """
    conds = {}
    for levels, context in keys:
        conds.setdefault((frozenset(levels), context), tuple(levels))
    contexts = tuple(sorted({c for _, c in conds})) if has_context else None
    targets = tuple(sorted({x for levels in conds.values() for _, x in levels}))
    factor_of = {x: f for levels in conds.values() for f, x in levels}
    tcode = {t: i for i, t in enumerate(targets)}
    ccode = {c: i for i, c in enumerate(contexts)} if has_context else {}
    order = sorted(conds, key=lambda k: (len(k[0]) > 0, ccode.get(k[1], 0),
                                         label([x for _, x in conds[k]], None, control=control, sep=sep)))
    labels = [label([x for _, x in conds[k]], k[1], control=control, sep=sep) for k in order]
    if not any(len(k[0]) == 0 for k in order):
        raise DesignError("no row is untreated (every row names a level of some factor): a model needs untreated "
                          f"rows to centre the baseline. Mark untreated rows with a missing value or one of the "
                          f"'none' values (or the control label {control!r}).")
    if not targets:
        raise DesignError("every row is untreated (no row names a level of any factor): the design has no treated "
                          "condition, so there is no effect to model. Include rows with at least one treatment level.")
    pos = {k: i for i, k in enumerate(order)}
    key_code = np.array([pos[(frozenset(levels), context)] for levels, context in keys], dtype=np.int32)
    tm = np.zeros((len(order), len(targets)), dtype=np.float32)
    for i, k in enumerate(order):
        for _, x in k[0]:
            tm[i, tcode[x]] = 1.0
    return Conditions(
        perturbations=tuple(labels), perturbation_index=key_code[inverse], targets=targets,
        target_factors=tuple(factor_of[t] for t in targets), target_matrix=tm, contexts=contexts,
        perturbation_context=np.array([ccode[k[1]] for k in order], dtype=np.int32) if has_context else None,
        control=labels[0],
    )
