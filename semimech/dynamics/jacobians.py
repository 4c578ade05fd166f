"""Closed-form Jacobians ``J[i, j] = d f_i / d x_j`` of the package's parametric vector fields.

Building a Jacobian by forward-mode differentiation costs ``n`` Jacobian-vector products,
``O(n^3)`` for a dense field; the closed forms here cost ``O(n^2)``. The steady-state solver
(:func:`~semimech.dynamics.steady_state`) uses them for Newton's method and for the implicit
derivative whenever the field is :func:`~semimech.dynamics.linear_field` or
:func:`~semimech.dynamics.production_decay_field`; other fields (neural, user-defined) fall back
to ``jax.jacfwd``. A clamped variable ``j`` relaxes to its clamp value, ``f_j = v_j - x_j``, so
its row is ``-e_j`` in every field.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from semimech.dynamics.fields import (
    LinearParams,
    ProductionDecayParams,
    _check_square,
    _check_state,
    _media_term,
    _mv,
    _no_edit,
    linear_field,
    production_decay_field,
)
from semimech.dynamics.intervention import Intervention

__all__ = ["analytic_jacobian", "linear_jacobian", "production_decay_jacobian"]


def _clamp_rows(J, intervention: Intervention):
    n = J.shape[-1]
    return jnp.where(intervention.clamp_mask[:, None], -jnp.eye(n, dtype=J.dtype), J)


def linear_jacobian(
    x: Float[Array, " n"],
    params: LinearParams,
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Float[Array, "n n"]:
    """Jacobian of :func:`~semimech.dynamics.linear_field`: ``diag(s) W - diag(gamma)`` (1/h).

    It does not depend on ``x`` or ``media`` (taken for a uniform signature); clamped rows are ``-e_j``.
    """
    n = _check_square(params.W, params.b, "linear_jacobian")
    intervention = _no_edit(intervention, n, jnp.result_type(x))
    _check_state(x, intervention, n, "linear_jacobian")
    _media_term(params.M, media, n, "linear_jacobian")  # validates shapes only
    J = intervention.production[:, None] * params.W - jnp.diag(params.gamma)
    return _clamp_rows(J, intervention)


def production_decay_jacobian(
    x: Float[Array, " n"],
    params: ProductionDecayParams,
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Float[Array, "n n"]:
    """Jacobian of :func:`~semimech.dynamics.production_decay_field` (1/h).

    ``J = diag(alpha * s * sigmoid'(z)) W - diag(gamma)`` with ``z = W x + b + M media`` and
    ``sigmoid' = sigmoid (1 - sigmoid)``; clamped rows are ``-e_j``.
    """
    n = _check_square(params.W, params.b, "production_decay_jacobian")
    intervention = _no_edit(intervention, n, jnp.result_type(x))
    _check_state(x, intervention, n, "production_decay_jacobian")
    z = _mv(params.W, x) + params.b + _media_term(params.M, media, n, "production_decay_jacobian")
    sig = jax.nn.sigmoid(z)
    gain = params.alpha * intervention.production * sig * (1.0 - sig)
    J = gain[:, None] * params.W - jnp.diag(params.gamma)
    return _clamp_rows(J, intervention)


_ANALYTIC = {linear_field: linear_jacobian, production_decay_field: production_decay_jacobian}


def analytic_jacobian(field: Callable) -> Callable | None:
    """The closed-form Jacobian of ``field`` (same signature), or ``None`` when there is none."""
    try:
        return _ANALYTIC.get(field)
    except TypeError:  # an unhashable callable
        return None
