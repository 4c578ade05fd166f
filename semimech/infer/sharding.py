"""Data-parallel SVI over every device JAX sees: rows sharded, parameters replicated.

:func:`fit_svi_sharded` is :func:`~semimech.infer.stream.fit_svi_minibatch` on a
:class:`jax.sharding.Mesh` with one axis, ``"data"``. Each minibatch's rows (their per-row
arrays, their padded non-zeros, one block per device) are placed with
``NamedSharding(mesh, P("data"))``; the guide's parameters, the optimiser state and the
design-level arrays are replicated (``P()``). The step is the same jitted ``SVI.update``:
XLA's SPMD partitioner runs each device on its rows and all-reduces the ELBO and its
gradient, so every device applies the same update. The result equals a one-device run up to
the order of floating-point sums.

On one machine
--------------
Every GPU (or TPU core) of the machine is used: ``fit_svi_sharded(spec, design, rng_key=0,
batch_size=8192, num_epochs=5)``. Choose ``batch_size`` as a multiple of the device count.
To try it on CPU, set ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX is
imported (it splits the CPU into 4 devices; useful for tests, not for speed).

On several hosts
----------------
Start one process per host, each with the same script and the same ``rng_key``, and call
``jax.distributed.initialize()`` first (arguments: ``coordinator_address="host0:1234"``,
``num_processes``, ``process_id``; on SLURM or Cloud TPU they are found automatically)::

    import jax
    jax.distributed.initialize()
    design = ...                      # every process builds the same Design (or memory-maps it)
    fit = fit_svi_sharded(spec, design, rng_key=0, batch_size=8192 * jax.device_count(),
                          num_epochs=5)

``jax.devices()`` then lists the devices of all hosts and the mesh spans them. Every process
draws the same minibatch indices (same key) and hands JAX only the blocks of rows its own
devices hold (``jax.make_array_from_callback``), so host-to-device traffic is local; the
gradient all-reduce crosses hosts. Every process returns the same :class:`~semimech.Fit`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from semimech._rng import as_key
from semimech.infer import _args
from semimech.infer.fit import Fit, svi_method
from semimech.infer.spec import ModelSpec
from semimech.infer.stream import _num_steps, _setup, _to_fit, _train

__all__ = ["data_mesh", "fit_svi_sharded"]

AXIS = "data"


def data_mesh(devices: Sequence | None = None) -> Mesh:
    """A one-axis mesh (``"data"``) over ``devices`` (default: all of ``jax.devices()``)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("data_mesh needs at least one device.")
    return Mesh(np.asarray(devs), (AXIS,))


def _placers(mesh: Mesh):
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P(AXIS))

    def put_rows(a):
        a = np.asarray(a)
        sharding = NamedSharding(mesh, P(AXIS, *([None] * (a.ndim - 1))))
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    def place_batch(tree):
        return jax.tree_util.tree_map(put_rows, tree)

    def place_global(tree):
        return jax.device_put(tree, replicated)

    return place_batch, place_global, replicated, rows


def fit_svi_sharded(spec: ModelSpec, design, *, rng_key, batch_size: int, mesh: Mesh | None = None,
                    num_epochs: float | None = None, num_steps: int | None = None, guide: str = "normal",
                    learning_rate: float = 0.02, num_samples: int = 400, rank: int = 10, sparse: bool | None = None,
                    progress_bar: bool = False, **options) -> Fit:
    """Minibatch SVI with each minibatch's rows split over the devices of ``mesh``.

    Parameters
    ----------
    mesh
        A one-axis mesh from :func:`data_mesh` (default: all devices).
    batch_size
        Rows per step over all devices; a multiple of the number of devices.
    spec, design, rng_key, num_epochs, num_steps, guide, learning_rate
        As for :func:`~semimech.infer.stream.fit_svi_minibatch`.
    num_samples, rank, sparse, progress_bar, **options
        As for :func:`~semimech.infer.stream.fit_svi_minibatch`.
    """
    mesh = data_mesh() if mesh is None else mesh
    learning_rate, num_samples, rank = _args.svi_settings(learning_rate, num_samples, rank)
    stream = _setup(spec, design, batch_size=batch_size, options=options, sparse=sparse, n_blocks=mesh.size,
                    method=svi_method(guide))
    steps = _num_steps(stream, num_epochs, num_steps)
    k_fit, k_draw = jax.random.split(as_key(rng_key))
    place_batch, place_global, replicated, _ = _placers(mesh)
    params, losses, g, _ = _train(stream, k_fit, steps, guide=guide, learning_rate=learning_rate, rank=rank,
                                  progress_bar=progress_bar, place_batch=place_batch, place_global=place_global,
                                  out_sharding=replicated)
    return _to_fit(spec, design, stream, g, params, losses, k_draw, num_samples)
