"""Minibatch samplers over cells for stochastic variational inference.

Each sampler is an infinite generator of :class:`Minibatch` records: the row indices of one
fixed-size minibatch and, per row, the weight that makes the minibatch sum an unbiased
estimate of the full-data sum (``sum_i w_i f(x_i)`` has expectation ``sum_all f(x)``).
Uniform minibatches have ``w = n / batch_size`` for every row; stratified ones do not.

``batch_aware_minibatches`` draws every minibatch from within one experimental batch and
includes that batch's control cells, so each gradient step compares perturbed cells with
controls measured alongside them (the within-batch comparison of the design analysis).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from semimech._rng import as_key
from semimech.errors import DesignError

__all__ = ["Minibatch", "batch_aware_minibatches", "uniform_minibatches"]


class Minibatch(NamedTuple):
    """Row indices of a minibatch and each row's inverse-inclusion weight."""

    index: np.ndarray
    weight: np.ndarray


def _numpy_rng(rng_key) -> np.random.Generator:
    key = np.asarray(as_key(rng_key), dtype=np.uint32)
    return np.random.default_rng([int(k) for k in key])


def _check_size(n: int, batch_size: int) -> int:
    batch_size = int(batch_size)
    if batch_size < 1:
        raise DesignError(f"batch_size must be at least 1, got {batch_size}.")
    if n < 1:
        raise DesignError("there are no cells to draw minibatches from.")
    return min(batch_size, n)


def uniform_minibatches(n: int, *, batch_size: int, rng_key) -> Iterator[Minibatch]:
    """Minibatches of ``batch_size`` rows drawn without replacement, epoch by epoch.

    Parameters
    ----------
    n
        Number of rows (cells).
    batch_size
        Rows per minibatch (capped at ``n``).
    rng_key
        Int seed or JAX key.
    """
    b = _check_size(n, batch_size)
    rng = _numpy_rng(rng_key)
    weight = np.full(b, n / b, dtype=np.float32)
    while True:
        perm = rng.permutation(n)
        for start in range(0, n - b + 1, b):
            yield Minibatch(perm[start:start + b].astype(np.int32), weight)


def batch_aware_minibatches(batch_index, is_control, *, batch_size: int, rng_key,
                            control_fraction: float = 0.25) -> Iterator[Minibatch]:
    """Minibatches drawn within one batch, each holding that batch's controls.

    Each minibatch picks a batch ``b`` with probability ``n_b / n``, then
    ``round(control_fraction * batch_size)`` of its control cells (all of them if fewer) and
    fills the rest with its other cells, without replacement (with replacement only when the
    batch has fewer cells than needed). Weights are inverse inclusion probabilities, so the
    weighted minibatch log-likelihood is unbiased for the full-data one.

    Parameters
    ----------
    batch_index
        Each cell's batch (integers).
    is_control
        Each cell's control status (boolean).
    batch_size
        Rows per minibatch.
    rng_key
        Int seed or JAX key.
    control_fraction
        Share of each minibatch given to the batch's controls (0 < f < 1).
    """
    bidx = np.asarray(batch_index)
    ctrl = np.asarray(is_control, dtype=bool)
    n = bidx.shape[0]
    if ctrl.shape != (n,):
        raise DesignError(f"is_control has shape {ctrl.shape} but batch_index has {n} cells.")
    if not 0.0 < control_fraction < 1.0:
        raise DesignError(f"control_fraction must be in (0, 1), got {control_fraction}.")
    b = _check_size(n, batch_size)
    rng = _numpy_rng(rng_key)
    labels, counts = np.unique(bidx, return_counts=True)
    p = counts / n
    groups = []
    for lab in labels:
        c = np.flatnonzero((bidx == lab) & ctrl)
        o = np.flatnonzero((bidx == lab) & ~ctrl)
        n_c = 0 if c.size == 0 else (b if o.size == 0 else min(max(int(round(control_fraction * b)), 1), b - 1))
        groups.append((c, o, n_c))
    while True:
        j = rng.choice(len(labels), p=p)
        c, o, n_c = groups[j]
        parts, weights = [], []
        for pool, k in ((c, n_c), (o, b - n_c)):
            if k == 0:
                continue
            parts.append(rng.choice(pool, size=k, replace=pool.size < k))
            # inclusion probability per slot: p_b * k / |pool| (an expected count when drawn with replacement)
            weights.append(np.full(k, pool.size / (p[j] * k), dtype=np.float32))
        yield Minibatch(np.concatenate(parts).astype(np.int32), np.concatenate(weights))
