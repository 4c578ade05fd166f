"""Time courses ``x(t)`` of ``dx/dt = f(x, params, *, media, intervention)``.

The building block of ``Evolve(t)`` in :mod:`semimech.protocol`: one call integrates one
segment with a fixed medium and edit from ``(t0, x0)``; a protocol chains segments by passing
the last state on as the next ``x0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from semimech.dynamics import _diffrax
from semimech.dynamics.steady_state import _float_dtype, _on_theta, highest_precision
from semimech.dynamics.intervention import Intervention
from semimech.errors import SemimechError

__all__ = ["Trajectory", "trajectory"]


class Trajectory(NamedTuple):
    """States at requested times.

    Attributes
    ----------
    ts
        The save times (h).
    xs
        The state at each time (abundance); ``inf`` at times not reached when ``ok`` is False.
    ok
        True when the integration succeeded and every saved state is finite.
    """

    ts: Float[Array, " times"]
    xs: Float[Array, "times n"]
    ok: Bool[Array, ""]


def _check_times(t0, ts) -> None:
    """Static check of the time grid, skipped for traced values."""
    try:
        t0_np, ts_np = np.asarray(t0, dtype=float), np.asarray(ts, dtype=float)
    except Exception:  # traced under jit/vmap: cannot be checked here
        return
    if ts_np.ndim != 1 or ts_np.size == 0:
        raise SemimechError(f"trajectory: ts must be a non-empty 1-d array of times; got shape {ts_np.shape}.")
    if np.any(np.diff(ts_np) < 0) or t0_np > ts_np[0]:
        raise SemimechError("trajectory: ts must be non-decreasing and start at or after t0 (integration runs forward in time).")


@highest_precision
def trajectory(
    field: Callable,
    params,
    *,
    x0: Float[Array, " n"],
    ts: Float[Array, " times"],
    t0: float | Float[Array, ""] | None = None,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
    solver: str = "tsit5",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 4096,
    dt0: float | None = None,
) -> Trajectory:
    """Integrate ``field`` from ``(t0, x0)`` and return the states at ``ts``; never raises under jit.

    Parameters
    ----------
    field
        A vector field ``f(x, params, *, media, intervention)``.
    params
        Its parameters (any pytree).
    x0
        State at ``t0`` (abundance).
    ts
        Save times (h), non-decreasing, ``>= t0``.
    t0
        Start time (default ``ts[0]``).
    media, intervention
        The medium and edit held during the segment (``None``: maintenance, unperturbed).
    solver
        diffrax solver name: ``"tsit5"`` (default), ``"dopri5"``, ``"dopri8"``, or the stiff
        ``"kvaerno3"``/``"kvaerno5"``.
    rtol, atol
        Step-size controller tolerances (default 1e-8 in float64, 1e-5 in float32).
    max_steps
        Maximum number of ODE steps.
    dt0
        Initial step (default: chosen by the controller).

    Returns
    -------
    A :class:`Trajectory`; differentiable with respect to ``params``, ``media``, the
    intervention and ``x0`` (by discretise-then-optimise through the solver).
    """
    dtype = _float_dtype(params, media, x0, ts, None if intervention is None else intervention.production)
    x0 = jnp.asarray(x0, dtype)
    if x0.ndim != 1:
        raise SemimechError(f"trajectory: x0 must be a 1-d state vector; got shape {x0.shape}.")
    ts = jnp.asarray(ts, dtype)
    t0 = ts[0] if t0 is None else t0
    _check_times(t0, ts)
    t0 = jnp.asarray(t0, dtype)
    if intervention is None:
        intervention = Intervention.none(x0.shape[0], dtype=dtype)
    if media is not None:
        media = jnp.asarray(media, dtype)
    tol = 1e-8 if jnp.finfo(dtype).eps < 1e-10 else 1e-5
    rtol = tol if rtol is None else rtol
    atol = tol if atol is None else atol

    xs, ok = _diffrax.integrate(
        _on_theta(field), x0, (params, media, intervention), t0=t0, ts=ts, solver=solver,
        rtol=rtol, atol=atol, max_steps=max_steps, dt0=dt0,
    )
    return Trajectory(ts=ts, xs=xs, ok=ok)
