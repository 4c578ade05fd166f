"""Arrays whose rows (and columns) are named: the model options semimech builds from a design (target
embeddings, masks, networks, shared targets), so that a fit of another design takes each entry by name.
"""

from __future__ import annotations

import numpy as np

from semimech.errors import DesignError


class NamedRows(np.ndarray):
    """A float array whose rows are named (``.row_names``: the targets or genes of the design it was built
    on), and for a ``(targets, genes)`` table also its columns (``.col_names``), as :func:`target_embedding`
    and :func:`semimech.models.target_gene_mask` return. A fit takes the rows (and columns) of its design's
    targets / genes by name (:func:`semimech.models._effects.check_embedding`, :func:`named_rows`). Anything
    derived from it (a slice, a copy, arithmetic) has no names (its rows may no longer be the named ones)
    and is taken row by row, as a plain array is."""

    def __new__(cls, values, row_names, col_names=None):
        arr = np.asarray(values).view(cls)
        rows = tuple(str(n) for n in row_names)
        cols = None if col_names is None else tuple(str(n) for n in col_names)
        if arr.ndim < 1 or arr.shape[0] != len(rows) or (cols is not None and (arr.ndim < 2 or
                                                                              arr.shape[1] != len(cols))):
            raise ValueError(f"{len(rows)} row names and {cols and len(cols)} column names for an array of shape "
                             f"{arr.shape}.")
        arr.row_names, arr.col_names = rows, cols
        return arr

    def __array_finalize__(self, obj):
        self.row_names = self.col_names = None

    def __reduce__(self):  # pickled fits keep the names
        fn, args, state = super().__reduce__()
        return fn, args, (state, self.row_names, self.col_names)

    def __setstate__(self, state):
        base, self.row_names, self.col_names = state
        super().__setstate__(base)


def named_rows(value, rows, cols=None, *, key: str, what: str, cols_what: str = "genes"):
    """``value`` with the rows (and columns) named ``rows`` (``cols``), in that order, when it names them
    (:class:`NamedRows`); ``None`` when it does not (a plain array: the caller checks its shape). A name of
    ``rows`` / ``cols`` that ``value`` lacks is a ``DesignError`` naming it."""
    row_names = getattr(value, "row_names", None)
    if row_names is None:
        return None
    col_names = getattr(value, "col_names", None)
    pick = []
    for names, have, kind, axis in ((rows, row_names, what, "row"), (cols, col_names, cols_what, "column")):
        if names is None or have is None:
            pick.append(None)
            continue
        where = {n: i for i, n in enumerate(have)}
        absent = [n for n in names if str(n) not in where]
        if absent:
            raise DesignError(
                f"{key} has no {axis} for {len(absent)} of the design's {len(names)} "
                f"{kind}: {absent[:10]}{'...' if len(absent) > 10 else ''}; it was built on another design. Build it "
                "on this one.")
        pick.append(None if tuple(have) == tuple(str(n) for n in names) else [where[str(n)] for n in names])
    if pick == [None, None]:
        return value
    arr = np.asarray(value)
    if pick[0] is not None:
        arr = arr[pick[0]]
    if pick[1] is not None:
        arr = arr[:, pick[1]]
    return NamedRows(arr, rows, cols if col_names is not None else None)
