"""One place that turns a user's ``rng_key`` into a JAX key (or a NumPy generator keyed by it)."""

from __future__ import annotations

import jax
import numpy as np


#: The int seeds jax.random.PRNGKey takes (a signed 64-bit integer); a larger int overflows inside JAX.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def as_key(rng_key) -> jax.Array:
    """Accept an int seed or a JAX PRNG key; return a raw uint32 PRNG key.

    There is no default: every random function in semimech asks for ``rng_key`` explicitly.
    """
    if rng_key is None:
        raise TypeError("rng_key is required (an int seed or a jax.random key); semimech has no hidden default seed.")
    if isinstance(rng_key, (bool, np.bool_)):  # bool is an int to Python, never a seed to a user
        raise TypeError(f"rng_key must be an int or a jax.random key, got bool {rng_key!r}. Pass an int seed "
                        f"(e.g. rng_key={int(rng_key)}).")
    if isinstance(rng_key, (int, np.integer)):
        seed = int(rng_key)
        if not SEED_MIN <= seed <= SEED_MAX:
            raise TypeError(f"rng_key {seed} is outside the seeds JAX accepts (a 64-bit integer, -2**63 to "
                            f"2**63 - 1). Pass an int seed in that range (e.g. rng_key=0).")
        return jax.random.PRNGKey(seed)
    if isinstance(rng_key, (str, bytes, float, np.floating)):
        raise TypeError(f"rng_key must be an int or a jax.random key, got {type(rng_key).__name__} {rng_key!r:.40}.")
    try:
        key = jax.numpy.asarray(rng_key)
    except (TypeError, ValueError):
        raise TypeError(f"rng_key must be an int or a jax.random key, got {type(rng_key).__name__}.") from None
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.shape == (2,) and key.dtype == np.uint32:
        return key
    raise TypeError(f"rng_key must be an int or a jax.random key, got {type(rng_key).__name__} with shape {getattr(key, 'shape', None)}.")


def host_rng(rng_key, *tags: int) -> np.random.Generator:
    """A NumPy generator seeded by the key's data and ``tags`` (small non-negative ints, one per purpose).

    For draws made on the host: a few thousand normals, gamma-Poissons or choices, where ``jax.random`` called
    eagerly compiles a program per shape (a negative-binomial draw ~5 s cold on 2 cores) for milliseconds of work.
    """
    data = np.asarray(as_key(rng_key)).astype(np.uint32).ravel()
    return np.random.default_rng([int(v) for v in data] + [int(t) for t in tags])
