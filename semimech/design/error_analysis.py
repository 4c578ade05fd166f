r"""Analytic bias and variance of a perturbation-effect estimate under batch effects.

The model (FRAMEWORK.md section 6), on the log-expression scale of one gene: cell ``c``
carrying perturbation ``p`` (``p = 0`` for controls) measured in batch ``b`` reads

.. math::

    y_{cpb} = \mu_p + \beta_b + \varepsilon_{c}, \qquad
    \varepsilon_c \sim N(0, \sigma^2), \qquad \beta_b \sim N(0, \tau^2),

independently. The target is the effect :math:`\delta_p = \mu_p - \mu_0`. Every estimator here
is a *linear contrast of batch means*

.. math::

    \hat\delta_p = \sum_b a_{pb}\,\bar y_{pb} - \sum_b c_{pb}\,\bar y_{0b},
    \qquad \sum_b a_{pb} = \sum_b c_{pb} = 1,

with :math:`\bar y_{pb}` the mean of the :math:`n_{pb}` cells of perturbation ``p`` in batch
``b`` and :math:`\bar y_{0b}` the mean of the :math:`n_{0b}` controls. Then

.. math::

    \hat\delta_p - \delta_p = \sum_b (a_{pb} - c_{pb})\,\beta_b
    + \sum_b a_{pb}\bar\varepsilon_{pb} - \sum_b c_{pb}\bar\varepsilon_{0b},

so (with :math:`\beta` random) the estimate is unbiased and

.. math::

    \operatorname{Var}\hat\delta_p =
    \underbrace{\sigma^2\Big(\sum_b \frac{a_{pb}^2}{n_{pb}} + \sum_b \frac{c_{pb}^2}{n_{0b}}\Big)}_{\text{noise: shrinks with cells}}
    + \underbrace{\tau^2 \sum_b (a_{pb} - c_{pb})^2}_{\text{batch: does not shrink}}.

A within-batch contrast has :math:`a = c`, so the batch term cancels. A cross-batch contrast
(perturbed cells in one batch, controls in another) has :math:`\sum_b (a-c)^2 = 2`: the excess
variance ``2 tau^2`` per pair of batches. For *fixed* batch effects :math:`\beta` the same term
is a bias :math:`\sum_b (a_{pb} - c_{pb})\beta_b` (pass ``batch_effects=``).

In a differentiating system the control mean moves, :math:`\mu_0(t)`, at rate
``drift`` :math:`= d\mu_0/dt` (a component of :math:`f(x_0)`; its norm over genes is
:math:`\lVert f(x_0)\rVert`, zero only at a steady state). Perturbed cells measured at ``t``
against controls measured at ``t'`` then carry, to first order, the bias
``drift * time_mismatch`` with ``time_mismatch = t - t'`` (magnitude
:math:`\lVert f(x_0)\rVert |t - t'|` over genes). It is added to ``bias`` for any comparison
where you pass it.
For a nonlinear measurement map the batch cancellation holds to first order only; these
formulas are the linear (log-scale) answer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from jaxtyping import Float

from semimech.design.layout import Layout
from semimech.errors import DesignError

__all__ = ["ContrastError", "within_batch_error", "cross_batch_error", "layout_error"]

Comparison = Literal["within", "cross", "pooled"]
Weighting = Literal["inverse_variance", "equal"]
COMPARISONS = ("within", "cross", "pooled")


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastError:
    """Error of a perturbation-effect estimate: bias, variance split by source, and MSE.

    Attributes
    ----------
    bias
        Expected error ``E[hat delta - delta]``: the time-mismatch drift term plus, when batch
        effects are given as fixed numbers, ``sum_b (a_b - c_b) beta_b``. Zero otherwise.
    noise_variance
        ``sigma^2 (sum_b a_b^2 / n_pb + sum_b c_b^2 / n_0b)``: shrinks as cells are added.
    batch_variance
        ``tau^2 sum_b (a_b - c_b)^2``: the batch-effect variance that does not shrink with
        cells (zero for within-batch contrasts and when batch effects are fixed).
    variance
        ``noise_variance + batch_variance``.
    mse
        ``bias^2 + variance``.

    All fields share one shape: scalars or broadcast inputs for :func:`within_batch_error` and
    :func:`cross_batch_error`, ``(perturbations,)`` for :func:`layout_error` (NaN for a
    perturbation that the chosen comparison cannot estimate). Units: squared log-expression.
    """

    bias: Float[np.ndarray, "..."]
    noise_variance: Float[np.ndarray, "..."]
    batch_variance: Float[np.ndarray, "..."]
    variance: Float[np.ndarray, "..."]
    mse: Float[np.ndarray, "..."]

    @property
    def total_variance(self) -> float:
        """Sum of the variances over perturbations (Dunnett's criterion); NaN if any is NaN."""
        return float(np.sum(self.variance))

    @property
    def total_mse(self) -> float:
        """Sum of the MSEs over perturbations."""
        return float(np.sum(self.mse))


def _make_error(noise, batch, bias) -> ContrastError:
    noise, batch, bias = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (noise, batch, bias)))
    bias = np.where(np.isnan(noise), np.nan, bias)
    variance = noise + batch
    fields = dict(bias=bias, noise_variance=noise, batch_variance=batch, variance=variance, mse=bias**2 + variance)
    if variance.ndim == 0:
        return ContrastError(**{k: float(v) for k, v in fields.items()})
    return ContrastError(**{k: np.array(v) for k, v in fields.items()})


def _check_scale(sigma, tau) -> tuple[np.ndarray, np.ndarray]:
    sigma, tau = np.asarray(sigma, dtype=float), np.asarray(tau, dtype=float)
    if np.any(~np.isfinite(sigma)) or np.any(sigma < 0):
        raise DesignError(f"sigma (cell-level noise sd, log scale) must be finite and >= 0; got {sigma}.")
    if np.any(~np.isfinite(tau)) or np.any(tau < 0):
        raise DesignError(f"tau (batch-effect sd, log scale) must be finite and >= 0; got {tau}.")
    return sigma, tau


def _check_positive(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise DesignError(f"{name} must be > 0 (a contrast needs cells on both sides); got {value}.")
    return arr


def _drift_bias(drift, time_mismatch) -> np.ndarray:
    drift, dt = np.asarray(drift, dtype=float), np.asarray(time_mismatch, dtype=float)
    if np.any(~np.isfinite(drift)) or np.any(~np.isfinite(dt)):
        raise DesignError("drift and time_mismatch must be finite numbers.")
    return drift * dt


def within_batch_error(
    cells_per_perturbation,
    controls_per_batch,
    *,
    n_batches=1,
    sigma,
    tau=0.0,
    drift=0.0,
    time_mismatch=0.0,
) -> ContrastError:
    r"""Error of a within-batch contrast pooled over the batches where a perturbation appears.

    The perturbation has ``n_p`` cells in each of ``B`` batches, each batch with ``n_0``
    controls; in each batch the estimate is :math:`\bar y_{pb} - \bar y_{0b}` (the batch effect
    cancels), and the ``B`` batch estimates are averaged with equal weights (equal to the
    inverse-variance weights here, since all batches are alike):

    .. math::

        \operatorname{Var} = \frac{\sigma^2}{B}\Big(\frac{1}{n_p} + \frac{1}{n_0}\Big),
        \qquad \text{bias} = \text{drift}\,(t - t').

    Parameters
    ----------
    cells_per_perturbation
        ``n_p``, cells of the perturbation per batch (> 0; arrays broadcast).
    controls_per_batch
        ``n_0``, control cells per batch (> 0).
    n_batches
        ``B``, batches holding both the perturbation and controls.
    sigma
        Cell-level noise sd on the log scale.
    tau
        Batch-effect sd on the log scale; it does not enter (the batch term cancels) and is
        accepted so the call mirrors :func:`cross_batch_error`.
    drift, time_mismatch
        Rate of change of the control mean ``d mu_0 / dt`` (log-expression per unit time; a
        component of ``f(x_0)``) and the gap ``t - t'`` between the perturbed and the control
        measurement times; their product is the (signed, first-order) bias.

    Returns
    -------
    ContrastError
    """
    n_p = _check_positive(cells_per_perturbation, "cells_per_perturbation")
    n_0 = _check_positive(controls_per_batch, "controls_per_batch")
    b = _check_positive(n_batches, "n_batches")
    sigma, tau = _check_scale(sigma, tau)
    noise = sigma**2 * (1.0 / n_p + 1.0 / n_0) / b
    return _make_error(noise, 0.0 * tau, _drift_bias(drift, time_mismatch))


def cross_batch_error(
    cells_per_perturbation,
    controls_per_batch,
    *,
    n_batches=1,
    n_control_batches=None,
    sigma,
    tau,
    drift=0.0,
    time_mismatch=0.0,
) -> ContrastError:
    r"""Error of a cross-batch contrast: perturbed cells in some batches, controls in others.

    The perturbation has ``n_p`` cells in each of ``B`` batches; controls come from ``B_0``
    *other* batches with ``n_0`` cells each. Each side is the equal-weight mean of its batch
    means (equal to the pooled cell mean here), so

    .. math::

        \operatorname{Var} = \sigma^2\Big(\frac{1}{B n_p} + \frac{1}{B_0 n_0}\Big)
        + \tau^2\Big(\frac{1}{B} + \frac{1}{B_0}\Big).

    With one batch on each side the batch term is ``2 tau^2``: it does not shrink with ``n_p``
    or ``n_0``, only with more batches. For fixed (not averaged-over) batch effects this term
    is the spread of a bias, ``beta_b - beta_b'``, across screens.

    Parameters
    ----------
    cells_per_perturbation, controls_per_batch
        ``n_p`` and ``n_0`` (> 0; arrays broadcast).
    n_batches
        ``B``, batches holding the perturbation.
    n_control_batches
        ``B_0``, batches holding the controls used (default ``B``).
    sigma, tau
        Cell-level noise sd and batch-effect sd, log scale.
    drift, time_mismatch
        As in :func:`within_batch_error`.

    Returns
    -------
    ContrastError
    """
    n_p = _check_positive(cells_per_perturbation, "cells_per_perturbation")
    n_0 = _check_positive(controls_per_batch, "controls_per_batch")
    b = _check_positive(n_batches, "n_batches")
    b0 = b if n_control_batches is None else _check_positive(n_control_batches, "n_control_batches")
    sigma, tau = _check_scale(sigma, tau)
    noise = sigma**2 * (1.0 / (b * n_p) + 1.0 / (b0 * n_0))
    batch = tau**2 * (1.0 / b + 1.0 / b0)
    return _make_error(noise, batch, _drift_bias(drift, time_mismatch))


def _normalise_rows(w: np.ndarray) -> np.ndarray:
    total = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = w / total
    out[total[:, 0] == 0] = np.nan
    return out


def contrast_weights(
    layout: Layout,
    *,
    comparison: Comparison = "within",
    weights: Weighting = "inverse_variance",
    sigma: float = 1.0,
    tau: float = 0.0,
) -> tuple[Float[np.ndarray, "perturbations batches"], Float[np.ndarray, "perturbations batches"]]:
    r"""Weights ``(a, c)`` of the batch means in each perturbation's estimate.

    ``a[p, b]`` weighs the perturbed mean :math:`\bar y_{pb}`, ``c[p, b]`` the control mean
    :math:`\bar y_{0b}`; each row sums to one, or is NaN when the comparison is impossible.

    - ``"within"``: batches ``b`` with ``n_pb > 0`` and ``n_0b > 0``; ``a = c = w`` with
      ``w_b`` proportional to ``1 / (1/n_pb + 1/n_0b)`` (``"inverse_variance"``, optimal since
      the batch effect cancels) or equal. Perturbed cells in batches without controls are unused.
    - ``"cross"``: perturbed batches ``{b: n_pb > 0}`` against control batches
      ``{b: n_0b > 0, n_pb = 0}``; on each side ``w_b`` proportional to
      ``1 / (sigma^2 / n_b + tau^2)`` (``"inverse_variance"``, the variance of one batch mean
      under random batch effects) or equal.
    - ``"pooled"``: all perturbed cells against all control cells, ignoring batch (``a``
      proportional to ``n_pb``, ``c`` to ``n_0b``); ``weights`` is ignored.
    """
    if comparison not in COMPARISONS:
        raise DesignError(f"comparison must be one of {COMPARISONS}; got {comparison!r}.")
    if weights not in ("inverse_variance", "equal"):
        raise DesignError(f"weights must be 'inverse_variance' or 'equal'; got {weights!r}.")
    n_p = layout.cells.astype(float)
    n_0 = np.broadcast_to(layout.controls.astype(float), n_p.shape)
    if comparison == "pooled":
        return _normalise_rows(n_p), _normalise_rows(n_0.copy())
    if comparison == "within":
        both = (n_p > 0) & (n_0 > 0)
        if weights == "equal":
            w = both.astype(float)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                w = np.where(both, n_p * n_0 / (n_p + n_0), 0.0)
        w = _normalise_rows(w)
        return w, w.copy()
    pert_side = n_p > 0
    ctrl_side = (n_0 > 0) & ~pert_side

    def side(mask, n):
        if weights == "equal" or (sigma == 0 and tau == 0):
            raw = mask * (1.0 if weights == "equal" else n)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                raw = np.where(mask, n / (sigma**2 + tau**2 * n), 0.0)
        return raw.astype(float)

    a, c = _normalise_rows(side(pert_side, n_p)), _normalise_rows(side(ctrl_side, n_0))
    impossible = np.isnan(a).any(axis=1) | np.isnan(c).any(axis=1)
    a[impossible], c[impossible] = np.nan, np.nan
    return a, c


def layout_error(
    layout: Layout,
    *,
    sigma,
    tau,
    comparison: Comparison = "within",
    weights: Weighting = "inverse_variance",
    batch_effects=None,
    drift=0.0,
    time_mismatch=0.0,
) -> ContrastError:
    r"""Bias, variance and MSE of every perturbation's effect estimate for a given layout.

    Applies the general linear-contrast formula of this module (see the module docstring)
    with the weights of :func:`contrast_weights`:
    noise variance :math:`\sigma^2(\sum_b a_b^2/n_{pb} + \sum_b c_b^2/n_{0b})`, batch variance
    :math:`\tau^2\sum_b (a_b - c_b)^2`, bias ``drift * time_mismatch``.

    Parameters
    ----------
    layout
        Cells per (perturbation, batch) and controls per batch.
    sigma, tau
        Cell-level noise sd and batch-effect sd, log scale.
    comparison
        ``"within"`` (default), ``"cross"`` or ``"pooled"``; see :func:`contrast_weights`.
    weights
        ``"inverse_variance"`` (default) or ``"equal"`` weighting of batches.
    batch_effects
        Optional fixed batch effects ``beta`` of shape ``(batches,)``. Then the batch term is a
        bias ``sum_b (a_b - c_b) beta_b`` and ``batch_variance`` is zero (the error of *this*
        screen rather than the average over screens).
    drift, time_mismatch
        First-order time-mismatch bias ``drift * (t - t')`` for differentiating systems (see
        :func:`within_batch_error`).

    Returns
    -------
    ContrastError
        Fields of shape ``(perturbations,)``; NaN where the comparison is impossible (e.g.
        within-batch for a perturbation that shares no batch with controls).
    """
    sigma, tau = _check_scale(sigma, tau)
    if sigma.ndim or tau.ndim:
        raise DesignError("layout_error takes scalar sigma and tau.")
    a, c = contrast_weights(layout, comparison=comparison, weights=weights, sigma=float(sigma), tau=float(tau))
    n_p = layout.cells.astype(float)
    n_0 = layout.controls.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pa = np.where(a > 0, a**2 / n_p, 0.0)
        pc = np.where(c > 0, c**2 / n_0, 0.0)
    pa[np.isnan(a)] = np.nan
    noise = sigma**2 * (pa.sum(axis=1) + pc.sum(axis=1))
    diff = a - c
    bias = _drift_bias(drift, time_mismatch) + np.zeros(layout.n_perturbations)
    if batch_effects is None:
        batch = tau**2 * np.sum(diff**2, axis=1)
    else:
        beta = np.asarray(batch_effects, dtype=float)
        if beta.shape != (layout.n_batches,) or not np.all(np.isfinite(beta)):
            raise DesignError(
                f"batch_effects must be {layout.n_batches} finite numbers (one per batch); got shape {beta.shape}."
            )
        bias = bias + diff @ beta
        batch = np.where(np.isnan(noise), np.nan, 0.0)
    return _make_error(noise, batch, bias)
