"""Many experiments at once: one vmapped, compiled solve per number of Evolve segments.

Each experiment reduces to its (media, edit, duration) segments (see
:func:`semimech.protocol.run._segments`), so experiments of different structure but the same
number of Evolves share one batch. A steady initial state is solved once and shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from semimech.dynamics.intervention import Intervention
from semimech.errors import DesignError
from semimech.protocol.operators import Experiment, stack
from semimech.protocol.run import (
    ProtocolResult,
    _check,
    _check_method,
    _run_segments_impl,
    _segments,
    _setup,
    _steady,
)

__all__ = ["run_many"]


def run_many(
    experiments: Experiment | Sequence[Experiment],
    field: Callable,
    params,
    *,
    x0,
    media0,
    intervention0: Intervention | None = None,
    **options,
) -> ProtocolResult:
    """Run many experiments with ``jax.vmap``: one compiled solve per number of Evolves.

    Parameters
    ----------
    experiments
        A stacked experiment (see :func:`~semimech.protocol.stack`), or a list of experiments of
        any structures (stacked per structure here; results come back in list order).
    field, params, x0, media0, intervention0, options
        As for :func:`run`. ``x0`` may be shared (``"n"``), per experiment (``"experiments n"``)
        or ``"steady"``: a steady initial state is solved once, outside the vmap, and shared.

    Returns
    -------
    ProtocolResult
        Every field has a leading ``experiments`` axis.
    """
    if isinstance(experiments, Experiment):
        return _run_stacked([experiments], field, params, x0=x0, media0=media0, intervention0=intervention0, **options)
    experiments = list(experiments)
    if not experiments or not all(isinstance(e, Experiment) for e in experiments):
        raise DesignError("run_many() needs a stacked Experiment or a non-empty list of Experiments.")
    groups: dict = {}
    for i, e in enumerate(experiments):
        key = (jax.tree.structure(e), tuple(jnp.shape(leaf) for leaf in jax.tree.leaves(e)))
        groups.setdefault(key, []).append(i)
    order = np.concatenate([np.asarray(idx) for idx in groups.values()])
    stacked = [stack([experiments[i] for i in idx]) for idx in groups.values()]
    if not isinstance(x0, str) and jnp.ndim(x0) == 2:
        x0 = jnp.asarray(x0)[order]
    out = _run_stacked(stacked, field, params, x0=x0, media0=media0, intervention0=intervention0, **options)
    inverse = np.argsort(order, kind="stable")
    return jax.tree.map(lambda a: a[inverse], out)


def _run_stacked(
    stacked: list[Experiment],
    field: Callable,
    params,
    *,
    x0,
    media0,
    intervention0=None,
    solver=None,
    rtol=None,
    atol=None,
    max_steps: int = 4096,
    adjoint=None,
    x_guess=None,
    steady_method: str = "flow",
    steady_horizon: float = 1000.0,
    steady_tol=None,
) -> ProtocolResult:
    """Run several stacked experiments (possibly of different structures) as one batch per
    segment count, results concatenated in the order given. Each experiment reduces to its
    (media, edit, duration) segments, so structures with the same number of Evolves share one
    vmapped, compiled solve."""
    for e in stacked:
        _check(e, media0, x0)
    per = not isinstance(x0, str) and jnp.ndim(x0) == 2
    x_one = jnp.asarray(x0)[0] if per else x0
    x, media, g, opts = _setup(stacked[0], x_one, media0, intervention0, x_guess, solver, rtol, atol, max_steps, adjoint)
    x_all = jnp.asarray(x0, x.dtype) if per else x
    if any(not jax.tree.leaves(e) for e in stacked):
        raise DesignError("run_many() needs a stacked experiment with at least one operator carrying numbers (see stack()).")
    sizes = [jnp.shape(jax.tree.leaves(e)[0])[0] for e in stacked]
    if per and sum(sizes) != x_all.shape[0]:
        raise DesignError(f"x0 has {x_all.shape[0]} rows but there are {sum(sizes)} experiments; pass one row per experiment.")
    ok0 = jnp.asarray(True)
    if isinstance(x0, str):  # shared by every experiment: solved once, outside the vmap
        steady = (_check_method(steady_method), jnp.asarray(steady_horizon, x.dtype), steady_tol)
        x_all, ok0 = _steady_jit(field, params, x, media, g, steady, opts)
    parts = [jax.vmap(lambda e: _segments(e, media, g)[0])(jax.tree.map(jnp.asarray, e)) for e in stacked]
    batches = [e.ops[-1].batch for e in stacked]
    if any(b is None for b in batches) and not all(b is None for b in batches):
        raise DesignError("Some experiments give Measure a batch and some do not; give every Measure a batch or none.")
    # Merge parts with the same number of segments into one batch.
    nseg = [0 if p is None else p[2].shape[1] for p in parts]
    offsets = np.cumsum([0] + sizes)
    order, results = [], []
    for k in sorted(set(nseg)):
        idx = [i for i, n in enumerate(nseg) if n == k]
        segs = None if k == 0 else jax.tree.map(lambda *a: jnp.concatenate(a), *[parts[i] for i in idx])
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
        count = len(rows)
        x_k = x_all[rows] if per else x_all
        results.append(_run_many_segments(segs, count, field, params, x_k, per, (media, g), opts))
        order.append(rows)
    inverse = np.argsort(np.concatenate(order), kind="stable")
    out = jax.tree.map(lambda *a: jnp.concatenate(a)[inverse], *results)
    batch = None if batches[0] is None else jnp.concatenate([jnp.atleast_1d(b) for b in batches])
    return out._replace(ok=out.ok & ok0, batch=batch)


_steady_jit = eqx.filter_jit(_steady)


@eqx.filter_jit
def _run_many_segments(segments, count, field, params, x, per, start, opts) -> ProtocolResult:
    """vmap of :func:`_run_segments_impl` over ``count`` experiments (``x`` shared or per experiment)."""

    def one(seg, x_):
        return _run_segments_impl(seg, field, params, x_, start, opts, None)

    if segments is None:
        xs = x if per else jnp.broadcast_to(x, (count,) + x.shape)
        return ProtocolResult(state=xs, ok=jnp.ones(count, bool), initial=xs, batch=None)
    return jax.vmap(one, in_axes=(0, 0 if per else None))(segments, x)
