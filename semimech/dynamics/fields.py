"""Parametric vector fields ``f(x, params, *, media, intervention) -> dx/dt``.

Both fields here share one reading of an :class:`~semimech.dynamics.intervention.Intervention`:
``production`` multiplies the whole production term of each variable (so a knockout,
``production = 0``, removes basal, regulated and medium-driven production alike and the
variable decays to zero), and clamped variables relax to their clamp value
(:func:`~semimech.dynamics.intervention.apply_clamp`), which at a fixed point is the SCM
``do(x_j = v)``.

The medium (``media``, FRAMEWORK.md section 1: ``Media(m')`` changes the vector field, not the
state) enters the production term linearly through ``M @ media``, *inside* the production scale:
a medium acts on a gene by regulating its production, so a knocked-out gene stays off whatever
the medium. ``media`` of zeros is the maintenance medium. Parameters without ``M`` describe a
system that does not respond to the medium; passing a non-empty ``media`` to them is an error.

Units: ``x`` in abundance (molecules or normalised expression), time in hours; rates in 1/h.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from semimech.dynamics.intervention import Intervention, apply_clamp
from semimech.errors import SemimechError

__all__ = [
    "LinearParams",
    "ProductionDecayParams",
    "linear_field",
    "production_decay_field",
]


class LinearParams(NamedTuple):
    """Parameters of :func:`linear_field`.

    Attributes
    ----------
    W
        Regulation matrix, ``W[i, j]`` = effect of ``x_j`` on the production of ``x_i`` (1/h).
    b
        Basal production (abundance/h).
    gamma
        Decay rate (1/h), positive.
    M
        Medium response, ``M[i, k]`` = effect of medium covariate ``k`` on the production of
        ``x_i`` (abundance/h per unit covariate); ``None`` when the system ignores the medium.
    """

    W: Float[Array, "n n"]
    b: Float[Array, " n"]
    gamma: Float[Array, " n"]
    M: Float[Array, "n m"] | None = None


class ProductionDecayParams(NamedTuple):
    """Parameters of :func:`production_decay_field`.

    Attributes
    ----------
    W
        Regulation matrix inside the sigmoid, ``W[i, j]`` = effect of ``x_j`` on the
        production of ``x_i`` (1/abundance); the gain of a Hill-like response.
    b
        Bias inside the sigmoid (dimensionless): basal activity of each promoter.
    alpha
        Maximal production rate (abundance/h), positive.
    gamma
        Decay rate (1/h), positive.
    M
        Medium response inside the sigmoid (per unit covariate); ``None`` to ignore the medium.
    """

    W: Float[Array, "n n"]
    b: Float[Array, " n"]
    alpha: Float[Array, " n"]
    gamma: Float[Array, " n"]
    M: Float[Array, "n m"] | None = None


def _mv(A, v):
    """``A @ v`` at full float32 precision (GPUs otherwise use TF32, ~1e-3 relative error,
    which stalls Newton at float32 tolerances)."""
    return jnp.dot(A, v, precision=jax.lax.Precision.HIGHEST)


def _no_edit(intervention: Intervention | None, n: int, dtype) -> Intervention:
    return Intervention.none(n, dtype=dtype) if intervention is None else intervention


def _check_square(W, b, name: str) -> int:
    n = b.shape[-1]
    if W.shape != (n, n) or b.shape != (n,):
        raise SemimechError(
            f"{name}: W must be (n, n) and b (n,) with the same n; got W {W.shape}, b {b.shape}. "
            "Pass one parameter set per system (vmap over batches of them)."
        )
    return n


def _check_state(x, intervention: Intervention, n: int, name: str) -> None:
    if jnp.shape(x) != (n,):
        raise SemimechError(f"{name}: the state x must have shape ({n},) to match W; got {jnp.shape(x)}.")
    if jnp.shape(intervention.production) != (n,) or jnp.shape(intervention.clamp_mask) != (n,):
        raise SemimechError(
            f"{name}: the intervention must act on the {n} state variables; got production "
            f"{jnp.shape(intervention.production)}. Build it with Intervention.none({n}) or "
            "Intervention.scale(...) over the modelled variables."
        )


def _media_term(M, media, n: int, name: str):
    """``M @ media`` (zero without a medium response); shape-checked at trace time."""
    if M is None:
        if media is not None and jnp.size(media) > 0:
            raise SemimechError(
                f"{name}: media of shape {jnp.shape(media)} was given but the parameters have no "
                "medium response M (None). Add M of shape (n, m) to the parameters, or pass media=None."
            )
        return 0.0
    if media is None:
        return 0.0  # maintenance medium: zero covariates
    media = jnp.asarray(media)
    if M.ndim != 2 or M.shape[0] != n or media.shape != (M.shape[1],):
        raise SemimechError(
            f"{name}: M must be (n, m) = ({n}, m) and media (m,); got M {jnp.shape(M)}, media {media.shape}."
        )
    return _mv(M, media)


def linear_field(
    x: Float[Array, " n"],
    params: LinearParams,
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Float[Array, " n"]:
    """Linear dynamics ``dx/dt = s * (W x + b + M media) - gamma * x`` (abundance/h).

    ``s`` is ``intervention.production``; clamped variables follow
    :func:`~semimech.dynamics.intervention.apply_clamp`. With ``gamma = 1`` and ``s = 1`` the
    fixed point is the linear SCM ``x = W x + b`` (FRAMEWORK.md section 4).

    Parameters
    ----------
    x
        State.
    params
        A :class:`LinearParams`.
    media
        Medium covariates (``None`` or zeros: maintenance medium).
    intervention
        The edit (``None``: unperturbed).

    Returns
    -------
    The time derivative of ``x``.
    """
    n = _check_square(params.W, params.b, "linear_field")
    intervention = _no_edit(intervention, n, jnp.result_type(x))
    _check_state(x, intervention, n, "linear_field")
    drive = _mv(params.W, x) + params.b + _media_term(params.M, media, n, "linear_field")
    dxdt = intervention.production * drive - params.gamma * x
    return apply_clamp(dxdt, x, intervention)


def production_decay_field(
    x: Float[Array, " n"],
    params: ProductionDecayParams,
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Float[Array, " n"]:
    """Saturating production, linear decay: ``dx/dt = alpha * s * sigmoid(W x + b + M media) - gamma * x``.

    ``s`` is ``intervention.production`` (knockout 0, knockdown ``1 - efficacy``, activation
    > 1); clamped variables follow :func:`~semimech.dynamics.intervention.apply_clamp`. For
    ``x >= 0`` and ``s >= 0`` every fixed point lies in the box ``0 <= x <= alpha * s / gamma``.

    Parameters
    ----------
    x
        State (abundance).
    params
        A :class:`ProductionDecayParams`.
    media
        Medium covariates (``None`` or zeros: maintenance medium).
    intervention
        The edit (``None``: unperturbed).

    Returns
    -------
    The time derivative of ``x`` (abundance/h).
    """
    n = _check_square(params.W, params.b, "production_decay_field")
    intervention = _no_edit(intervention, n, jnp.result_type(x))
    _check_state(x, intervention, n, "production_decay_field")
    drive = _mv(params.W, x) + params.b + _media_term(params.M, media, n, "production_decay_field")
    dxdt = params.alpha * intervention.production * jax.nn.sigmoid(drive) - params.gamma * x
    return apply_clamp(dxdt, x, intervention)
