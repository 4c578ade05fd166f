"""One place that turns a user's ``rng_key`` into a JAX key (or a NumPy generator keyed by it)."""

from __future__ import annotations

import jax
import numpy as np


def as_key(rng_key) -> jax.Array:
    """Accept an int seed or a JAX PRNG key; return a raw uint32 PRNG key.

    There is no default: every random function in semimech asks for ``rng_key`` explicitly.
    """
    if rng_key is None:
        raise TypeError("rng_key is required (an int seed or a jax.random key); semimech has no hidden default seed.")
    if isinstance(rng_key, (int, np.integer)):
        return jax.random.PRNGKey(int(rng_key))
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
