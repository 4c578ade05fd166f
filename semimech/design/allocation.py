r"""How many controls to put in each batch: Dunnett's allocation under a cell budget.

In a batch of ``C`` cells, ``K_b`` perturbations with ``n_p`` cells each share ``n_0``
controls, ``K_b n_p + n_0 = C``. Compared within the batch, each effect has variance
:math:`\sigma^2(1/n_p + 1/n_0)` (per batch; divided by the number of batches it appears in).
The total over the ``K_b`` contrasts,

.. math::

    V(n_p, n_0) = \sigma^2 K_b \Big(\frac{1}{n_p} + \frac{1}{n_0}\Big),

is minimised under the budget (Lagrange: :math:`K_b / n_p^2 = \lambda K_b`,
:math:`K_b / n_0^2 = \lambda`) at :math:`n_0 = \sqrt{K_b}\, n_p` — Dunnett's classic
allocation for many-to-one comparisons: the shared control arm gets ``sqrt(K_b)`` times the
cells of a perturbation. The recommendation searches the whole numbers for the minimiser.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from semimech.design.error_analysis import cross_batch_error, layout_error
from semimech.design.layout import Layout, balanced_layout
from semimech.errors import DesignError

__all__ = ["ControlAllocation", "recommend_control_allocation"]


@dataclasses.dataclass(frozen=True, eq=False)
class ControlAllocation:
    """A recommended split of each batch's cells between perturbations and controls.

    Attributes
    ----------
    n_perturbations, n_batches, perturbations_per_batch, cells_per_batch
        The problem: ``K``, ``B``, ``K_b`` and the per-batch budget ``C``.
    cells_per_perturbation
        ``n_p``: cells of each perturbation in each batch where it appears.
    controls_per_batch
        ``n_0``: control cells in every batch (always >= ``min_controls_per_batch``).
    layout
        The recommended :class:`~semimech.design.Layout` (perturbations dealt round-robin).
    variance_per_effect
        Mean over perturbations of the within-batch variance of an effect estimate.
    total_variance
        Sum over perturbations of that variance (the criterion minimised).
    equal_cells
        ``n``: cells per arm if controls got the same share as a perturbation,
        ``floor(C / (K_b + 1))``.
    equal_total_variance
        Total variance of that equal allocation.
    cross_batch_variance_per_pair
        Variance of one effect compared against controls of *another* batch (one batch per
        side) with this allocation: ``sigma^2 (1/n_p + 1/n_0) + 2 tau^2``.
    explanation
        The recommendation in plain language.
    """

    n_perturbations: int
    n_batches: int
    perturbations_per_batch: int
    cells_per_batch: int
    cells_per_perturbation: int
    controls_per_batch: int
    layout: Layout
    variance_per_effect: float
    total_variance: float
    equal_cells: int
    equal_total_variance: float
    cross_batch_variance_per_pair: float
    explanation: str

    @property
    def variance_reduction(self) -> float:
        """``1 - total_variance / equal_total_variance``: the gain over equal allocation."""
        return 1.0 - self.total_variance / self.equal_total_variance


def _as_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise DesignError(f"{name} must be a whole number >= {minimum}; got {value!r}.")
    return int(value)


def recommend_control_allocation(
    n_perturbations: int,
    *,
    n_batches: int,
    sigma: float,
    tau: float,
    cells_per_batch: int | None = None,
    cells_total: int | None = None,
    perturbations_per_batch: int | None = None,
    min_controls_per_batch: int = 1,
) -> ControlAllocation:
    r"""Recommend controls per batch and cells per perturbation for a within-batch screen.

    Every batch gets controls (at least ``min_controls_per_batch``), and within each batch the
    whole-number ``(n_p, n_0)`` with ``K_b n_p + n_0 = C`` that minimises
    :math:`K_b(1/n_p + 1/n_0)` is chosen — close to Dunnett's ``n_0 = sqrt(K_b) n_p``.

    Parameters
    ----------
    n_perturbations
        ``K``, perturbations in the screen.
    n_batches
        ``B``, batches (lanes, plates, 10x channels).
    sigma
        Cell-level noise sd on the log scale (scales the reported variances).
    tau
        Batch-effect sd on the log scale (used to state the cost of cross-batch comparisons).
    cells_per_batch, cells_total
        The budget: give exactly one. ``cells_total`` is split evenly, ``C = cells_total // B``.
    perturbations_per_batch
        ``K_b`` (default ``K``: every perturbation in every batch). With ``K_b < K`` the
        perturbations are dealt round-robin over batches.
    min_controls_per_batch
        Floor on controls per batch (>= 1): a batch without controls can only be compared
        across batches.

    Returns
    -------
    ControlAllocation
        The numbers, the layout, and an ``explanation`` string.

    Raises
    ------
    DesignError
        Missing or doubled budget, non-positive counts, or a budget too small to give every
        perturbation one cell and the batch its minimum controls.
    """
    k = _as_int(n_perturbations, "n_perturbations", minimum=1)
    nb = _as_int(n_batches, "n_batches", minimum=1)
    if (cells_per_batch is None) == (cells_total is None):
        raise DesignError("Give exactly one budget: cells_per_batch=... or cells_total=... .")
    if cells_per_batch is None:
        budget = _as_int(cells_total, "cells_total", minimum=1) // nb
    else:
        budget = _as_int(cells_per_batch, "cells_per_batch", minimum=1)
    k_b = k if perturbations_per_batch is None else _as_int(perturbations_per_batch, "perturbations_per_batch", minimum=1)
    if k_b > k:
        raise DesignError(f"perturbations_per_batch ({k_b}) cannot exceed n_perturbations ({k}).")
    m = _as_int(min_controls_per_batch, "min_controls_per_batch (every batch needs controls)", minimum=1)
    if not (np.isfinite(sigma) and sigma > 0 and np.isfinite(tau) and tau >= 0):
        raise DesignError(f"Need sigma > 0 and tau >= 0 (log-scale sds); got sigma={sigma}, tau={tau}.")
    if budget < k_b + m:
        raise DesignError(
            f"A batch of {budget} cells cannot hold {k_b} perturbations (>= 1 cell each) and {m} control(s); "
            "raise the budget, or lower perturbations_per_batch and add batches."
        )
    n_p_grid = np.arange(1, (budget - m) // k_b + 1)
    n_0_grid = budget - k_b * n_p_grid
    n_p = int(n_p_grid[np.argmin(1.0 / n_p_grid + 1.0 / n_0_grid)])
    n_0 = budget - k_b * n_p
    layout = balanced_layout(k, nb, cells_per_perturbation=n_p, controls_per_batch=n_0, perturbations_per_batch=k_b)
    err = layout_error(layout, sigma=sigma, tau=tau, comparison="within")
    n_eq = budget // (k_b + 1)
    eq_layout = balanced_layout(k, nb, cells_per_perturbation=n_eq, controls_per_batch=n_eq, perturbations_per_batch=k_b)
    eq_total = layout_error(eq_layout, sigma=sigma, tau=tau, comparison="within").total_variance
    cross = float(cross_batch_error(n_p, n_0, sigma=sigma, tau=tau).variance)
    rec = dict(
        n_perturbations=k, n_batches=nb, perturbations_per_batch=k_b, cells_per_batch=budget,
        cells_per_perturbation=n_p, controls_per_batch=n_0, layout=layout,
        variance_per_effect=float(np.mean(err.variance)), total_variance=err.total_variance,
        equal_cells=n_eq, equal_total_variance=eq_total, cross_batch_variance_per_pair=cross,
    )
    return ControlAllocation(**rec, explanation=_explain(rec, tau=tau))


def _explain(r: dict, *, tau: float) -> str:
    k_b, n_p, n_0 = r["perturbations_per_batch"], r["cells_per_perturbation"], r["controls_per_batch"]
    reps = r["n_batches"] * k_b / r["n_perturbations"]
    gain = 1.0 - r["total_variance"] / r["equal_total_variance"]
    if k_b > 1:
        why = (
            f"controls/perturbation = {n_0 / n_p:.2f}, close to Dunnett's sqrt({k_b}) = {np.sqrt(k_b):.2f}: the "
            f"controls are shared by {k_b} comparisons, so they are worth more cells than any one perturbation"
        )
    else:
        why = "one perturbation per batch, so it and the controls get equal shares"
    text = (
        f"Put {n_0} control cells and {n_p} cells of each of the {k_b} perturbation(s) in every batch of "
        f"{r['cells_per_batch']} cells ({why}). Compared with the controls of its own batch and pooled over the "
        f"{reps:g} batch(es) it appears in (on average), an effect has variance {r['variance_per_effect']:.3g} "
        f"(sd {np.sqrt(r['variance_per_effect']):.3g} on the log scale); the total over the {r['n_perturbations']} "
        f"perturbations is {r['total_variance']:.3g}"
    )
    if r["equal_cells"] != n_p or r["equal_cells"] != n_0:
        text += (
            f", {100 * gain:.0f}% below the {r['equal_total_variance']:.3g} of giving controls the same "
            f"{r['equal_cells']} cells as a perturbation."
        )
    else:
        text += "."
    text += (
        f" Keep controls in every batch and compare within batches: an effect compared with controls of another "
        f"batch has variance {r['cross_batch_variance_per_pair']:.3g}, of which 2*tau^2 = {2 * tau**2:.3g} comes "
        "from the batch effects and does not shrink with more cells."
    )
    return text
