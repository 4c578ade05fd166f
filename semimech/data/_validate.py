"""Input checks for :class:`semimech.Design`; each error names the problem and the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech.errors import DesignError


def readouts(y):
    """Return a copy of the readout matrix as float CSR or a float ndarray; reject NaN/inf."""
    if sp.issparse(y):
        y = sp.csr_matrix(y, dtype=np.float64, copy=True)
        vals = y.data
    else:
        y = np.array(y, dtype=np.float64, copy=True)
        if y.ndim != 2:
            raise DesignError(f"readouts must be a 2-D rows x genes matrix, got shape {y.shape}.")
        vals = y
    if not np.all(np.isfinite(vals)):
        bad = int(np.size(vals) - np.isfinite(vals).sum())
        raise DesignError(
            f"readouts contain {bad} NaN or infinite values. Remove or impute them before building a Design "
            "(semimech never fills missing values silently)."
        )
    return y


def count_mode(y, counts: bool | None) -> bool:
    vals = y.data if sp.issparse(y) else y
    is_int = bool(np.all(vals >= 0) and np.all(np.mod(vals, 1) == 0))
    if counts is True and not is_int:
        neg = bool(np.any(vals < 0))
        raise DesignError(
            "counts=True but the readouts are not non-negative integers"
            + (" (negative values found)" if neg else " (non-integer values found)")
            + ". A count likelihood needs raw UMI counts: pass the raw-count layer (layer='counts'), "
            "or use counts=False for log-normalised data with a Gaussian likelihood."
        )
    if counts is None:
        return is_int
    return bool(counts)


def labels(values, *, what: str) -> list[str]:
    s = pd.Series(values)
    if s.isna().any():
        raise DesignError(f"{int(s.isna().sum())} rows have a missing {what}. Label every row (e.g. 'control').")
    return [str(x) for x in s.tolist()]


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
