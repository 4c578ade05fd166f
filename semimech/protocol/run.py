"""Apply an :class:`~semimech.protocol.Experiment` to a state with a model's vector field.

A vector field follows the convention of :mod:`semimech.dynamics.intervention`:
``field(x, params, *, media, intervention) -> dx/dt``. Integration is piecewise: each
:class:`~semimech.protocol.Evolve` is one diffrax solve under the media and intervention in
force at that point. Everything here is jit- and vmap-compatible: durations, media vectors and
interventions may be traced; the operator sequence is static. Nothing raises at run time: a
failed or non-finite solve sets ``ok=False`` and returns a finite fallback state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from semimech.dynamics.intervention import Intervention, compose
from semimech.dynamics.steady_state import steady_state
from semimech.errors import DesignError
from semimech.protocol.operators import Evolve, Experiment, Measure, Media, Perturb

__all__ = ["ProtocolResult", "run"]


class ProtocolResult(NamedTuple):
    """What :func:`run` returns (leading experiment axis added by :func:`run_many`).

    Attributes
    ----------
    state
        ``Float[Array, "n"]``, the state recorded by the final :class:`Measure`.
    ok
        Bool scalar: every solve succeeded, stayed finite, had a non-negative duration, and (for
        ``x0="steady"``) the initial steady state converged. Where False, ``state`` is a finite
        fallback (the last good state) that should be rejected, e.g. with a ``-inf`` factor.
    initial
        ``Float[Array, "n"]``, the initial state actually used (the control steady state when
        ``x0="steady"``).
    batch
        The Measure's batch index (None if it had none).
    """

    state: Float[Array, " n"]
    ok: Bool[Array, ""]
    initial: Float[Array, " n"]
    batch: Any


def _default_tols(dtype) -> tuple[float, float]:
    # Tolerances follow the dtype: float32 cannot resolve 1e-8 relative error.
    if jnp.dtype(dtype) == jnp.float64:
        return 1e-8, 1e-10
    return 1e-5, 1e-7


def _rescaled(s, y, args):
    # Module-level (not a closure) so that diffrax's internal jit cache is hit across calls;
    # `field` travels in args and is static there (a callable is not an array).
    field, params, media, intervention, duration = args
    return duration * field(y, params, media=media, intervention=intervention)


def _integrate(
    field: Callable,
    params,
    x: Float[Array, " n"],
    media: Float[Array, " m"],
    intervention: Intervention,
    duration,
    *,
    solver,
    rtol: float,
    atol: float,
    max_steps: int,
    adjoint,
) -> tuple[Float[Array, " n"], Bool[Array, ""]]:
    """Flow ``x`` for ``duration`` under ``field``; return ``(x_end, ok)``, never raising.

    Time is rescaled to ``s = t / duration`` in [0, 1], so the solve's structure does not depend on
    the (possibly traced) duration and a zero duration is an exact identity.
    """
    duration = jnp.asarray(duration, dtype=x.dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_rescaled),
        solver,
        t0=0.0,
        t1=1.0,
        dt0=None,
        y0=x,
        args=(field, params, media, intervention, duration),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
    )
    y = sol.ys[-1]
    finite = jnp.all(jnp.isfinite(y))
    ok = (sol.result == diffrax.RESULTS.successful) & finite & (duration >= 0) & jnp.isfinite(duration)
    y = jnp.where(jnp.isfinite(y), y, 0.0)  # keep the unused branch finite for gradients
    return jnp.where(ok, y, x), ok


def _state_size(x_guess, intervention0, experiment: Experiment) -> int:
    if x_guess is not None:
        return jnp.shape(x_guess)[-1]
    if intervention0 is not None:
        return jnp.shape(intervention0.production)[-1]
    for op in experiment.ops:
        if isinstance(op, Perturb):
            return jnp.shape(op.p.production)[-1]
    raise DesignError(
        "x0='steady' needs the state size: pass x_guess= (the starting guess of the steady-state "
        "search, e.g. jnp.zeros(n)) or intervention0=."
    )


def _check(experiment, media0, x0):
    if not isinstance(experiment, Experiment):
        raise DesignError(f"run() needs an Experiment, got {type(experiment).__name__}; compose operators with >>.")
    if not experiment.measured:
        raise DesignError(
            f"Experiment {experiment.structure} does not end with Measure(); append >> Measure() so "
            "that run() knows which state to record."
        )
    if isinstance(x0, str) and x0 != "steady":
        raise DesignError(f"x0={x0!r} not understood; pass an initial state array or x0='steady'.")
    if media0 is None:
        raise DesignError("run() needs media0, the environment before the first Media (zeros = maintenance medium).")


def run(
    experiment: Experiment,
    field: Callable,
    params,
    *,
    x0,
    media0,
    intervention0: Intervention | None = None,
    solver=None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 4096,
    adjoint=None,
    x_guess=None,
    steady_method: str = "flow",
    steady_horizon: float = 1000.0,
    steady_tol: float | None = None,
) -> ProtocolResult:
    """Apply ``experiment`` to the initial state and return the measured state.

    Parameters
    ----------
    experiment
        An :class:`Experiment` ending with :class:`Measure` (time order, first applied first).
    field
        Vector field ``field(x, params, *, media, intervention) -> dx/dt``.
    params
        Parameters passed to ``field`` (any pytree; may be traced).
    x0
        Initial state ``Float[Array, "n"]``, or ``"steady"``: the steady state under
        ``media0`` and ``intervention0`` (the unperturbed control when ``intervention0`` is None),
        found from ``x_guess`` by ``steady_method``; failure sets ``ok=False``.
    media0
        Environment vector before the first :class:`Media` operator.
    intervention0
        Edit state before the first :class:`Perturb` (default: no edit).
    solver
        A diffrax solver (default ``diffrax.Tsit5()``; use ``diffrax.Kvaerno5()`` for stiff fields).
    rtol, atol
        Step-size controller tolerances (default by dtype: 1e-8/1e-10 in float64, 1e-5/1e-7 in float32).
    max_steps
        Maximum steps per Evolve; exceeding it gives ``ok=False``, not an error.
    adjoint
        diffrax adjoint (default ``RecursiveCheckpointAdjoint``; ``diffrax.ForwardMode()`` for jvp).
    x_guess
        Starting point of the steady-state search (default zeros).
    steady_method
        ``"flow"`` (default): integrate for ``steady_horizon`` and accept when
        ``max|f(x)| <= steady_tol * max(1, max|x|)``; it follows the dynamics, so it lands on the
        attractor whose basin holds ``x_guess``, and its gradient is backpropagated through the
        solve. ``"newton"``: :func:`semimech.dynamics.steady_state` with ``check_stability=True``
        (Newton with an integration fallback, implicit-function gradients; an unstable fixed
        point gives ``ok=False``); cheaper gradients, heavier to compile.
    steady_horizon
        Integration time (field time units) of the ``"flow"`` method.
    steady_tol
        Residual tolerance of the ``"flow"`` check (default 1e-6 in float64, 1e-3 in float32).

    Returns
    -------
    ProtocolResult
        ``state``, ``ok``, ``initial``, ``batch``.
    """
    _check(experiment, media0, x0)
    x, media, g, opts = _setup(experiment, x0, media0, intervention0, x_guess, solver, rtol, atol, max_steps, adjoint)
    segments, batch = _segments(experiment, media, g)
    steady = None
    if isinstance(x0, str):
        steady = (_check_method(steady_method), jnp.asarray(steady_horizon, x.dtype), steady_tol)
    out = _run_segments(segments, field, params, x, (media, g), opts, steady)
    return out._replace(batch=batch)


def _setup(experiment, x0, media0, intervention0, x_guess, solver, rtol, atol, max_steps, adjoint):
    if isinstance(x0, str):
        n = _state_size(x_guess, intervention0, experiment)
        dtype = jnp.result_type(float)
        x = jnp.zeros((n,), dtype) if x_guess is None else jnp.asarray(x_guess, dtype=dtype)
    else:
        x = jnp.asarray(x0)
        x = x.astype(jnp.result_type(x.dtype, float))
    if x.ndim != 1:
        raise DesignError(f"The initial state must be a 1-D vector, got shape {x.shape}.")
    n = x.shape[0]
    media = jnp.asarray(media0, dtype=x.dtype)
    if media.ndim != 1:
        raise DesignError(f"media0 must be a 1-D environment vector, got shape {media.shape}.")
    g = Intervention.none(n, dtype=x.dtype) if intervention0 is None else _cast(intervention0, x.dtype)
    if jnp.shape(g.production) != (n,):
        raise DesignError(f"intervention0 acts on {jnp.shape(g.production)} state variables, but the state has {n}.")
    d_rtol, d_atol = _default_tols(x.dtype)
    opts = dict(
        solver=diffrax.Tsit5() if solver is None else solver,
        rtol=d_rtol if rtol is None else rtol,
        atol=d_atol if atol is None else atol,
        max_steps=max_steps,
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
    )
    return x, media, g, opts


def _cast(e: Intervention, dtype) -> Intervention:
    return Intervention(jnp.asarray(e.production, dtype), jnp.asarray(e.clamp_mask, bool), jnp.asarray(e.clamp_value, dtype))


def _check_method(method: str) -> str:
    if method not in ("flow", "newton"):
        raise DesignError(f"steady_method={method!r} not understood; use 'flow' or 'newton'.")
    return method


def _segments(experiment, media, g):
    """The (media, edit, duration) in force during each Evolve, stacked along a leading axis.

    Media and Perturb are instantaneous edits of ``(m, g)``, so the segments are known before any
    integration. The compiled solve then depends only on the number of segments, not on where
    the edits sit: experiments of different structure share one compiled program.
    """
    n, dtype = g.production.shape[0], media.dtype
    segments, batch = [], None
    for i, op in enumerate(experiment.ops):
        if isinstance(op, Media):
            new = jnp.asarray(op.m, dtype=dtype)
            if new.shape != media.shape:
                raise DesignError(
                    f"Operator {i}: Media has {new.shape[0] if new.ndim else 0} entries, but media0 "
                    f"has {media.shape[0]}; every environment vector must have the same length."
                )
            media = new
        elif isinstance(op, Perturb):
            if jnp.shape(op.p.production) != (n,):
                raise DesignError(
                    f"Operator {i}: Perturb edits {jnp.shape(op.p.production)} state variables, but the state has {n}."
                )
            g = _cast(compose(g, op.p), dtype)
        elif isinstance(op, Evolve):
            if jnp.ndim(op.duration) != 0:
                raise DesignError(
                    f"Operator {i}: Evolve duration has shape {jnp.shape(op.duration)}; a stacked "
                    "experiment must be run with run_many (or jax.vmap)."
                )
            segments.append((media, g, jnp.asarray(op.duration, dtype)))
        elif isinstance(op, Measure):
            batch = op.batch
    if not segments:
        return None, batch
    return jax.tree.map(lambda *a: jnp.stack(a), *segments), batch


def _is_steady(field, params, x, media, g, tol):
    """Accept ``x`` as a fixed point when ``max|f(x)| <= tol * max(1, max|x|)``."""
    tol = (1e-6 if x.dtype == jnp.float64 else 1e-3) if tol is None else tol
    resid = jnp.max(jnp.abs(field(x, params, media=media, intervention=g)))
    return resid <= tol * jnp.maximum(1.0, jnp.max(jnp.abs(x)))


def _steady(field, params, x, media, g, steady, opts):
    """The steady state from the guess ``x`` under ``(media, g)``; ``steady = (method, horizon, tol)``."""
    method, horizon, tol = steady
    if method == "newton":
        ss = steady_state(field, params, media=media, intervention=g, x0=x, check_stability=True)
        x_star = jnp.where(ss.ok, ss.x, x)
        return jnp.where(jnp.isfinite(x_star), x_star, 0.0), ss.ok
    x, ok = _integrate(field, params, x, media, g, horizon, **opts)
    return x, ok & _is_steady(field, params, x, media, g, tol)


def _run_segments_impl(segments, field, params, x, start, opts, steady) -> ProtocolResult:
    """Integrate the segments in one ``lax.scan`` (one solver loop to compile however many Evolves).

    Compiled once per (number of segments, shapes, field, options); inside a user's jit it inlines.
    A ``"flow"`` steady start is one more segment at the head of the same scan.
    """
    ok0 = jnp.asarray(True)
    lead = 0
    if steady is not None and steady[0] == "newton":
        x, ok0 = _steady(field, params, x, *start, steady, opts)
    elif steady is not None:
        head = jax.tree.map(lambda a: jnp.asarray(a)[None], (start[0], start[1], steady[1]))
        segments = head if segments is None else jax.tree.map(lambda h, s: jnp.concatenate([h, s]), head, segments)
        lead = 1
    if segments is None:
        return ProtocolResult(state=x, ok=ok0, initial=x, batch=None)

    def step(carry, seg):
        y, ok = carry
        y, ok_i = _integrate(field, params, y, *seg, **opts)
        return (y, ok & ok_i), y

    (x_end, ok), path = jax.lax.scan(step, (x, ok0), segments)
    initial = x
    if lead:
        initial = path[0]
        ok = ok & _is_steady(field, params, initial, *start, steady[2])
    return ProtocolResult(state=x_end, ok=ok, initial=initial, batch=None)


_run_segments = eqx.filter_jit(_run_segments_impl)
