r"""Simulation check of a layout: draw screens from the assumed model and measure the error.

Each replicate screen is drawn from the model of :mod:`semimech.design.error_analysis`,

.. math::

    y_{cpb} = \mu_0 + \delta_p + \beta_b + \sigma z_c, \qquad z_c \sim N(0, 1),
    \qquad \beta_b \sim N(0, \tau^2)\ \text{(fresh each replicate, unless fixed)},

with the cell counts of the layout. The effects are estimated with the same plain linear
contrasts the analytic functions describe (within-batch, cross-batch, pooled), and the
achieved bias, variance and MSE over replicates are reported with Monte Carlo standard errors
next to the analytic answer, so the two can be compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from jaxtyping import Float

from semimech._rng import host_rng
from semimech.design.error_analysis import COMPARISONS, ContrastError, contrast_weights, layout_error
from semimech.design.layout import Layout
from semimech.errors import DesignError

__all__ = ["SimulatedError", "simulate_layout"]

_MAX_DRAWS_PER_CHUNK = 4_000_000


@dataclasses.dataclass(frozen=True, eq=False)
class SimulatedError:
    """Achieved error of one estimator over simulated screens, with Monte Carlo errors.

    Attributes
    ----------
    comparison
        ``"within"``, ``"cross"``, ``"pooled"`` or ``"estimator"`` (the user hook).
    estimates
        Shape ``(replicates, perturbations)``: the effect estimates of every replicate.
    bias, variance, mse
        Shape ``(perturbations,)``: mean error, sample variance (``ddof=1``) and mean squared
        error of the estimates against the true effects.
    bias_se, variance_se, mse_se
        Monte Carlo standard errors of the three, from the spread over replicates
        (``sd / sqrt(R)`` of the error, of the squared deviation, and of the squared error).
    total_variance, total_variance_se
        Sum of the variances over perturbations and its Monte Carlo standard error (which
        accounts for the correlation that shared controls induce between perturbations).
    analytic
        The :func:`~semimech.design.layout_error` answer for the same estimator, or ``None``
        for a user estimator.
    """

    comparison: str
    estimates: Float[np.ndarray, "replicates perturbations"]
    bias: Float[np.ndarray, " perturbations"]
    variance: Float[np.ndarray, " perturbations"]
    mse: Float[np.ndarray, " perturbations"]
    bias_se: Float[np.ndarray, " perturbations"]
    variance_se: Float[np.ndarray, " perturbations"]
    mse_se: Float[np.ndarray, " perturbations"]
    total_variance: float
    total_variance_se: float
    analytic: ContrastError | None

    @property
    def num_replicates(self) -> int:
        """Number of simulated screens ``R``."""
        return self.estimates.shape[0]


def _summarise(comparison: str, est: np.ndarray, effects: np.ndarray, analytic) -> SimulatedError:
    r = est.shape[0]
    err = est - effects
    dev2 = (est - est.mean(axis=0)) ** 2 * (r / (r - 1))
    sq = err**2
    total = dev2.sum(axis=1)
    root_r = np.sqrt(r)
    return SimulatedError(
        comparison=comparison,
        estimates=est,
        bias=err.mean(axis=0),
        variance=dev2.mean(axis=0),
        mse=sq.mean(axis=0),
        bias_se=err.std(axis=0, ddof=1) / root_r,
        variance_se=dev2.std(axis=0, ddof=1) / root_r,
        mse_se=sq.std(axis=0, ddof=1) / root_r,
        total_variance=float(total.mean()),
        total_variance_se=float(total.std(ddof=1) / root_r),
        analytic=analytic,
    )


def _group_structure(layout: Layout):
    """Cells ordered group by group: perturbed groups (p, b) row-major, then controls per batch."""
    sizes = np.concatenate([layout.cells.ravel(), layout.controls])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return sizes, starts


def _noise_means(rng, layout: Layout, num: int, *, cell_level: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean of the standard-normal cell noise of every group, shape ``(num, groups)``.

    With ``cell_level`` every cell is drawn (also returned, shape ``(num, cells)``); otherwise
    the group means are drawn directly from their exact law ``N(0, 1/n)``.
    """
    sizes, starts = _group_structure(layout)
    means = np.zeros((num, sizes.size))
    nonempty = sizes > 0
    if not cell_level:
        means[:, nonempty] = rng.standard_normal((num, int(nonempty.sum()))) / np.sqrt(sizes[nonempty])
        return means, None
    z = rng.standard_normal((num, int(sizes.sum())))
    means[:, nonempty] = np.add.reduceat(z, starts[nonempty], axis=1) / sizes[nonempty]
    return means, z


def _check_inputs(layout, sigma, tau, effects, num_replicates, batch_effects, comparisons):
    if not isinstance(layout, Layout):
        raise DesignError(f"layout must be a semimech.design.Layout; got {type(layout).__name__}.")
    effects = np.asarray(effects, dtype=float)
    if effects.ndim == 0:
        effects = np.full(layout.n_perturbations, float(effects))
    if effects.shape != (layout.n_perturbations,) or not np.all(np.isfinite(effects)):
        raise DesignError(
            f"effects must be {layout.n_perturbations} finite numbers (one per perturbation) or a scalar; "
            f"got shape {effects.shape}."
        )
    if not (np.isfinite(sigma) and sigma >= 0 and np.isfinite(tau) and tau >= 0):
        raise DesignError(f"sigma and tau must be finite and >= 0; got sigma={sigma}, tau={tau}.")
    if int(num_replicates) != num_replicates or num_replicates < 2:
        raise DesignError(f"num_replicates must be an integer >= 2; got {num_replicates}.")
    if batch_effects is not None:
        batch_effects = np.asarray(batch_effects, dtype=float)
        if batch_effects.shape != (layout.n_batches,) or not np.all(np.isfinite(batch_effects)):
            raise DesignError(f"batch_effects must be {layout.n_batches} finite numbers; got shape {batch_effects.shape}.")
    bad = [c for c in comparisons if c not in COMPARISONS]
    if bad:
        raise DesignError(f"comparisons must be drawn from {COMPARISONS}; got {bad}.")
    return effects, batch_effects


def simulate_layout(
    layout: Layout,
    *,
    sigma: float,
    tau: float,
    effects,
    rng_key,
    num_replicates: int = 1000,
    comparisons: Sequence[str] = ("within", "cross"),
    weights: str = "inverse_variance",
    batch_effects=None,
    baseline: float = 0.0,
    drift: float = 0.0,
    time_mismatch: float = 0.0,
    cell_level: bool = True,
    estimator: Callable[..., np.ndarray] | None = None,
) -> dict[str, SimulatedError]:
    r"""Draw screens with a proposed layout and report the achieved error of the estimates.

    Parameters
    ----------
    layout
        Cells per (perturbation, batch) and controls per batch.
    sigma
        Cell-level noise sd on the log scale.
    tau
        Batch-effect sd on the log scale; ``beta_b ~ N(0, tau^2)`` drawn afresh per replicate.
    effects
        True effects ``delta_p`` (log scale), shape ``(perturbations,)`` or a scalar.
    rng_key
        Int seed or JAX key (required). The numpy generator is seeded from the key's words, so
        one key gives the same screens for every comparison (paired results).
    num_replicates
        Number of simulated screens ``R`` (>= 2). Monte Carlo standard errors scale as
        ``1/sqrt(R)``; the relative standard error of a variance is about ``sqrt(2/R)``.
    comparisons
        Estimators to apply: any of ``"within"``, ``"cross"``, ``"pooled"`` (see
        :func:`~semimech.design.contrast_weights`).
    weights
        ``"inverse_variance"`` or ``"equal"`` weighting of batches.
    batch_effects
        Optional fixed batch effects (shape ``(batches,)``) used in every replicate instead of
        random ones; the analytic answer then carries them as bias.
    baseline
        Control mean ``mu_0`` (log scale) at the time the perturbed cells are measured; it
        cancels in every contrast.
    drift, time_mismatch
        Controls measured ``time_mismatch = t - t'`` earlier than the perturbed cells, in a
        system whose control mean moves at ``drift`` per unit time: their mean is
        ``baseline - drift * time_mismatch`` (the first-order drift term of the analytic bias).
    cell_level
        Draw every cell (default). ``False`` draws each group's mean from its exact law
        ``N(0, sigma^2 / n)`` instead: same distribution of the estimates, much faster for
        large layouts.
    estimator
        Optional hook for another estimator (e.g. a fitted semimech model), called once per
        replicate as ``estimator(y=y, perturbation=p, batch=b)`` with per-cell arrays
        ``y (cells,)``, ``p (cells,)`` (``-1`` for controls, else the perturbation index) and
        ``b (cells,)``; it must return ``(perturbations,)`` effect estimates. Its results are
        stored under the key ``"estimator"``. Needs ``cell_level=True``.

    Returns
    -------
    dict of str to SimulatedError
        One entry per comparison (and ``"estimator"``), each with the analytic answer attached.
    """
    comparisons = tuple(comparisons)
    if not (np.isfinite(drift) and np.isfinite(time_mismatch) and np.isfinite(baseline)):
        raise DesignError("baseline, drift and time_mismatch must be finite numbers.")
    effects, batch_effects = _check_inputs(layout, sigma, tau, effects, num_replicates, batch_effects, comparisons)
    if estimator is not None and not cell_level:
        raise DesignError("estimator= needs cell-level data; pass cell_level=True.")
    rng = host_rng(rng_key)
    k, nb = layout.n_perturbations, layout.n_batches
    weight_sets = {c: contrast_weights(layout, comparison=c, weights=weights, sigma=sigma, tau=tau) for c in comparisons}
    estimates = {c: np.empty((num_replicates, k)) for c in comparisons}
    if estimator is not None:
        estimates["estimator"] = np.empty((num_replicates, k))
    n_cells = max(layout.total_cells, 1) if cell_level else k * nb + nb
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n_cells)
    mu = baseline + effects
    ctrl_mean = baseline - float(drift) * float(time_mismatch)
    for lo in range(0, num_replicates, chunk):
        num = min(chunk, num_replicates - lo)
        beta = rng.normal(0.0, tau, (num, nb)) if batch_effects is None else np.broadcast_to(batch_effects, (num, nb))
        zbar, z = _noise_means(rng, layout, num, cell_level=cell_level)
        ybar_p = mu[None, :, None] + beta[:, None, :] + sigma * zbar[:, : k * nb].reshape(num, k, nb)
        ybar_0 = ctrl_mean + beta + sigma * zbar[:, k * nb :]
        for c, (a, w0) in weight_sets.items():
            a0, c0 = np.nan_to_num(a), np.nan_to_num(w0)
            est = np.einsum("pb,rpb->rp", a0, ybar_p) - np.einsum("pb,rb->rp", c0, ybar_0)
            est[:, np.isnan(a).any(axis=1)] = np.nan
            estimates[c][lo : lo + num] = est
        if estimator is not None:
            estimates["estimator"][lo : lo + num] = _run_hook(estimator, layout, z, beta, mu, ctrl_mean, sigma)
    out = {}
    for c in comparisons:
        analytic = layout_error(layout, sigma=sigma, tau=tau, comparison=c, weights=weights,
                                batch_effects=batch_effects, drift=drift, time_mismatch=time_mismatch)
        out[c] = _summarise(c, estimates[c], effects, analytic)
    if estimator is not None:
        out["estimator"] = _summarise("estimator", estimates["estimator"], effects, None)
    return out


def _run_hook(estimator, layout: Layout, z, beta, mu, ctrl_mean, sigma) -> np.ndarray:
    k, nb = layout.n_perturbations, layout.n_batches
    sizes, _ = _group_structure(layout)
    pert = np.concatenate([np.repeat(np.arange(k), nb), np.full(nb, -1)])
    batch = np.concatenate([np.tile(np.arange(nb), k), np.arange(nb)])
    p_cell, b_cell = np.repeat(pert, sizes), np.repeat(batch, sizes)
    mean_cell = np.where(p_cell >= 0, mu[np.maximum(p_cell, 0)], ctrl_mean)
    out = np.empty((z.shape[0], k))
    for r in range(z.shape[0]):
        y = mean_cell + beta[r, b_cell] + sigma * z[r]
        res = np.asarray(estimator(y=y, perturbation=p_cell, batch=b_cell), dtype=float)
        if res.shape != (k,):
            raise DesignError(f"estimator returned shape {res.shape}; it must return one effect per perturbation ({k},).")
        out[r] = res
    return out
