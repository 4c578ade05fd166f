"""Input checks for :class:`semimech.Design`; each error names the problem and the fix."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech.errors import DesignError, DuplicateNamesWarning


#: The largest value taken for a count (int32): anything larger is not a plausible UMI or read
#: count of one gene in one sample, and above 2**53 every float is a whole number anyway.
MAX_COUNT = 2**31 - 1


def unique_names(names, *, what: str, fix: str) -> None:
    """Raise when ``names`` repeat: a repeated gene would be silently taken from one column."""
    seen, dup = set(), []
    for name in names:
        if name in seen and name not in dup:
            dup.append(name)
        seen.add(name)
    if dup:
        raise DesignError(f"{what} are not unique: {dup[:10]}{' ...' if len(dup) > 10 else ''} occur more than "
                          f"once. {fix}")


def warn_repeated_rows(names, *, fix: str) -> None:
    """Warn when row names repeat (the rows are still read by position: nothing is dropped or merged)."""
    counts = pd.Index(names).value_counts()
    dup = counts[counts > 1]
    if len(dup):
        shown = ", ".join(repr(n) for n in dup.index[:5])
        warnings.warn(f"{int(dup.sum())} rows share {len(dup)} name(s) ({shown}{' ...' if len(dup) > 5 else ''}); "
                      f"they are kept as separate rows, but a cell picked by name in the fit's DataTree (its 'cells' "
                      f"coordinate) is ambiguous. {fix}", DuplicateNamesWarning, stacklevel=4)


def frame_readouts(frame, columns) -> np.ndarray:
    """The readout columns of a DataFrame as a float array; a non-numeric value is an error naming its column."""
    unique_names(list(columns), what="readouts", fix="Name each readout column once.")
    in_frame = list(frame.columns)
    dup = [c for c in columns if in_frame.count(c) > 1]
    if dup:
        raise DesignError(f"readout columns {dup[:10]} occur more than once in the frame, so their values are "
                          "ambiguous. Rename or drop the duplicate columns (frame.loc[:, ~frame.columns.duplicated()]).")
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        col = frame[name]
        if not_real_dtype(col.dtype):  # NumPy would read a date as nanoseconds, a complex number as its real part
            _raise_non_numeric(col.to_numpy(dtype=object), name, index=frame.index, what="readout column",
                               dtype=col.dtype)
        try:
            out[:, j] = col.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            _raise_non_numeric(col.to_numpy(dtype=object), name, index=frame.index, what="readout column")
    return out


def _kind(dtype) -> str:
    if isinstance(dtype, pd.CategoricalDtype):
        return _kind(dtype.categories.dtype)
    return getattr(dtype, "kind", "O")


def _dtype_name(dtype) -> str:
    return f"categorical {dtype.categories.dtype}" if isinstance(dtype, pd.CategoricalDtype) else str(dtype)


def not_real_dtype(dtype) -> bool:
    """Dates, durations and complex numbers: NumPy converts them to floats without a word, wrongly."""
    return _kind(dtype) in "mMc"


_NOT_REAL = {"M": "NumPy would silently read a date as nanoseconds since 1970.",
             "m": "NumPy would silently read a duration as nanoseconds.",
             "c": "NumPy would silently keep only the real part of a complex number."}


_READOUT_FIX = ("Readouts must be numbers: convert the column (pd.to_numeric), mark missing values as NaN and drop or "
                "impute them, or leave the column out.")


def _not_a_number(x) -> bool:
    if x is None:
        return False  # NumPy reads None as NaN; the NaN check names it
    try:
        float(x)
    except (TypeError, ValueError):
        return True
    return False


def _raise_non_numeric(values, name, *, index=None, what: str, dtype=None, fix: str = _READOUT_FIX):
    bad = list(range(len(values))) if dtype is not None else [i for i, x in enumerate(values) if _not_a_number(x)]
    i = bad[0] if bad else 0
    if len(values):
        example = f"e.g. {values[i]!r} in row {index[i] if index is not None else i!r}"
    else:
        example = "no rows"
    if dtype is not None:
        raise DesignError(f"{what} {name!r} holds {_dtype_name(dtype)} values, not real numbers ({example}); "
                          + _NOT_REAL[_kind(dtype)] + " Convert the column to the numbers you mean first "
                          + ("(e.g. np.abs(col) or col.real)" if _kind(dtype) == "c" else
                             "(e.g. hours: col / pd.Timedelta(hours=1))" if _kind(dtype) == "m" else
                             "(e.g. hours since the start: (col - col.min()) / pd.Timedelta(hours=1))")
                          + ", or leave it out.")
    raise DesignError(f"{what} {name!r} holds non-numeric values ({len(bad)} of {len(values)}, {example}). {fix}")


def readouts(y, *, genes=None, rows=None):
    """The readout matrix checked (NaN/inf and non-numbers rejected), in the input's own numeric dtype.

    Returns a CSR matrix or an ndarray of an integer or float dtype; it may be the caller's own
    object (never written to): :func:`stored` makes the design's copy once the count mode is
    known, so no float64 copy of a count matrix is ever made.
    """
    if sp.issparse(y) or isinstance(y, np.ndarray):
        if not_real_dtype(y.dtype):  # NumPy would convert them to floats silently (nanoseconds; the real part)
            raise DesignError(f"readouts hold {y.dtype} values, not real numbers; {_NOT_REAL[y.dtype.kind]} Convert "
                              "them to the real numbers you mean first (e.g. np.abs of complex values), or pass the "
                              "layer that holds them (layer=).")
    if sp.issparse(y):
        y = y.tocsr()
        if y.dtype.kind not in "iuf" or y.dtype.itemsize < 4:
            y = sp.csr_matrix(y, dtype=np.float64)
        vals = y.data
    else:
        native = np.asarray(y) if not isinstance(y, np.ndarray) else y
        if native.dtype.kind in "iu" or (native.dtype.kind == "f" and native.dtype.itemsize >= 4):
            y = native
        else:
            try:
                y = np.array(y, dtype=np.float64, copy=True)
            except (TypeError, ValueError):
                raw = np.asarray(y, dtype=object)
                if raw.ndim != 2:
                    raise DesignError(f"readouts must be a 2-D rows x genes matrix of numbers, got shape {raw.shape}.") from None
                for j in range(raw.shape[1]):
                    try:
                        raw[:, j].astype(np.float64)
                    except (TypeError, ValueError):
                        name = genes[j] if genes is not None else j
                        _raise_non_numeric(raw[:, j], name, index=rows, what="readout (gene)")
                raise
        if y.ndim != 2:
            raise DesignError(f"readouts must be a 2-D rows x genes matrix, got shape {y.shape}.")
        vals = y
    if vals.dtype.kind == "f" and not np.all(np.isfinite(vals)):
        bad = int(np.size(vals) - np.isfinite(vals).sum())
        raise DesignError(
            f"readouts contain {bad} NaN or infinite values. Remove or impute them before building a Design "
            "(semimech never fills missing values silently)."
        )
    return y


def row_positions(rows, n: int, *, what: str = "row") -> np.ndarray:
    """The positions ``rows`` selects among ``n`` rows: a boolean mask with one entry per row, or
    integer positions ``0 .. n - 1`` (repeats allowed); anything else is a :class:`DesignError`
    (a mask of another length would otherwise select the first rows silently)."""
    rows = np.asarray(rows)
    if rows.size == 0:
        raise DesignError(f"the subset selects no {what}s.")
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise DesignError(f"a boolean {what} mask needs one entry per {what} ({n}); got shape {rows.shape}. "
                              "Build it from this design (e.g. design.perturbation_index == k).")
        idx = np.flatnonzero(rows)
        if idx.size == 0:
            raise DesignError(f"the subset selects no {what}s.")
        return idx
    if rows.dtype.kind not in "iu" or rows.ndim != 1:
        raise DesignError(f"{what}s must be a boolean mask (one entry per {what}) or a 1-D array of integer "
                          f"positions; got dtype {rows.dtype} and shape {rows.shape}.")
    bad = rows[(rows < 0) | (rows >= n)]
    if bad.size:
        raise DesignError(f"{what} positions must be in 0..{n - 1}; got {bad[:5].tolist()}"
                          f"{' ...' if bad.size > 5 else ''}.")
    return rows.astype(np.intp)


def stored(y, is_counts: bool):
    """The design's own read-only copy of checked readouts: counts as int32, anything else float64.

    Counts (whole numbers in ``[0, MAX_COUNT]``, see :func:`count_mode`) are exact in int32 and
    take half the memory of float64 (a CSR matrix two thirds); likelihoods cast them where they
    use them. A CSR matrix stays CSR. The input is never changed.
    """
    dtype = np.dtype(np.int32) if is_counts else np.dtype(np.float64)
    if sp.issparse(y):
        out = sp.csr_matrix((y.data.astype(dtype, copy=True), y.indices.copy(), y.indptr.copy()), shape=y.shape)
        return out
    out = np.array(y, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


_CHUNK = 1 << 22  # entries per chunk in whole-matrix checks (temporaries of a few MB, not of the matrix's size)


def _chunks(vals: np.ndarray):
    for i in range(0, vals.size, _CHUNK):
        yield vals[i:i + _CHUNK]


def count_mode(y, counts: bool | None) -> bool:
    """Whether the readouts are counts.

    Counts are non-negative whole numbers no larger than :data:`MAX_COUNT` (2**31 - 1), held
    in an integer or a float array. ``counts=None`` decides from the values (continuous data
    that happen to exceed the bound, e.g. values around 1e30, are continuous: above 2**53 every
    float is a whole number, so whole-ness says nothing there); ``counts=True`` insists and
    raises when they are not.
    """
    vals = (y.data if sp.issparse(y) else y).reshape(-1)
    if vals.dtype.kind in "iu":
        negative = bool(np.any(vals < 0)) if vals.dtype.kind == "i" else False
        fraction = False
    else:  # in chunks: the temporaries of a 10^8-entry check would be ~5 bytes per entry
        negative = any(bool(np.any(c < 0)) for c in _chunks(vals))
        fraction = not negative and any(bool(np.any(np.mod(c, 1) != 0)) for c in _chunks(vals))
    too_big = vals.size > 0 and float(np.max(vals)) > MAX_COUNT
    is_int = not (negative or fraction or too_big)
    if counts is True and not is_int:
        why = ("negative values found" if negative else "non-integer values found" if fraction else
               f"values up to {float(np.max(vals)):.3g}, above the largest plausible count {MAX_COUNT}")
        raise DesignError(
            f"counts=True but the readouts are not counts ({why}). A count likelihood needs raw UMI or read "
            "counts: pass the raw-count layer (layer='counts'), or use counts=False for continuous (e.g. "
            "log-normalised) data with a Gaussian likelihood."
        )
    if counts is None:
        return is_int
    return bool(counts)


#: What a missing value becomes as text (``str(np.nan)``, ``str(None)``, ``str(pd.NA)``, e.g. after
#: ``.astype(str)``): never taken for a real label, level or target.
MISSING_TEXT = frozenset({"nan", "NaN", "None", "<NA>"})


def looks_missing(label: str, sep: str | None = None) -> bool:
    """Whether ``label`` (or, with ``sep``, one of its parts) is a missing value turned into text."""
    if label.strip() in MISSING_TEXT:
        return True
    return bool(sep) and sep in label and any(p.strip() in MISSING_TEXT for p in label.split(sep))


def labels(values, *, what: str, sep: str | None = None) -> list[str]:
    """Each row's label as text; a missing label, or one that reads as a missing value turned into text
    (``"nan"``, ``"None"``, ``"<NA>"``; with ``sep`` also as a part of a combination), is an error."""
    s = pd.Series(values)
    if s.isna().any():
        raise DesignError(f"{int(s.isna().sum())} rows have a missing {what}. Label every row (e.g. 'control').")
    out = [str(x) for x in s.tolist()]
    bad = sorted(lab for lab in set(out) if looks_missing(lab, sep))
    if bad:
        bad_set = set(bad)
        n_bad = sum(lab in bad_set for lab in out)
        raise DesignError(
            f"{n_bad} rows have a {what} that reads as a missing value turned into text ({bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}), e.g. by .astype(str) on a column with missing values. Drop those "
            "rows or give them a real label (semimech does not guess what a missing label meant)."
        )
    return out


def control_label(control) -> str | None:
    """``control=`` as the label it names: labels are read as text, so ``0`` names the label ``"0"``."""
    if control is None or isinstance(control, str):
        return control
    if isinstance(control, (numbers.Number, np.generic)) and not isinstance(control, np.ndarray):
        return str(control)
    one = (f" (control={next(iter(control))!r})" if isinstance(control, (list, tuple, set, frozenset))
           and len(control) == 1 else "")
    raise DesignError(
        f"control= must be one label, the label of the unperturbed rows; got {type(control).__name__} "
        f"{control!r:.80}. Pass that single label{one}; if several labels mark unperturbed rows, relabel them to "
        "one first (e.g. frame['p'].replace({'NT': 'control'}))."
    )


def target_sep(sep) -> str:
    """``target_sep=``: the non-empty text joining the targets of a combination label."""
    if not isinstance(sep, str) or sep == "":
        raise DesignError(
            f"target_sep must be a non-empty string, the text joining the targets of a combination label (the '+' "
            f"in 'A+B'); got {type(sep).__name__} {sep!r:.40}. Pass the separator your labels use (e.g. "
            "target_sep='_' for 'A_B'), or leave the default '+'."
        )
    return sep


def check_perturbed(perturbations, control: str) -> None:
    """A design needs at least one perturbed condition besides the control."""
    if len(perturbations) < 2:
        raise DesignError(
            f"every row has the control label {control!r}: the design has no perturbed condition, so there is no "
            "effect to model (and no target to estimate). Pass control= the label of the unperturbed rows and "
            "include rows of at least one perturbation."
        )


def check_control(lab: list[str], control: str) -> None:
    if control not in set(lab):
        uniq = sorted(set(lab))
        raise DesignError(
            f"control label {control!r} does not occur in the perturbation column "
            f"(labels include: {uniq[:12]}{' ...' if len(uniq) > 12 else ''}). Pass control= the label of your "
            "unperturbed cells (e.g. 'control', 'non-targeting', 'NT')."
        )


def warn_batches_without_controls(batches, batch_index, is_control) -> None:
    missing = [b for i, b in enumerate(batches) if not np.any(is_control[batch_index == i])]
    if missing:
        warnings.warn(
            f"batches {missing} contain no control cells: effects of perturbations measured only there can be "
            "compared with controls only across batches, so their error includes the batch-effect variance, "
            "which does not shrink with more cells. Put controls in every batch.",
            UserWarning,
            stacklevel=4,
        )


def numeric_column(values, *, key: str, what: str, rows, fix: str) -> np.ndarray:
    """A table column of numbers (size factors, cell counts) as floats; text, dates or complex numbers are
    an error naming the column (``what`` ``key``) and the first bad row."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    try:
        if not_real_dtype(s.dtype):
            raise TypeError
        return s.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        _raise_non_numeric(s.to_numpy(dtype=object), key, index=list(rows), what=what,
                           dtype=s.dtype if not_real_dtype(s.dtype) else None, fix=fix)


def size_factors(sf, y, is_counts: bool, n: int, *, key: str | None = None, rows=None) -> np.ndarray:
    """Size factors given per row (``key``: the column they came from, named in errors), or computed."""
    if sf is not None:
        sf = np.asarray(sf, dtype=float)
        if sf.shape != (n,) or not np.all(np.isfinite(sf)) or np.any(sf <= 0):
            if key is None or sf.shape != (n,):
                raise DesignError("size factors must be one positive finite number per row.")
            bad = np.flatnonzero(~(np.isfinite(sf) & (sf > 0)))
            row = rows[bad[0]] if rows is not None else int(bad[0])
            raise DesignError(
                f"size_factor_key {key!r} must hold one positive finite number per row; {bad.size} of {n} rows do "
                f"not (e.g. {float(sf[bad[0]])!r} in row {row!r}). Fix or drop those rows, or leave size_factor_key "
                "out (counts then use each row's total count)."
            )
        return sf
    if not is_counts:
        return np.ones(n)
    if sp.issparse(y):  # blocks of rows: scipy's sum casts the whole matrix to the accumulator dtype at once
        step = max(1, _CHUNK // max(1, y.shape[1]))
        totals = np.concatenate([np.asarray(y[i:i + step].sum(axis=1)).ravel() for i in range(0, n, step)] or
                                [np.zeros(0)])
    else:
        totals = np.asarray(y.sum(axis=1)).ravel()
    if np.any(totals <= 0):
        raise DesignError(
            f"{int(np.sum(totals <= 0))} rows have zero total counts; drop empty cells before building a Design."
        )
    return totals / totals.mean()


def positive(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise DesignError(f"{name} must be positive and finite.")
    return x
