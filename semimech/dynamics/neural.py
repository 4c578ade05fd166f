"""A neural vector field with the production/decay structure and intervention semantics.

``dx/dt = s * softplus(mlp([x, media])) - gamma * x``: the MLP learns a non-negative
production rate for every variable from the state (and the medium), decay stays linear, and an
:class:`~semimech.dynamics.intervention.Intervention` acts exactly as in
:mod:`semimech.dynamics.fields` (``s`` scales the production term; clamps via
:func:`~semimech.dynamics.intervention.apply_clamp`). Keeping decay explicit and production
non-negative means ``x >= 0`` is invariant and fixed points satisfy
``x = s * production(x) / gamma``: the part the network learns is the regulation only.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from semimech._rng import as_key
from semimech.dynamics.intervention import Intervention, apply_clamp
from semimech.errors import SemimechError

__all__ = ["NeuralField", "neural_field"]


class NeuralField(eqx.Module):
    """An MLP production rate with linear decay; the module is its own parameter pytree.

    Attributes
    ----------
    mlp
        Maps ``[x, media]`` (length ``n + n_media``) to ``n`` pre-activation production rates.
    log_gamma
        Log decay rates (log 1/h).
    n_media
        Number of medium covariates the field responds to (static).
    """

    mlp: eqx.nn.MLP
    log_gamma: Float[Array, " n"]
    n_media: int = eqx.field(static=True)

    def __init__(
        self,
        n: int,
        *,
        n_media: int = 0,
        width: int = 32,
        depth: int = 2,
        gamma: float = 1.0,
        rng_key,
        dtype=None,
    ):
        """Build a randomly initialised field.

        Parameters
        ----------
        n
            Number of state variables.
        n_media
            Number of medium covariates (0: the field ignores the medium).
        width, depth
            Hidden width and number of hidden layers of the MLP.
        gamma
            Initial decay rate for every variable (1/h).
        rng_key
            Key (or int seed) for the weight initialisation.
        dtype
            Floating dtype of the weights (default: JAX's default float).
        """
        if n < 1 or n_media < 0 or width < 1 or depth < 0:
            raise SemimechError(
                f"NeuralField needs n >= 1, n_media >= 0, width >= 1, depth >= 0; got n={n}, "
                f"n_media={n_media}, width={width}, depth={depth}."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.mlp = eqx.nn.MLP(
            n + n_media, n, width, depth, activation=jax.nn.softplus, key=as_key(rng_key), dtype=dtype
        )
        self.log_gamma = jnp.full((n,), jnp.log(gamma), dtype=dtype)
        self.n_media = n_media

    @property
    def n(self) -> int:
        """Number of state variables."""
        return self.log_gamma.shape[-1]

    def production(self, x: Float[Array, " n"], media: Float[Array, " m"] | None = None) -> Float[Array, " n"]:
        """The unperturbed production rate ``softplus(mlp([x, media]))`` (abundance/h)."""
        if self.n_media:
            media = jnp.zeros((self.n_media,), dtype=x.dtype) if media is None else jnp.asarray(media, x.dtype)
            if media.shape != (self.n_media,):
                raise SemimechError(f"NeuralField expects media of shape ({self.n_media},); got {media.shape}.")
            inputs = jnp.concatenate([x, media])
        else:
            if media is not None and jnp.size(media) > 0:
                raise SemimechError(
                    f"NeuralField was built with n_media=0 but media of shape {jnp.shape(media)} was "
                    "given. Build it with NeuralField(n, n_media=m, ...) or pass media=None."
                )
            inputs = x
        # full float32 matmuls: TF32 on GPUs (~1e-3 relative error) stalls Newton in float32
        with jax.default_matmul_precision("highest"):
            return jax.nn.softplus(self.mlp(inputs))

    def __call__(
        self,
        x: Float[Array, " n"],
        *,
        media: Float[Array, " m"] | None = None,
        intervention: Intervention | None = None,
    ) -> Float[Array, " n"]:
        """``dx/dt = s * softplus(mlp([x, media])) - gamma * x`` with clamps applied."""
        if jnp.shape(x) != (self.n,):
            raise SemimechError(f"NeuralField: the state must have shape ({self.n},); got {jnp.shape(x)}.")
        if intervention is None:
            intervention = Intervention.none(self.n, dtype=x.dtype)
        if jnp.shape(intervention.production) != (self.n,):
            raise SemimechError(
                f"NeuralField: the intervention must act on the {self.n} state variables; got "
                f"production of shape {jnp.shape(intervention.production)}."
            )
        dxdt = intervention.production * self.production(x, media) - jnp.exp(self.log_gamma) * x
        return apply_clamp(dxdt, x, intervention)


def neural_field(
    x: Float[Array, " n"],
    params: NeuralField,
    *,
    media: Float[Array, " m"] | None = None,
    intervention: Intervention | None = None,
) -> Float[Array, " n"]:
    """The :class:`NeuralField` ``params`` in the shared ``f(x, params, *, media, intervention)`` form."""
    return params(x, media=media, intervention=intervention)
