"""All conditions at once with one shared factorisation (fields with a closed-form Jacobian).

Every condition of a screen shares the parameters; only the edit (and maybe the medium)
differs, so the Jacobians ``J_p`` of the conditions are close to one reference Jacobian
``J_0`` (no edit, at the first initial guess: for the steady-state models the control fixed
point). One LU of ``J_0`` then serves every condition:

- the root: chord iterations ``x <- x - J_0^{-1} f_p(x)``, all conditions per iteration in one
  triangular solve with a ``conditions``-column right-hand side (one LU per condition and
  iteration, as Newton needs, costs far more: on CPU a batched LU is ~50x a shared solve);
- the implicit derivative: ``J_p(x*) v = r`` by Richardson iterations preconditioned by
  ``J_0^{-1}`` inside ``jax.lax.custom_linear_solve`` (so reverse and forward mode work),
  iterated to ``100 eps`` relative residual.

Where chord iterations stall or diverge (an edit that moves the Jacobian far from ``J_0``),
those conditions are solved one by one (:func:`~semimech.dynamics.steady_state`, Newton and
optionally the ODE fallback); where Richardson iterations stall, a batched dense solve takes
over. Both fallbacks run only when some condition needs them.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from jaxtyping import Array, Float

from semimech.dynamics._linalg import dense_solve, eigvals, lu_factor, lu_solve
from semimech.dynamics.fields import linear_field
from semimech.dynamics.intervention import Intervention
from semimech.dynamics.jacobians import analytic_jacobian
from semimech.dynamics.steady_state import (
    SteadyState,
    _float_dtype,
    _stop,
    default_tolerances,
    highest_precision,
    linear_steady_state,
    steady_state,
)
from semimech.errors import SemimechError

__all__ = ["shared_steady_states", "steady_states"]


def steady_states(
    field: Callable,
    params,
    *,
    interventions: Intervention,
    media: Float[Array, "conditions m"] | Float[Array, " m"] | None = None,
    x0: Float[Array, "conditions n"] | Float[Array, " n"] | None = None,
    shared: bool | None = None,
    max_chord: int = 50,
    **options,
) -> SteadyState:
    """The steady state of every condition (never per cell): one shared LU, or one solve each.

    Parameters
    ----------
    field, params
        As in :func:`~semimech.dynamics.steady_state`; ``params`` are shared by all conditions.
    interventions
        An :class:`~semimech.dynamics.intervention.Intervention` whose arrays carry a leading
        ``conditions`` axis.
    media
        Shared ``(m,)`` or per-condition ``(conditions, m)`` covariates, or ``None``.
    x0
        Shared ``(n,)`` or per-condition ``(conditions, n)`` initial guesses, or ``None`` (ones).
    shared
        ``True``: one LU of the reference Jacobian serves all conditions (chord iterations and a
        preconditioned implicit derivative, see :mod:`semimech.dynamics.batched`); conditions
        whose chord iterations do not converge within ``max_chord`` are solved one by one.
        ``False``: :func:`~semimech.dynamics.steady_state` vmapped over conditions. Default:
        ``True`` when the field has a closed-form Jacobian (the package's linear and
        production-decay fields, or ``jacobian=`` given).
    max_chord
        Chord iterations of the shared solve.
    **options
        Keyword options of :func:`~semimech.dynamics.steady_state` (tolerances, ``max_steps``,
        ``fallback``, ``check_stability``, ``jacobian``).

    Returns
    -------
    A :class:`~semimech.dynamics.SteadyState` whose fields carry a leading ``conditions`` axis.
    A multistable system may reach a different fixed point by chord iterations than by Newton
    from the same ``x0`` (both are fixed points; :mod:`semimech.checks` tests uniqueness).
    """
    if jnp.ndim(interventions.production) != 2:
        raise SemimechError(
            "steady_states: interventions must be batched, production of shape (conditions, n); got "
            f"{jnp.shape(interventions.production)}. Use steady_state for a single condition."
        )
    media_axis = None if media is None or jnp.ndim(media) == 1 else 0
    x0_axis = None if x0 is None or jnp.ndim(x0) == 1 else 0

    def per_condition():
        def one(e, m, x):
            if field is linear_field and set(options) <= {"check_stability"}:  # exact, one LU
                return linear_steady_state(params, media=m, intervention=e, **options)
            return steady_state(field, params, media=m, intervention=e, x0=x, **options)

        return jax.vmap(one, in_axes=(0, media_axis, x0_axis))(interventions, media, x0)

    jac = options.get("jacobian") or analytic_jacobian(field)
    if shared is None:
        shared = jac is not None
    if not shared:
        return per_condition()
    if jac is None:
        raise SemimechError("steady_states: shared=True needs a closed-form Jacobian; pass jacobian=... or "
                            "shared=False (one Newton solve per condition, Jacobian by jacfwd).")
    P, n = jnp.shape(interventions.production)
    dtype = _float_dtype(params, media, x0, interventions.production)
    X0 = jnp.broadcast_to(jnp.ones((n,), dtype) if x0 is None else jnp.asarray(x0, dtype), (P, n))
    edits = interventions._replace(production=jnp.asarray(interventions.production, dtype),
                                   clamp_value=jnp.asarray(interventions.clamp_value, dtype))
    d_rtol, d_atol = default_tolerances(dtype)
    rtol = options.get("rtol") or d_rtol
    atol = options.get("atol") or d_atol
    return shared_steady_states(field, jac, params, interventions=edits,
                                media=None if media is None else jnp.asarray(media, dtype), x0=X0,
                                m_axis=media_axis, rtol=rtol, atol=atol, max_chord=max_chord,
                                check_stability=options.get("check_stability", False), per_condition=per_condition)


def _rows(F, X, theta, m_axis):
    p, m, e = theta
    return jax.vmap(lambda x, mm, ee: F(x, p, media=mm, intervention=ee), in_axes=(0, m_axis, 0))(X, m, e)


def _factor(J0):
    """LU of the reference Jacobian; identity factors (and ``False``) when it is singular or not finite."""
    n = J0.shape[0]
    lu, piv = lu_factor(jnp.where(jnp.all(jnp.isfinite(J0)), J0, -jnp.eye(n, dtype=J0.dtype)))
    good = jnp.all(jnp.isfinite(J0)) & jnp.all(jnp.isfinite(lu)) & jnp.all(jnp.abs(jnp.diag(lu)) > 0)
    return (jnp.where(good, lu, jnp.eye(n, dtype=lu.dtype)), jnp.where(good, piv, jnp.arange(n, dtype=piv.dtype))), good


def _richardson(matvec, B, precond, dense, *, tol, max_iter):
    """``V`` with ``matvec(V) = B`` by ``V <- V + precond(B - matvec(V))``; ``dense(B)`` if that stalls."""
    size = jnp.max(jnp.abs(B))
    goal = tol * size + jnp.finfo(B.dtype).tiny

    def cond(c):
        _, R, k, prev = c
        r = jnp.max(jnp.abs(R))
        return (k < max_iter) & (r > goal) & ~((k >= 3) & (r > 0.95 * prev)) & jnp.isfinite(r)

    def body(c):
        V, R, k, _ = c
        r = jnp.max(jnp.abs(R))
        V = V + precond(R)
        return V, B - matvec(V), k + 1, r

    V0 = precond(B)
    V, R, _, _ = jax.lax.while_loop(cond, body, (V0, B - matvec(V0), jnp.array(0), jnp.array(jnp.inf, B.dtype)))
    done = jnp.max(jnp.abs(R)) <= goal
    return jax.lax.cond(eqxi.unvmap_any(~done), dense, lambda b: V, B)


@highest_precision
def shared_steady_states(field: Callable, jac: Callable, params, *, interventions: Intervention, media, x0,
                         m_axis, rtol: float, atol: float, max_chord: int, check_stability: bool,
                         per_condition: Callable):
    """Steady states of all conditions with one LU of the reference Jacobian (see the module docstring).

    ``x0`` is ``(conditions, n)``; the reference Jacobian is taken at ``x0[0]`` with no edit and
    the first condition's medium. ``per_condition()`` solves every condition one by one (the
    vmapped :func:`~semimech.dynamics.steady_state`) and is called only when some condition's
    chord iterations did not converge; its answers replace those conditions'. Returns a
    :class:`~semimech.dynamics.SteadyState` batch.
    """
    P, n = x0.shape
    dtype = x0.dtype
    theta = (params, media, interventions)
    th_sg = _stop(theta)
    p_sg, m_sg, _ = th_sg
    m_ref = None if m_sg is None else (m_sg if m_axis is None else m_sg[0])
    x_ref = jax.lax.stop_gradient(x0[0])
    factors, ref_ok = _factor(jac(x_ref, p_sg, media=m_ref, intervention=Intervention.none(n, dtype=dtype))
                              .astype(dtype))

    def precond(R, trans=0):  # J_0^{-1} (or J_0^{-T}) applied to every row at once
        return lu_solve(factors, R.T, trans=trans).T

    def chord_body(c):
        X, k, conv, stop, prev = c
        Fx = _rows(field, X, th_sg, m_axis)
        D = precond(Fx)
        Xn = X - D
        small = jnp.all(jnp.abs(D) < atol + rtol * jnp.abs(Xn), axis=1) & jnp.all(jnp.abs(Fx) < atol, axis=1)
        finite = jnp.all(jnp.isfinite(Xn), axis=1)
        size = jnp.max(jnp.abs(D), axis=1)
        stall = (k >= 2) & (size > 0.9 * prev)  # contraction too weak (or diverging): per-condition Newton
        active = ~conv & ~stop
        X = jnp.where((active & finite)[:, None], Xn, X)
        newly = active & small & finite
        return X, k + 1, conv | newly, stop | (active & ~newly & (~finite | stall)), jnp.where(active, size, prev)

    def chord_cond(c):
        _, k, conv, stop, _ = c
        return (k < max_chord) & jnp.any(~conv & ~stop)

    start = jax.lax.stop_gradient(x0)
    init = (start, jnp.array(0), jnp.zeros(P, bool), jnp.full(P, ~ref_ok), jnp.full(P, jnp.inf, dtype))
    X, _, conv, _, _ = jax.lax.while_loop(chord_cond, chord_body, init)
    conv = conv & ref_ok

    # the frozen step at the chord roots: value X, implicit derivative by preconditioned Richardson
    X = jnp.where(conv[:, None], X, 0.0)
    F_star, lin = jax.linearize(lambda Y: _rows(field, Y, th_sg, m_axis), X)
    tol = 100 * float(jnp.finfo(dtype).eps)

    def jacobians(trans=False):
        Js = jax.vmap(lambda x, mm, ee: jac(x, p_sg, media=mm, intervention=ee), in_axes=(0, m_axis, 0))(
            X, m_sg, th_sg[2])
        Js = jnp.where(conv[:, None, None], Js, -jnp.eye(n, dtype=dtype))
        return jnp.swapaxes(Js, 1, 2) if trans else Js

    def solve(matvec, B):
        return _richardson(matvec, B, precond, lambda b: dense_solve(jacobians(), b),
                           tol=tol, max_iter=100)

    def transpose_solve(vecmat, B):
        return _richardson(vecmat, B, lambda R: precond(R, trans=1),
                           lambda b: dense_solve(jacobians(trans=True), b),
                           tol=tol, max_iter=100)

    F_theta = _rows(field, X, theta, m_axis)
    d = jnp.where(conv[:, None], F_theta - jax.lax.stop_gradient(F_theta), 0.0)
    x_shared = X - jax.lax.custom_linear_solve(lin, d, solve, transpose_solve)
    ok = conv & jnp.all(jnp.isfinite(F_star), axis=1)
    if check_stability:
        eig = jnp.max(jnp.real(eigvals(jacobians())), axis=-1)
        ok = ok & (eig < 0)
    residual = jnp.max(jnp.abs(F_star), axis=1)

    shapes = jax.eval_shape(per_condition)
    fb = jax.lax.cond(eqxi.unvmap_any(jnp.any(~conv)), per_condition,
                      lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
    return SteadyState(x=jnp.where(conv[:, None], x_shared, fb.x), ok=jnp.where(conv, ok, fb.ok),
                       residual=jnp.where(conv, residual, fb.residual))
