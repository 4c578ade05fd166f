"""How a perturbation enters a vector field.

Shared convention of :mod:`semimech.dynamics` and :mod:`semimech.protocol`: a vector field is
a pure function ``f(x, params, *, media, intervention) -> dx/dt`` where ``x`` is the state
(``Float[Array, "n"]``, abundances), ``params`` a pytree, ``media`` a
``Float[Array, "m"]`` of environment covariates (zeros = maintenance medium) and
``intervention`` an :class:`Intervention`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class Intervention(NamedTuple):
    """An edit of the genotype/drug state ``g`` of FRAMEWORK.md section 1.

    Attributes
    ----------
    production
        Multiplicative scale on each state variable's production rate: 1 = unperturbed,
        0 = knockout, ``1 - efficacy`` = knockdown, > 1 = activation.
    clamp_mask
        True where the state variable is held fixed (an SCM ``do()``).
    clamp_value
        The value a clamped variable is held at (ignored where ``clamp_mask`` is False).
    """

    production: Float[Array, " n"]
    clamp_mask: Bool[Array, " n"]
    clamp_value: Float[Array, " n"]

    @classmethod
    def none(cls, n: int, *, dtype=None) -> "Intervention":
        """The identity edit on an ``n``-dimensional state."""
        return cls(
            production=jnp.ones((n,), dtype=dtype),
            clamp_mask=jnp.zeros((n,), dtype=bool),
            clamp_value=jnp.zeros((n,), dtype=dtype),
        )

    @classmethod
    def scale(cls, production: Float[Array, " n"]) -> "Intervention":
        """An edit that only rescales production rates."""
        production = jnp.asarray(production)
        return cls(
            production=production,
            clamp_mask=jnp.zeros(production.shape, dtype=bool),
            clamp_value=jnp.zeros(production.shape, dtype=production.dtype),
        )


def compose(first: Intervention, second: Intervention) -> Intervention:
    """Apply two edits together (simultaneous edits commute as edits).

    Production scales multiply; clamps are united, ``second`` winning where both clamp.
    """
    return Intervention(
        production=first.production * second.production,
        clamp_mask=first.clamp_mask | second.clamp_mask,
        clamp_value=jnp.where(second.clamp_mask, second.clamp_value, first.clamp_value),
    )


def apply_clamp(
    dxdt: Float[Array, " n"], x: Float[Array, " n"], intervention: Intervention
) -> Float[Array, " n"]:
    """Make clamped variables relax to their clamp value (rate 1) instead of following ``f``.

    At a fixed point this gives ``x_j = clamp_value_j`` exactly, the SCM ``do(x_j)``.
    """
    return jnp.where(intervention.clamp_mask, intervention.clamp_value - x, dxdt)
