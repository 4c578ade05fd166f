"""Steady states of ``dx/dt = f(x, params, *, media, intervention)``, differentiable and safe.

The solve never raises inside ``jit``/``vmap``/``grad``/NUTS: failures come back as
``ok = False``. Derivatives follow the implicit function theorem without differentiating
through the solver (STYLE.md, "Verified on this machine"): the root ``x*`` is found on
``stop_gradient``-ed inputs, then one *frozen* Newton step is taken at the root,

    x = x* - J^{-1} (f(x*, theta) - stop_gradient(f(x*, theta))),   J = df/dx (x*),

whose value is exactly ``x*`` and whose first derivative is ``-J^{-1} df/dtheta``, the exact
implicit derivative. Where the solve failed, ``J`` is replaced by the identity (a finite
backward pass); callers use ``where(ok, x, fallback)`` and reject failed draws (``-inf``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from semimech.dynamics import _diffrax
from semimech.dynamics._linalg import eigvals, lu_factor, lu_solve
from semimech.dynamics._newton import _newton_lu
from semimech.dynamics.fields import LinearParams, ProductionDecayParams, _check_square, _media_term, linear_field
from semimech.dynamics.intervention import Intervention
from semimech.dynamics.jacobians import analytic_jacobian, linear_jacobian
from semimech.dynamics.neural import NeuralField
from semimech.errors import SemimechError

__all__ = ["SteadyState", "default_tolerances", "linear_steady_state", "steady_state"]


class SteadyState(NamedTuple):
    """A fixed point and whether it can be trusted.

    Attributes
    ----------
    x
        The fixed point (abundance); meaningful only where ``ok``.
    ok
        True when the solve converged, everything is finite, the Newton increment at ``x`` is
        within tolerance (``|J^{-1} f(x)| <= atol + rtol |x|``) and, if asked, ``x`` is stable.
    residual
        ``max |f(x)|`` at the returned point (abundance/h).
    """

    x: Float[Array, " n"]
    ok: Bool[Array, ""]
    residual: Float[Array, ""]


def highest_precision(fn):
    """Trace ``fn`` with full-precision float32 matmuls and solves.

    On GPUs JAX runs float32 matrix products in TF32 (about 1e-3 relative error) by default;
    Newton at float32 tolerances then stalls (measured on an H200: 0% of 128 conditions
    converged at 100 genes). Every solver in this package is wrapped in this.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapped


def default_tolerances(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for Newton solves in ``dtype``: 1e-9 in float64, 1e-4 in float32.

    Tolerances must follow the dtype: float32 Newton at 1e-8 never converges.
    """
    eps = float(jnp.finfo(dtype).eps)
    tol = 1e-9 if eps < 1e-10 else 1e-4
    return tol, tol


def _as_float(a, dtype):
    return None if a is None else jnp.asarray(a, dtype=dtype)


def _stop(tree):
    """``stop_gradient`` on the floating arrays of a pytree; other leaves pass through."""
    return jax.tree.map(lambda a: jax.lax.stop_gradient(a) if eqx.is_inexact_array(a) else a, tree)


def _float_dtype(*trees):
    leaves = [a for a in jax.tree.leaves(trees) if eqx.is_inexact_array(a)]
    return jnp.result_type(*leaves) if leaves else jnp.result_type(float)


def _prepare(params, media, intervention, x0, caller: str):
    """Resolve the state size and dtype, and fill defaults (no edit, ``x0 = 1``).

    The state size comes from ``x0``, else the intervention, else the package's own parameter
    records; a custom field needs ``x0`` or an intervention.
    """
    dtype = _float_dtype(params, media, x0, None if intervention is None else intervention.production)
    if x0 is not None:
        x0 = jnp.asarray(x0, dtype)
        if x0.ndim != 1:
            raise SemimechError(f"{caller}: x0 must be a 1-d state vector; got shape {x0.shape}.")
        n = x0.shape[0]
    elif intervention is not None:
        n = jnp.shape(intervention.production)[-1]
    elif isinstance(params, (LinearParams, ProductionDecayParams)):
        n = jnp.shape(params.b)[-1]
    elif isinstance(params, NeuralField):
        n = params.n
    else:
        raise SemimechError(f"{caller}: pass x0 (the initial guess) or an intervention, so the state size is known.")
    if intervention is None:
        intervention = Intervention.none(n, dtype=dtype)
    intervention = intervention._replace(
        production=jnp.asarray(intervention.production, dtype),
        clamp_value=jnp.asarray(intervention.clamp_value, dtype),
    )
    if x0 is None:
        x0 = jnp.ones((n,), dtype)
    return dtype, n, _as_float(media, dtype), intervention, x0


def _on_theta(fn: Callable) -> Callable:
    """``fn(x, params, *, media, intervention)`` as a function of ``(x, theta)``, ``theta = (params, media,
    intervention)``: the form the solvers (Newton, the frozen step, diffrax) take a field or its Jacobian in."""
    def on_theta(x, theta):
        p, m, e = theta
        return fn(x, p, media=m, intervention=e)
    return on_theta


def _finish(g, x_star, theta, solved, *, rtol, atol, check_stability, jac, factors):
    """The frozen Newton step at the root: value ``x_star``, implicit first derivative.

    ``jac(x, theta)``: the Jacobian of ``g``; ``factors``: its LU factors from the solver (closed form,
    or Newton's last iterate), reused here for the check and the implicit derivative.
    """
    theta_sg = _stop(theta)
    x_star = jax.lax.stop_gradient(x_star)
    n = x_star.shape[0]
    f_star = g(x_star, theta_sg)
    lu, piv = jax.lax.stop_gradient(factors[0]), factors[1]
    finite_J = jnp.all(jnp.isfinite(lu))
    lu = jnp.where(finite_J, lu, -jnp.eye(n, dtype=lu.dtype))
    finite = jnp.all(jnp.isfinite(x_star)) & jnp.all(jnp.isfinite(f_star)) & finite_J
    increment = lu_solve((lu, piv), jnp.where(finite, f_star, 0.0))
    within = jnp.all(jnp.abs(increment) <= atol + rtol * jnp.abs(x_star))
    ok = solved & finite & jnp.all(jnp.isfinite(increment)) & within
    if check_stability:
        J = jac(x_star, theta_sg)
        J = jnp.where(jnp.all(jnp.isfinite(J)), J, jnp.eye(n, dtype=J.dtype))
        ok = ok & (jnp.max(jnp.real(eigvals(J))) < 0)
    # Identity factors where the solve failed keep the backward pass finite.
    lu = jnp.where(ok, lu, jnp.eye(n, dtype=lu.dtype))
    piv = jnp.where(ok, piv, jnp.arange(n, dtype=piv.dtype))
    x_safe = jnp.where(jnp.isfinite(x_star), x_star, 0.0)
    f_theta = g(x_safe, theta)
    x = x_safe - lu_solve((lu, piv), f_theta - jax.lax.stop_gradient(f_theta))
    residual = jnp.where(finite, jnp.max(jnp.abs(f_star)), jnp.inf)
    return SteadyState(x=x, ok=ok, residual=residual)


def _integration_tolerances(rtol: float, atol: float) -> dict:
    """Step-size controller and steady-state-event tolerances for integrating to a fixed point.

    The event must be looser than the controller (an equal tolerance may never fire) and need
    not be tight (Newton polishes the end point): event ``min(1000 tol, 1e-3)``, controller
    ``min(10 tol, event / 10)``; 1e-6/1e-8 in float64, 1e-3/1e-4 in float32.
    """
    ev_r, ev_a = min(1000 * rtol, 1e-3), min(1000 * atol, 1e-3)
    return dict(rtol=min(10 * rtol, ev_r / 10), atol=min(10 * atol, ev_a / 10), event_rtol=ev_r, event_atol=ev_a)


@highest_precision
def steady_state(
    field: Callable,
    params,
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
    x0: Float[Array, " n"] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 64,
    fallback: bool = True,
    fallback_solver: str = "tsit5",
    fallback_max_steps: int = 4096,
    check_stability: bool = False,
    jacobian: Callable | None = None,
) -> SteadyState:
    """Fixed point of ``field`` under ``intervention``; differentiable, never raises under jit.

    Newton's method (:mod:`semimech.dynamics._newton`) from ``x0``; where it fails and ``fallback`` is True, the ODE
    is integrated from ``x0`` until a steady-state event (a looser tolerance) and Newton
    polishes the end point. Under ``vmap`` the integration runs only if some member needs it,
    and costs steps only for those members.

    Parameters
    ----------
    field
        A vector field ``f(x, params, *, media, intervention)``.
    params
        Its parameters (any pytree; an Equinox module for :class:`~semimech.dynamics.NeuralField`).
    media
        Medium covariates (``None``: maintenance medium).
    intervention
        The edit (``None``: unperturbed).
    x0
        Initial guess (default ones); a multistable system returns the attractor Newton or the
        flow from ``x0`` reaches. Not differentiated.
    rtol, atol
        Newton tolerances (default: :func:`default_tolerances` of the dtype): the step must
        fall below ``atol + rtol |x|`` and ``|f|`` below ``atol`` (abundance/h). In float32,
        states far above O(100) need a larger ``atol`` (or rescaled units), since ``|f|``
        cannot fall below ``~1e-7 |x|``.
    max_steps
        Newton iterations.
    fallback
        Integrate to steady state where Newton fails.
    fallback_solver
        diffrax solver name for the fallback (``"tsit5"``, or ``"kvaerno5"`` for stiff systems).
    fallback_max_steps
        ODE steps for the fallback.
    check_stability
        Also require every Jacobian eigenvalue at ``x`` to have negative real part (an
        ``eig`` per solve: CPU-cheap for small ``n``).
    jacobian
        Closed-form Jacobian ``jacobian(x, params, *, media, intervention) -> (n, n)`` of
        ``field``. Default: :func:`~semimech.dynamics.jacobians.analytic_jacobian` for the
        package's linear and production-decay fields (``O(n^2)`` per Newton step), else
        ``jax.jacfwd`` (``n`` Jacobian-vector products per step). Either way the last Newton
        factorisation is reused for the implicit derivative.

    Returns
    -------
    A :class:`SteadyState`. Gradients with respect to ``params``, ``media`` and the
    intervention's ``production``/``clamp_value`` are the implicit derivatives (with a
    closed-form Jacobian, taken at the last Newton iterate: exact to the solver tolerance).
    """
    dtype, n, media, intervention, x0 = _prepare(params, media, intervention, x0, "steady_state")
    d_rtol, d_atol = default_tolerances(dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol

    g = _on_theta(field)
    theta = (params, media, intervention)
    theta_sg = _stop(theta)
    start = jax.lax.stop_gradient(x0)
    jac = jacobian if jacobian is not None else analytic_jacobian(field)
    jac_g = jax.jacfwd(g) if jac is None else _on_theta(jac)

    def solve(x):
        return _newton_lu(g, jac_g, x, theta_sg, rtol=rtol, atol=atol, max_steps=max_steps)

    if not fallback:
        x_star, solved, factors = solve(start)
    else:
        # Round 0: Newton from x0. Round 1, only where round 0 failed: integrate from x0 to a
        # steady-state event, then Newton polishes. One scan traces Newton and diffrax once;
        # the unvmapped cond skips round 1 when no member of a vmapped batch needs it.
        def round_(carry, first):
            def work(carry):
                x_star, solved, factors = carry
                x_int, reached = _diffrax.integrate_to_steady_state(
                    g, start, theta_sg, run=~first & ~solved, solver=fallback_solver,
                    max_steps=fallback_max_steps, **_integration_tolerances(rtol, atol),
                )
                x_try, ok_try, f_try = solve(jnp.where(first, start, jnp.where(reached, x_int, x_star)))
                ok_try = ok_try & (first | reached)

                def keep(old, new):
                    return jnp.where(solved, old, new)

                return keep(x_star, x_try), solved | ok_try, jax.tree.map(keep, factors, f_try)

            return jax.lax.cond(eqxi.unvmap_any(~carry[1]), work, lambda c: c, carry), None

        factors0 = (jnp.eye(n, dtype=dtype), jnp.arange(n, dtype=jnp.int32))
        init = (start, jnp.zeros((), dtype=bool), factors0)
        (x_star, solved, factors), _ = jax.lax.scan(round_, init, jnp.array([True, False]))
    return _finish(g, x_star, theta, solved, rtol=rtol, atol=atol, check_stability=check_stability, jac=jac_g,
                   factors=factors)


@highest_precision
def linear_steady_state(
    params: LinearParams,
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
    check_stability: bool = False,
) -> SteadyState:
    """Closed-form fixed point of :func:`~semimech.dynamics.linear_field`: ``x* = -A^{-1} c``.

    ``A = diag(s) W - diag(gamma)`` and ``c = s * (b + M media)``, where ``s`` is the
    production scale; a clamped row ``j`` becomes ``A_j = -e_j``, ``c_j = clamp_value_j``.
    With ``gamma = 1`` and no edit this is the linear SCM solution ``(I - W)^{-1} b``.
    Differentiable (implicit derivative, identical to differentiating the linear solve) and
    safe: a singular ``A`` gives ``ok = False``, never a NaN gradient. One LU factorisation of
    ``A`` per call (no Jacobian is built): under ``vmap`` over conditions, one LU per condition
    (on CPU one LAPACK call each, in a loop: :mod:`semimech.dynamics._linalg`).

    Parameters
    ----------
    params
        A :class:`~semimech.dynamics.LinearParams`.
    media, intervention
        As in :func:`steady_state`.
    check_stability
        Also require the eigenvalues of ``A`` to have negative real part.

    Returns
    -------
    A :class:`SteadyState`.
    """
    n_params = _check_square(params.W, params.b, "linear_steady_state")
    if intervention is None:
        intervention = Intervention.none(n_params, dtype=_float_dtype(params))
    dtype, n, media, intervention, _ = _prepare(params, media, intervention, None, "linear_steady_state")
    if n != n_params:
        raise SemimechError(f"linear_steady_state: the intervention acts on {n} variables but W is {params.W.shape}.")
    rtol, atol = default_tolerances(dtype)
    theta = (params, media, intervention)
    p, m, e = _stop(theta)
    s, clamp = e.production, e.clamp_mask
    A = jnp.where(clamp[:, None], -jnp.eye(n, dtype=dtype), s[:, None] * p.W - jnp.diag(p.gamma))
    c = jnp.where(clamp, e.clamp_value, s * (p.b + _media_term(p.M, m, n, "linear_steady_state")))
    # One LU of A per condition serves the solve, the residual check and the implicit
    # derivative (A is the field's Jacobian at every x).
    lu, piv = lu_factor(A.astype(dtype))
    x_star = lu_solve((lu, piv), -c.astype(dtype))

    return _finish(_on_theta(linear_field), x_star, theta, jnp.all(jnp.isfinite(x_star)), rtol=rtol, atol=atol,
                   check_stability=check_stability, jac=_on_theta(linear_jacobian), factors=(lu, piv))
