"""The layout of a screen: how many cells of each perturbation, and of controls, in each batch.

A :class:`Layout` is the object every design tool takes: the analytic error analysis
(:func:`~semimech.design.layout_error`), the simulation check
(:func:`~semimech.design.simulate_layout`) and the control-allocation recommendation
(:func:`~semimech.design.recommend_control_allocation`, which returns one).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from jaxtyping import Int

from semimech.errors import DesignError

__all__ = ["Layout", "balanced_layout"]


def _as_counts(value, *, name: str, ndim: int) -> np.ndarray:
    """Validate a count array: finite, whole, non-negative numbers of the right rank."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DesignError(f"Layout.{name} must be an array of cell counts; got {type(value).__name__}.") from exc
    if arr.ndim != ndim:
        want = "(perturbations, batches)" if ndim == 2 else "(batches,)"
        raise DesignError(f"Layout.{name} must have shape {want}; got an array of shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise DesignError(f"Layout.{name} contains NaN or infinite entries; give whole numbers of cells.")
    if np.any(arr < 0):
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise DesignError(
            f"Layout.{name} has a negative cell count ({arr[idx]:g} at index {idx}); "
            "counts are numbers of cells and must be >= 0."
        )
    if np.any(arr != np.round(arr)):
        idx = tuple(int(i) for i in np.argwhere(arr != np.round(arr))[0])
        raise DesignError(
            f"Layout.{name} has a non-integer cell count ({arr[idx]:g} at index {idx}); round it to whole cells."
        )
    return arr.astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Cells per (perturbation, batch) and control cells per batch of a proposed screen.

    Parameters
    ----------
    cells
        ``cells[p, b]`` is the number of cells carrying perturbation ``p`` measured in batch
        ``b`` (``n_pb``). Whole numbers >= 0.
    controls
        ``controls[b]`` is the number of control (unperturbed) cells in batch ``b`` (``n_0b``).
    perturbation_names, batch_names
        Optional labels used in messages and reports; default ``"p0", "p1", ...`` and
        ``"b0", "b1", ...``.

    Raises
    ------
    DesignError
        Negative, non-integer or non-finite counts; mismatched shapes; a perturbation with no
        cells at all.

    Warns
    -----
    UserWarning
        A batch holds perturbed cells but no controls. Effects measured in that batch can only
        be compared with controls of *other* batches, so their error carries the batch-effect
        variance ``2 tau^2`` per pair of batches, which does not shrink with more cells.

    Notes
    -----
    The record is frozen; its arrays are read-only copies of the input.
    """

    cells: Int[np.ndarray, "perturbations batches"]
    controls: Int[np.ndarray, " batches"]
    perturbation_names: tuple[str, ...] | None = None
    batch_names: tuple[str, ...] | None = None

    def __post_init__(self):
        cells = _as_counts(self.cells, name="cells", ndim=2)
        controls = _as_counts(self.controls, name="controls", ndim=1)
        n_pert, n_batch = cells.shape
        if controls.shape[0] != n_batch:
            raise DesignError(
                f"Layout.cells has {n_batch} batches (columns) but Layout.controls has {controls.shape[0]} "
                "entries; give one control count per batch."
            )
        if n_pert == 0 or n_batch == 0:
            raise DesignError(f"Layout needs at least one perturbation and one batch; got cells of shape {cells.shape}.")
        p_names = _names(self.perturbation_names, n_pert, prefix="p", what="perturbation_names")
        b_names = _names(self.batch_names, n_batch, prefix="b", what="batch_names")
        empty = np.flatnonzero(cells.sum(axis=1) == 0)
        if empty.size:
            raise DesignError(
                f"Perturbation(s) {[p_names[i] for i in empty]} have no cells in any batch; "
                "remove them from the layout or give them cells."
            )
        cells.setflags(write=False)
        controls.setflags(write=False)
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "controls", controls)
        object.__setattr__(self, "perturbation_names", p_names)
        object.__setattr__(self, "batch_names", b_names)
        _warn_missing_controls(cells, controls, p_names, b_names)

    @property
    def n_perturbations(self) -> int:
        """Number of perturbations ``K`` (rows of ``cells``)."""
        return self.cells.shape[0]

    @property
    def n_batches(self) -> int:
        """Number of batches ``B`` (columns of ``cells``)."""
        return self.cells.shape[1]

    @property
    def total_cells(self) -> int:
        """All cells of the screen, perturbed and control."""
        return int(self.cells.sum() + self.controls.sum())


def _names(names, n: int, *, prefix: str, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}{i}" for i in range(n))
    names = tuple(str(x) for x in names)
    if len(names) != n:
        raise DesignError(f"Layout.{what} has {len(names)} labels but the layout has {n}; give one label each.")
    if len(set(names)) != n:
        raise DesignError(f"Layout.{what} contains duplicate labels; labels must be unique.")
    return names


def _warn_missing_controls(cells, controls, p_names, b_names) -> None:
    bare = np.flatnonzero((controls == 0) & (cells.sum(axis=0) > 0))
    if bare.size == 0:
        return
    stranded = [
        p_names[p] for p in range(cells.shape[0]) if not np.any((cells[p] > 0) & (controls > 0))
    ]
    msg = (
        f"Batch(es) {[b_names[b] for b in bare]} contain perturbed cells but no controls. Effects "
        "measured there can only be compared with controls of other batches, so their error includes "
        "the batch-effect variance 2*tau^2 per pair of batches, which does not shrink with more cells; "
        "within-batch estimates ignore those cells. Put some controls in every batch."
    )
    if stranded:
        msg += f" Perturbation(s) {stranded} have no batch with controls and no within-batch estimate at all."
    warnings.warn(msg, UserWarning, stacklevel=4)


def balanced_layout(
    n_perturbations: int,
    n_batches: int,
    *,
    cells_per_perturbation: int,
    controls_per_batch: int,
    perturbations_per_batch: int | None = None,
) -> Layout:
    """A layout with the same number of cells for every perturbation present in a batch.

    Parameters
    ----------
    n_perturbations
        ``K``, number of perturbations.
    n_batches
        ``B``, number of batches.
    cells_per_perturbation
        ``n_p``, cells of a perturbation in each batch where it appears.
    controls_per_batch
        ``n_0``, control cells in every batch.
    perturbations_per_batch
        ``K_b``, perturbations in each batch (default ``K``: every perturbation in every
        batch). Perturbations are dealt round-robin: batch ``b`` holds perturbations
        ``(b * K_b + j) mod K`` for ``j < K_b``, so each appears in about ``B K_b / K`` batches.

    Returns
    -------
    Layout
    """
    k_b = n_perturbations if perturbations_per_batch is None else int(perturbations_per_batch)
    if n_perturbations < 1 or n_batches < 1:
        raise DesignError(f"Need n_perturbations >= 1 and n_batches >= 1; got {n_perturbations} and {n_batches}.")
    if not 1 <= k_b <= n_perturbations:
        raise DesignError(f"perturbations_per_batch must lie in [1, n_perturbations={n_perturbations}]; got {k_b}.")
    if n_batches * k_b < n_perturbations:
        raise DesignError(
            f"{n_batches} batches x {k_b} perturbations per batch cannot hold all {n_perturbations} perturbations; "
            "raise perturbations_per_batch or n_batches."
        )
    cells = np.zeros((n_perturbations, n_batches), dtype=np.int64)
    for b in range(n_batches):
        cells[(b * k_b + np.arange(k_b)) % n_perturbations, b] = cells_per_perturbation
    return Layout(cells=cells, controls=np.full(n_batches, controls_per_batch, dtype=np.int64))
