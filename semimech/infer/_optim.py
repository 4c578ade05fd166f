"""fit_svi's optimiser with its learning rate and schedule length as *state*, not compile-time constants.

``optax.adam(optax.cosine_decay_schedule(rate, num_steps))`` bakes ``rate`` and ``num_steps`` into
the compiled SVI step, so a second fit of the same model and shapes with another number of steps
(or another rate) compiled init, step and draws again. Here the schedule reads both from the
optimiser state: :func:`optimiser` builds the transformation once, :func:`set_schedule` writes a
fit's values into the initial state (host side, after the compiled init), and the compiled
programs serve every ``num_steps`` and ``learning_rate``. The arithmetic is optax's
(``cosine_decay_schedule`` then ``scale_by_learning_rate``), in the same float32 operations.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ALPHA = 0.01  # the rate decays to 1% of its start
CLIP = 10.0


class CosineRateState(NamedTuple):
    """Step count, initial learning rate and decay length (float32 scalars but the count)."""

    count: jax.Array
    learning_rate: jax.Array
    decay_steps: jax.Array


def scale_by_cosine_rate(alpha: float = ALPHA) -> optax.GradientTransformation:
    """``updates * -rate * ((1 - alpha) * 0.5 * (1 + cos(pi * min(t, T) / T)) + alpha)``; rate and T in the state."""

    def init_fn(params):
        del params
        one = jnp.ones([], jnp.float32)
        return CosineRateState(count=jnp.zeros([], jnp.int32), learning_rate=one, decay_steps=one)

    def update_fn(updates, state, params=None):
        del params
        count = jnp.minimum(state.count.astype(jnp.float32), state.decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * count / state.decay_steps))
        step = -(state.learning_rate * ((1 - alpha) * cosine + alpha))
        updates = jax.tree.map(lambda g: jnp.array(step, dtype=g.dtype) * g, updates)
        return updates, state._replace(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def optimiser() -> optax.GradientTransformation:
    """Gradient clipping, Adam, and the cosine-decayed rate of :func:`set_schedule`."""
    return optax.chain(optax.clip_by_global_norm(CLIP), optax.scale_by_adam(), scale_by_cosine_rate())


def set_schedule(state, *, learning_rate: float, num_steps: int):
    """``state`` (an SVI state) with the schedule's rate and length set; everything else unchanged."""
    def put(leaf):
        if isinstance(leaf, CosineRateState):
            return leaf._replace(learning_rate=jnp.asarray(learning_rate, jnp.float32),
                                 decay_steps=jnp.asarray(float(max(num_steps, 1)), jnp.float32))
        return leaf

    return jax.tree.map(put, state, is_leaf=lambda x: isinstance(x, CosineRateState))


def reference(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
    """The optax formulation this module reproduces (for tests)."""
    schedule = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1), alpha=ALPHA)
    return optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(schedule))
