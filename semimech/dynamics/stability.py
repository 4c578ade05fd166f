"""Local stability and multistability of fixed points.

The measured state of a non-differentiating population is assumed to be a *stable* fixed
point, and every perturbation is assumed to map to a *unique* attractor (FRAMEWORK.md
section 4). :func:`is_stable` checks the first (Jacobian eigenvalues); :func:`attractors`
probes the second by integrating from many starts and counting the distinct end points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Complex, Float, Int

from semimech._rng import as_key
from semimech.dynamics import _diffrax
from semimech.dynamics._linalg import eigvals
from semimech.dynamics._newton import _newton_lu
from semimech.dynamics.intervention import Intervention
from semimech.dynamics.jacobians import analytic_jacobian
from semimech.dynamics.steady_state import _integration_tolerances, _on_theta, _prepare, _stop, default_tolerances, highest_precision
from semimech.errors import SemimechError

__all__ = ["Attractors", "attractors", "eigenvalues", "is_stable", "jacobian", "spectral_abscissa"]


@highest_precision
def jacobian(
    field: Callable,
    params,
    x: Float[Array, " n"],
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Float[Array, "n n"]:
    """``J[i, j] = d f_i / d x_j`` at ``x`` (1/h): closed form for the package's fields, else ``jacfwd``."""
    jac = analytic_jacobian(field)
    if jac is not None:
        return jac(jnp.asarray(x), params, media=media, intervention=intervention)
    return jax.jacfwd(lambda y: field(y, params, media=media, intervention=intervention))(jnp.asarray(x))


def eigenvalues(
    field: Callable,
    params,
    x: Float[Array, " n"],
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Complex[Array, " n"]:
    """Eigenvalues of the Jacobian at ``x`` (1/h; complex). Uses ``eig``: not differentiable here."""
    J = jax.lax.stop_gradient(jacobian(field, params, x, media=media, intervention=intervention))
    return eigvals(J)


def spectral_abscissa(
    field: Callable,
    params,
    x: Float[Array, " n"],
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Float[Array, ""]:
    """Largest real part of the Jacobian eigenvalues at ``x`` (1/h): the slowest relaxation rate."""
    return jnp.max(jnp.real(eigenvalues(field, params, x, media=media, intervention=intervention)))


def is_stable(
    field: Callable,
    params,
    x: Float[Array, " n"],
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
    margin: float = 0.0,
) -> Bool[Array, ""]:
    """True when ``x`` is a linearly stable fixed point: every eigenvalue has real part < ``-margin``.

    ``x`` should be a fixed point (see :func:`~semimech.dynamics.steady_state`); a non-finite
    Jacobian counts as unstable.
    """
    abscissa = spectral_abscissa(field, params, x, media=media, intervention=intervention)
    return jnp.isfinite(abscissa) & (abscissa < -margin)


class Attractors(NamedTuple):
    """End points of the flow from several starts.

    Attributes
    ----------
    starts
        The initial states (abundance).
    states
        The steady state reached from each start (meaningful where ``ok``).
    ok
        Whether the flow from each start reached a stable steady state (an end point that is a
        saddle is kicked by 1% and integrated once more before it counts as failed).
    label
        Index of the first start whose end point coincides with this one (a cluster label).
    num_attractors
        Number of distinct end points among the converged starts.
    unique
        True when every start converged and all reached the same attractor: the edit maps to a
        unique attractor (as far as ``num_starts`` starts can tell).
    """

    starts: Float[Array, "starts n"]
    states: Float[Array, "starts n"]
    ok: Bool[Array, " starts"]
    label: Int[Array, " starts"]
    num_attractors: Int[Array, ""]
    unique: Bool[Array, ""]


@highest_precision
def attractors(
    field: Callable,
    params,
    *,
    rng_key,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
    x0: Float[Array, " n"] | None = None,
    num_starts: int = 16,
    low: float | Float[Array, " n"] = 0.0,
    high: float | Float[Array, " n"] | None = None,
    distance_tol: float | None = None,
    solver: str = "tsit5",
    max_steps: int = 4096,
) -> Attractors:
    """Does this edit map to a unique attractor? Integrate from ``num_starts`` starts and compare.

    The first start is ``x0`` (default ones); the others are uniform in the box
    ``[low, high]^n``. ``high`` defaults to ``3 max(1, max|x0|)``: give ``x0`` at the scale of
    the system (for example the control state) or an explicit box. Each start is integrated to a steady-state event and polished by
    Newton (integration, unlike Newton alone, ends at attractors; a start on a saddle's stable
    manifold is caught by an eigenvalue check and kicked off it). Two end points
    coincide when ``max |x_a - x_b| <= distance_tol (1 + max(|x_a|, |x_b|))``; ``distance_tol``
    defaults to ``sqrt(rtol)`` of the dtype. Jittable and vmappable; never raises under jit.

    Parameters
    ----------
    field, params, media, intervention
        As in :func:`~semimech.dynamics.steady_state`.
    rng_key
        Key (or int seed) for the random starts.
    x0
        First start (default ones); also sets the default box.
    num_starts
        Number of starts, including ``x0``.
    low, high
        Box of the random starts (abundance).
    distance_tol
        Relative distance under which two end points are one attractor.
    solver, max_steps
        ODE solver name and step budget per start.

    Returns
    -------
    An :class:`Attractors`.
    """
    if num_starts < 1:
        raise SemimechError(f"attractors: num_starts must be >= 1; got {num_starts}.")
    key = as_key(rng_key)
    dtype, n, media, intervention, x0 = _prepare(params, media, intervention, x0, "attractors")
    rtol, atol = default_tolerances(dtype)
    distance_tol = math.sqrt(rtol) if distance_tol is None else distance_tol

    g = _on_theta(field)

    theta = _stop((params, media, intervention))
    jac = analytic_jacobian(field)
    jac_g = jax.jacfwd(g) if jac is None else _on_theta(jac)

    def stable(x):
        J = jacobian(field, theta[0], x, media=theta[1], intervention=theta[2])
        abscissa = jnp.max(jnp.real(eigvals(jnp.where(jnp.isfinite(J), J, 0.0))))
        return jnp.all(jnp.isfinite(J)) & (abscissa < 0)

    def settle_once(x_start, run):
        x_int, reached = _diffrax.integrate_to_steady_state(
            g, x_start, theta, run=run, solver=solver, max_steps=max_steps, **_integration_tolerances(rtol, atol)
        )
        x_pol, polished = _newton_lu(g, jac_g, jnp.where(reached, x_int, x_start), theta, rtol=rtol, atol=atol,
                                      max_steps=64)[:2]
        # Newton from a settled point stays on its attractor; keep the integrated point if the
        # polish wandered further than the event tolerance allows.
        close = jnp.max(jnp.abs(x_pol - x_int)) <= distance_tol * (1 + jnp.max(jnp.abs(x_int)))
        return jnp.where(polished & close, x_pol, x_int), reached

    def settle(x_start, kick):
        """Integrate to a steady state; if it is a saddle (reached along its stable manifold,
        e.g. from a symmetric start), kick it and integrate once more. Two rounds in one scan,
        so the solver is traced once."""

        def round_(carry, kick_r):
            x, reached, first = carry
            retry = reached & ~stable(x)
            run = first | retry
            start = jnp.where(first, x, x + kick_r * (1 + jnp.abs(x)))
            x_new, reached_new = settle_once(start, run)
            return (jnp.where(run, x_new, x), jnp.where(run, reached_new, reached), jnp.array(False)), None

        (x, reached, _), _ = jax.lax.scan(round_, (x_start, jnp.array(False), jnp.array(True)), kick)
        return x, reached & stable(x)

    key_box, key_kick = jax.random.split(key)
    # kicks of relative size ~1e-2 in generic directions for the second round (the first
    # round's kick is unused); a symmetric kick could stay on a symmetric saddle's manifold.
    kicks = 1e-2 * jax.random.normal(key_kick, (num_starts, 2, n), dtype=dtype)
    x0 = jax.lax.stop_gradient(x0)
    if high is None:
        high = 3.0 * jnp.maximum(1.0, jnp.max(jnp.abs(x0)))
    box = jax.random.uniform(key_box, (num_starts - 1, n), dtype=dtype)
    starts = jnp.concatenate([x0[None, :], low + (jnp.asarray(high, dtype) - low) * box], axis=0)
    states, ok = jax.vmap(settle)(starts, kicks)

    scale = 1 + jnp.maximum(jnp.max(jnp.abs(states), axis=1)[:, None], jnp.max(jnp.abs(states), axis=1)[None, :])
    same = (jnp.max(jnp.abs(states[:, None, :] - states[None, :, :]), axis=-1) <= distance_tol * scale)
    same = same & ok[:, None] & ok[None, :]
    index = jnp.arange(num_starts)
    # label: first converged start in the same cluster (greedy, in start order)
    label = jnp.where(ok, jnp.argmax(same, axis=1), -1)
    num_attractors = jnp.sum(ok & (label == index))
    unique = jnp.all(ok) & (num_attractors == 1)
    return Attractors(starts=starts, states=states, ok=ok, label=label, num_attractors=num_attractors, unique=unique)
