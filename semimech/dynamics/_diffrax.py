"""The one adapter to diffrax (STYLE habit 6): a diffrax API change touches only this file.

Every call uses ``throw=False`` and turns diffrax's result code into a boolean ``ok``, so that
nothing here raises inside ``jit`` or NUTS.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax.numpy as jnp

from semimech.errors import SemimechError

SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
    "kvaerno3": diffrax.Kvaerno3,
}


def make_solver(name: str):
    """A diffrax solver by name (explicit: tsit5, dopri5, dopri8; stiff: kvaerno3, kvaerno5)."""
    try:
        return SOLVERS[name.lower()]()
    except (KeyError, AttributeError):
        raise SemimechError(f"Unknown ODE solver {name!r}; choose one of {sorted(SOLVERS)}.") from None


def _term(g: Callable):
    return diffrax.ODETerm(lambda t, y, args: g(y, args))


def integrate(g: Callable, x0, args, *, t0, ts, solver: str, rtol: float, atol: float, max_steps: int, dt0=None):
    """Solve ``dx/dt = g(x, args)`` from ``(t0, x0)``, saving at ``ts``; returns ``(xs, ok)``.

    Unreached save times hold ``inf`` (diffrax's fill) when ``ok`` is False.
    """
    sol = diffrax.diffeqsolve(
        _term(g),
        make_solver(solver),
        t0=t0,
        t1=ts[-1],
        dt0=dt0,
        y0=x0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    xs = sol.ys
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(xs))
    return xs, ok


def integrate_to_steady_state(
    g: Callable,
    x0,
    args,
    *,
    run,
    solver: str,
    rtol: float,
    atol: float,
    event_rtol: float,
    event_atol: float,
    max_steps: int,
):
    """Integrate until ``|g| < event_atol + event_rtol |x|`` (diffrax's steady-state event).

    ``run`` (a boolean, possibly batched) switches the integration off by setting ``t1 = t0``,
    which costs no solver steps: under ``vmap`` only the members that need it pay for it.
    Returns ``(x, ok)``; ``ok`` is True only where the event fired (diffrax's success code for
    an event is ``event_occurred``). The event tolerance must be looser than the step-size
    controller's, otherwise it may never fire.
    """
    dtype = jnp.result_type(x0)
    t1 = jnp.where(run, jnp.inf, 0.0).astype(dtype)
    sol = diffrax.diffeqsolve(
        _term(g),
        make_solver(solver),
        t0=jnp.zeros((), dtype),
        t1=t1,
        dt0=None,
        y0=x0,
        args=args,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(diffrax.steady_state_event(rtol=event_rtol, atol=event_atol)),
        max_steps=max_steps,
        throw=False,
    )
    x = sol.ys[-1]
    ok = run & (sol.result == diffrax.RESULTS.event_occurred) & jnp.all(jnp.isfinite(x))
    return x, ok
