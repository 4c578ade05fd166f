"""Input checks for :class:`semimech.Design`; each error names the problem and the fix."""

from __future__ import annotations

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
        try:
            out[:, j] = col.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            _raise_non_numeric(col.to_numpy(dtype=object), name, index=frame.index, what="readout column")
    return out


def _not_a_number(x) -> bool:
    if x is None:
        return False  # NumPy reads None as NaN; the NaN check names it
    try:
        float(x)
    except (TypeError, ValueError):
        return True
    return False


def _raise_non_numeric(values, name, *, index=None, what: str):
    bad = [i for i, x in enumerate(values) if _not_a_number(x)]
    i = bad[0] if bad else 0
    row = f" in row {index[i]!r}" if index is not None else f" in row {i}"
    raise DesignError(
        f"{what} {name!r} holds non-numeric values ({len(bad)} of {len(values)}, e.g. {values[i]!r}{row}). "
        "Readouts must be numbers: convert the column (pd.to_numeric), mark missing values as NaN and drop or "
        "impute them, or leave the column out."
    )


def readouts(y, *, genes=None, rows=None):
    """The readout matrix checked (NaN/inf and non-numbers rejected), in the input's own numeric dtype.

    Returns a CSR matrix or an ndarray of an integer or float dtype; it may be the caller's own
    object (never written to): :func:`stored` makes the design's copy once the count mode is
    known, so no float64 copy of a count matrix is ever made.
    """
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


def labels(values, *, what: str) -> list[str]:
    s = pd.Series(values)
    if s.isna().any():
        raise DesignError(f"{int(s.isna().sum())} rows have a missing {what}. Label every row (e.g. 'control').")
    return [str(x) for x in s.tolist()]


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


def size_factors(sf, y, is_counts: bool, n: int) -> np.ndarray:
    if sf is not None:
        sf = np.asarray(sf, dtype=float)
        if sf.shape != (n,) or not np.all(np.isfinite(sf)) or np.any(sf <= 0):
            raise DesignError("size factors must be one positive finite number per row.")
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
