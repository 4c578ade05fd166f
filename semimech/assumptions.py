"""Checks of the hidden assumptions of steady-state perturbation models on fitted dynamics.

Run them on any fitted vector field ``field(x, params, *, media=u)`` (a neural ODE's module,
a time-course model's posterior mean) and the :class:`~semimech.timecourse.TimeCourseDesign`
it was fitted to (FRAMEWORK.md sections 2 and 4):

- :func:`check_control_drift` — do controls stay put under the fitted dynamics ("cells don't
  respond to media")? Integrates the baseline state under the baseline covariates over the
  design's time span and compares the displacement with the size of the perturbation effects.
- :func:`check_unique_attractor` — does each condition reach one attractor? Integrates from
  several starts around the data (:func:`semimech.dynamics.attractors`).
- :func:`check_relaxation` — is each measurement late compared with the relaxation time
  ``1 / |Re lambda_max|`` at the condition's fixed point? If not, the samples are transients
  and a steady-state model (one attractor per perturbation, measured at equilibrium) is
  mis-specified.

Each returns a :class:`Check` (``passed``, the measured value, the threshold and a message
with what to do); :func:`check_assumptions` runs all three.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from semimech._rng import as_key
from semimech.dynamics import attractors, eigenvalues, steady_state, trajectory
from semimech.timecourse import TimeCourseDesign

__all__ = ["Check", "check_assumptions", "check_control_drift", "check_relaxation", "check_unique_attractor"]


class Check(NamedTuple):
    """The outcome of one assumption check.

    Attributes
    ----------
    name
        Which assumption.
    passed
        Whether the fitted dynamics satisfy it.
    value
        The measured quantity (see ``message``).
    threshold
        What it was compared with.
    message
        A sentence: what was measured, and what to do if it failed.
    details
        Per-condition numbers (numpy arrays or lists).
    """

    name: str
    passed: bool
    value: float
    threshold: float
    message: str
    details: dict


def _effect_scale(design: TimeCourseDesign) -> float:
    """RMS change of perturbed samples from their condition's initial state (state units)."""
    if design.y is None or design.x0 is None:
        return float("nan")
    pert = (design.condition_index != 0) & (design.time > 0)
    d = design.y[pert] - design.x0[design.condition_index[pert]]
    return float(np.sqrt(np.nanmean(d**2))) if pert.any() else float("nan")


def check_control_drift(field: Callable, params, design: TimeCourseDesign, *, tolerance: float = 0.1,
                        horizon: float | None = None) -> Check:
    """Do controls stay at their baseline under the fitted dynamics?

    The mean baseline state is integrated under the baseline covariates for ``horizon``
    (default: the latest measurement time); the largest displacement (RMS over readouts) is
    compared with ``tolerance`` times the RMS perturbation effect of the design.
    """
    if design.baseline_x.shape[0] == 0:
        raise ValueError("check_control_drift: the design has no baseline (control) states.")
    x_b = jnp.asarray(design.baseline_x.mean(0), jnp.float32)
    u_b = jnp.asarray(design.baseline_covariates[0], jnp.float32)
    horizon = float(design.time.max()) if horizon is None else float(horizon)
    ts = jnp.linspace(0.0, horizon, 9)
    tr = trajectory(field, params, x0=x_b, ts=ts, t0=0.0, media=u_b)
    disp = np.sqrt(np.mean((np.asarray(tr.xs) - np.asarray(x_b)) ** 2, axis=1))
    speed = float(jnp.linalg.norm(field(x_b, params, media=u_b)))
    value = float(disp.max()) if bool(tr.ok) else float("inf")
    thr = tolerance * _effect_scale(design)
    passed = bool(value <= thr)
    msg = (f"controls move by {value:.3g} (RMS, over {horizon:g} h; |f(x_ctrl)| = {speed:.3g}/h) against "
           f"{thr:.3g} = {tolerance:g} x the RMS perturbation effect. ")
    msg += ("They stay put: baseline drift does not confound the effects." if passed else
            "The fitted controls drift: effects measured against a fixed control are confounded by the drift. "
            "Use time-matched controls, add the steady-state term (steady_state_weight), or model the system "
            "as differentiating.")
    return Check("control_drift", passed, value, thr, msg, {"displacement": disp, "times": np.asarray(ts), "speed": speed})


def _fixed_points(field, params, design):
    guess = jnp.asarray(np.nanmean(design.baseline_x, 0) if design.baseline_x.shape[0] else np.nanmean(design.y, 0),
                        jnp.float32)
    U = jnp.asarray(design.covariates, jnp.float32)
    ss = jax.vmap(lambda u: steady_state(field, params, media=u, x0=guess))(U)
    return ss, U, guess


def check_relaxation(field: Callable, params, design: TimeCourseDesign, *, min_ratio: float = 3.0) -> Check:
    """Is every condition measured late compared with its relaxation time?

    For each condition: the fixed point of ``field`` under its covariates, the leading
    eigenvalue ``lambda_max`` of the Jacobian there, the relaxation time ``1/|Re lambda_max|``
    (h) and the ratio of the condition's latest measurement time to it. The check passes when
    every ratio is at least ``min_ratio`` (``exp(-3)`` = 5% of the transient left at the default).
    """
    ss, U, _ = _fixed_points(field, params, design)
    ev = jax.vmap(lambda x, u: eigenvalues(field, params, x, media=u))(ss.x, U)
    lead = np.max(np.real(np.asarray(ev)), axis=1)
    ok = np.asarray(ss.ok) & (lead < 0)
    tau = np.where(ok, 1.0 / np.abs(np.where(lead < 0, lead, -1.0)), np.inf)
    t_meas = np.array([design.time[design.condition_index == c].max() if (design.condition_index == c).any() else np.nan
                       for c in range(len(design.conditions))])
    ratio = t_meas / tau
    measured = ~np.isnan(ratio)
    value = float(np.nanmin(ratio)) if measured.any() else float("nan")
    passed = bool(np.all(ratio[measured] >= min_ratio))
    worst = design.conditions[int(np.nanargmin(ratio))] if measured.any() else "-"
    msg = (f"latest measurement / relaxation time: min {value:.3g} ({worst!r}) against {min_ratio:g}. ")
    msg += ("Every condition is measured near its fixed point: a steady-state model is adequate." if passed else
            "Some conditions are measured during their transient (or have no stable fixed point): a steady-state "
            "model would mistake transients for equilibria; fit a time-course model or measure later.")
    return Check("relaxation", passed, value, float(min_ratio), msg,
                 {"relaxation_time": tau, "measurement_time": t_meas, "ratio": ratio, "leading_eigenvalue": lead,
                  "fixed_point_ok": np.asarray(ss.ok)})


def check_unique_attractor(field: Callable, params, design: TimeCourseDesign, *, rng_key, num_starts: int = 8,
                           spread: float = 2.0) -> Check:
    """Does each condition's dynamics have one attractor in the region of the data?

    Starts: the mean baseline state and ``num_starts - 1`` points uniform in the data's box
    widened by ``spread`` times its range on each side.
    """
    y = design.y if design.y is not None else design.baseline_x
    lo, hi = np.nanmin(y, 0), np.nanmax(y, 0)
    width = np.maximum(hi - lo, 1e-3)
    low, high = jnp.asarray(lo - spread * width, jnp.float32), jnp.asarray(hi + spread * width, jnp.float32)
    x0 = jnp.asarray(np.nanmean(design.baseline_x, 0) if design.baseline_x.shape[0] else np.nanmean(y, 0), jnp.float32)
    U = jnp.asarray(design.covariates, jnp.float32)
    keys = jax.random.split(as_key(rng_key), U.shape[0])
    att = jax.vmap(lambda u, k: attractors(field, params, rng_key=k, media=u, x0=x0, num_starts=num_starts,
                                           low=low, high=high))(U, keys)
    n_att = np.asarray(att.num_attractors)
    all_ok = np.asarray(att.ok).all(axis=1)
    unique = np.asarray(att.unique)
    value = float(n_att.max())
    passed = bool(unique.all())
    bad = [design.conditions[i] for i in np.flatnonzero(~unique)]
    msg = f"attractors per condition: max {int(value)} over {num_starts} starts. "
    msg += ("Each condition reaches one attractor: 'one steady state per perturbation' holds in the data's region."
            if passed else f"Conditions {bad[:5]} have several attractors or starts that do not settle: the state a "
            "perturbation reaches depends on where cells start; predictions need the initial state (history).")
    return Check("unique_attractor", passed, value, 1.0, msg,
                 {"num_attractors": n_att, "all_settled": all_ok, "unique": unique})


def check_assumptions(field: Callable, params, design: TimeCourseDesign, *, rng_key, **options) -> dict[str, Check]:
    """Run the three checks; ``options`` go to the check whose keyword they are."""
    drift_kw = {k: options[k] for k in ("tolerance", "horizon") if k in options}
    relax_kw = {k: options[k] for k in ("min_ratio",) if k in options}
    att_kw = {k: options[k] for k in ("num_starts", "spread") if k in options}
    return {
        "control_drift": check_control_drift(field, params, design, **drift_kw),
        "unique_attractor": check_unique_attractor(field, params, design, rng_key=rng_key, **att_kw),
        "relaxation": check_relaxation(field, params, design, **relax_kw),
    }
