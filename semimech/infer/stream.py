"""Minibatch SVI that streams cells from a sparse design: memory follows the minibatch.

:func:`fit_svi_minibatch` fits the same models and returns the same :class:`~semimech.Fit`
as :func:`~semimech.fit_svi`, but each step sees ``batch_size`` rows only:

- row indices are drawn on the host, epoch by epoch (a fresh permutation per epoch; the last
  ``n mod batch_size`` rows of a permutation wait for the next epoch);
- only those rows are taken from the design's CSR matrix, as padded coordinates
  (:class:`~semimech.measurement.likelihoods.SparseCounts`) for the negative binomial, whose
  log-likelihood evaluates ``lgamma`` on the non-zeros only, or as a dense block for
  Gaussian readouts; the full cells x genes matrix is never densified;
- one jitted ``SVI.update`` runs per step on the device while the host prepares the next
  minibatch (JAX dispatches asynchronously).

The model's ``cells`` plate is declared with ``subsample_size = rows given`` and so scales the
minibatch log-likelihood by ``n_obs / batch_size`` (an unbiased estimate of the full-data
ELBO); the plate's indices are set to the minibatch's row indices. Everything the model
computes per perturbation (effects, steady states, the ``mean`` site) is computed once per
step, outside the ``cells`` plate, and gathered per row.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
from numpyro import handlers
from numpyro.infer import SVI, Predictive, autoguide, init_to_median

from semimech._blas import limited_blas
from semimech._rng import as_key
from semimech.data.design import Design
from semimech.errors import DesignError
from semimech.infer import _args
from semimech.infer._compiled import mapped_code_check
from semimech.infer._elbo import OrderedTraceELBO
from semimech.infer.fit import GUIDES, Fit, _check_losses, resolved_options, svi_method
from semimech.infer._sites import site_dims, trace
from semimech.infer.spec import ModelSpec
from semimech.measurement import check_likelihood
from semimech.measurement.likelihoods import SparseCounts

__all__ = ["fit_svi_minibatch"]

# per-row entries of Design.model_data(); everything else is global to the design
ROW_KEYS = ("perturbation_index", "batch_index", "size_factors", "n_cells", "y_ss")


@dataclasses.dataclass(frozen=True, eq=False)
class _Stream:
    """What the training loop needs: the wrapped model, the data split, the readout source."""

    model: Callable            # model(data, y=..., cells=...) with the cells plate's indices set
    raw_model: Callable        # the user's model with options bound
    static: dict               # python scalars / None of model_data()
    globals_: dict             # arrays that are not per row
    rows: dict                 # per-row numpy arrays (length n_obs)
    y: Any                     # CSR matrix or ndarray
    sparse: bool               # pass SparseCounts (True) or dense rows (False)
    n_obs: int
    batch_size: int
    n_blocks: int
    opts: dict


@limited_blas()
def fit_svi_minibatch(spec: ModelSpec, design: Design, *, rng_key, batch_size: int, num_epochs: float | None = None,
                      num_steps: int | None = None, guide: str = "normal", learning_rate: float = 0.02,
                      num_samples: int = 400, rank: int = 10, sparse: bool | None = None,
                      progress_bar: bool = False, **options) -> Fit:
    """Fit by minibatch SVI, streaming rows of the design's (sparse) readouts.

    Parameters
    ----------
    spec, design
        As for :func:`~semimech.fit_svi`. ``design.y`` may be a CSR matrix of any size that
        fits in host memory; it is never densified.
    rng_key
        Int seed or JAX key (drives the guide, the optimiser noise and the row order).
    batch_size
        Rows per step (at most ``design.n_obs``).
    num_epochs, num_steps
        Length of the run: give one. An epoch is ``n_obs // batch_size`` steps.
    guide, learning_rate, num_samples, rank
        As for :func:`~semimech.fit_svi` (Adam with gradient clipping, same guides).
    sparse
        Pass count rows as :class:`~semimech.measurement.likelihoods.SparseCounts`
        (``lgamma`` on non-zeros only). Default: True for ``likelihood="negbin"``.
    progress_bar
        Print the loss every tenth of the run.
    **options
        Model options, e.g. ``likelihood="negbin"``.
    """
    learning_rate, num_samples, rank = _args.svi_settings(learning_rate, num_samples, rank)
    stream = _setup(spec, design, batch_size=batch_size, options=options, sparse=sparse, n_blocks=1,
                    method=svi_method(guide))
    steps = _num_steps(stream, num_epochs, num_steps)
    key = as_key(rng_key)
    k_fit, k_draw = jax.random.split(key)
    params, losses, g, _ = _train(stream, k_fit, steps, guide=guide, learning_rate=learning_rate, rank=rank,
                                  progress_bar=progress_bar)
    return _to_fit(spec, design, stream, g, params, losses, k_draw, num_samples)


# ---------------------------------------------------------------------------------------- setup
def _setup(spec, design, *, batch_size, options, sparse, n_blocks, method: str = "svi") -> _Stream:
    spec = _args.spec(spec)
    if not isinstance(design, Design):
        raise DesignError(f"expected a semimech.Design, got {type(design).__name__}; build one with Design.from_anndata.")
    if design.y is None:
        raise DesignError("cannot fit a prediction design (it has no readouts); fit the training design.")
    n = design.n_obs
    batch_size = _args.count("batch_size", batch_size, what="rows per minibatch", error=DesignError)
    if batch_size > n:
        raise DesignError(
            f"batch_size={batch_size} is larger than the data ({n} rows). Use batch_size <= {n}, "
            "or semimech.fit_svi for full-batch SVI on data this small.")
    if batch_size % n_blocks:
        raise DesignError(f"batch_size={batch_size} must be a multiple of the number of devices ({n_blocks}) "
                          f"so that every device gets the same number of rows; e.g. {batch_size - batch_size % n_blocks or n_blocks}.")
    opts = resolved_options(spec, options, method, design=design)
    opts.setdefault("likelihood", "negbin" if design.is_counts else "normal")
    y = design.y
    if sp.issparse(y):
        bad = int(np.count_nonzero(y.data < 0))
        if bad and opts["likelihood"] == "negbin":
            raise DesignError(
                f"the sparse readout matrix has {bad} negative entries, but likelihood='negbin' needs non-negative "
                "counts. Pass raw UMI counts (layer='counts'), or use likelihood='normal' for normalised data.")
        y = sp.csr_matrix(y)
        if not y.has_sorted_indices:
            y = y.sorted_indices()
    check_likelihood(opts["likelihood"], is_counts=design.is_counts)
    if sparse is None:
        sparse = opts["likelihood"] == "negbin"
    if sparse and opts["likelihood"] != "negbin":
        raise DesignError("sparse=True streams counts for likelihood='negbin'; use sparse=False for Gaussian readouts.")
    if sparse and not sp.issparse(y):  # dense counts (a small AnnData's X) streamed as CSR rows: a copy
        y = sp.csr_matrix(np.asarray(y, dtype=np.float32))
    data = design.model_data()
    rows = {k: np.asarray(data[k]) for k in ROW_KEYS if data.get(k) is not None}
    rest = {k: v for k, v in data.items() if k not in ROW_KEYS}
    globals_ = {k: np.asarray(v) for k, v in rest.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in rest.items() if k not in globals_}
    static.update({k: None for k in ROW_KEYS if data.get(k) is None})
    raw = functools.partial(spec.model, **opts)

    def model(data, *, y=None, cells=None):
        with handlers.substitute(data={"cells": cells}):
            return raw(data, y=y)

    return _Stream(model=model, raw_model=raw, static=static, globals_=globals_, rows=rows, y=y, sparse=bool(sparse),
                   n_obs=n, batch_size=int(batch_size), n_blocks=int(n_blocks), opts=opts)


def _num_steps(stream: _Stream, num_epochs, num_steps) -> int:
    if (num_epochs is None) == (num_steps is None):
        raise DesignError("give exactly one of num_epochs or num_steps.")
    per_epoch = stream.n_obs // stream.batch_size
    if num_steps is not None:
        return _args.count("num_steps", num_steps, what="SVI steps", error=DesignError)
    num_epochs = _args.number("num_epochs", num_epochs, error=DesignError)
    steps = int(round(num_epochs * per_epoch))
    if steps < 1:
        raise DesignError(f"the run has no steps (num_epochs={num_epochs}, {per_epoch} steps per epoch).")
    return steps


# ---------------------------------------------------------------------------------------- batches
def _indices(n: int, batch_size: int, seed: np.ndarray):
    """Endless minibatch row indices: a fresh permutation per epoch, each minibatch sorted."""
    rng = np.random.default_rng([int(s) for s in seed])
    while True:
        perm = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield np.sort(perm[start:start + batch_size])


def _block_nnz(y: sp.csr_matrix, idx: np.ndarray, n_blocks: int) -> np.ndarray:
    per_row = y.indptr[idx + 1] - y.indptr[idx]
    return per_row.reshape(n_blocks, -1).sum(1)


def _sparse_rows(y: sp.csr_matrix, idx: np.ndarray, n_blocks: int, capacity: int) -> SparseCounts:
    """Rows ``idx`` of a CSR matrix as padded coordinates, one block of rows per device."""
    b = len(idx) // n_blocks
    vals = np.zeros((n_blocks, capacity), np.float32)
    rws = np.zeros((n_blocks, capacity), np.int32)
    cols = np.zeros((n_blocks, capacity), np.int32)
    mask = np.zeros((n_blocks, capacity), np.float32)
    for d in range(n_blocks):
        sub = y[idx[d * b:(d + 1) * b]]
        k = sub.nnz
        vals[d, :k] = sub.data
        cols[d, :k] = sub.indices
        rws[d, :k] = np.repeat(np.arange(b, dtype=np.int32), np.diff(sub.indptr))
        mask[d, :k] = 1.0
    return SparseCounts(vals, rws, cols, mask, shape=(len(idx), y.shape[1]))


def _batch(stream: _Stream, idx: np.ndarray, capacity: int):
    """Host-side minibatch: per-row arrays, readouts and the plate indices."""
    rows = {k: v[idx] for k, v in stream.rows.items()}
    if stream.sparse:
        y = _sparse_rows(stream.y, idx, stream.n_blocks, capacity)
    else:
        y = stream.y[idx]
        y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=np.float32)
    return rows, y, idx.astype(np.int32)


# ---------------------------------------------------------------------------------------- training
def _make_guide(model, guide: str, rank: int):
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}.")
    init = init_to_median(num_samples=15)
    return {"normal": lambda: autoguide.AutoNormal(model, init_loc_fn=init, init_scale=0.05),
            "lowrank": lambda: autoguide.AutoLowRankMultivariateNormal(model, init_loc_fn=init, rank=rank,
                                                                       init_scale=0.05),
            "map": lambda: autoguide.AutoDelta(model, init_loc_fn=init)}[guide]()


def _train(stream: _Stream, key, num_steps: int, *, guide="normal", learning_rate=0.02, rank=10,
           progress_bar=False, place_batch: Callable | None = None, place_global: Callable | None = None,
           out_sharding=None):
    """Run the streamed SVI loop; returns ``(params, losses, guide, timings)``.

    ``place_batch(tree)`` puts a host minibatch on the device(s) and ``place_global(tree)``
    the SVI state (default: ``jax.device_put`` for both);
    ``out_sharding`` fixes the sharding of the step's outputs (sharding replicates them).
    """
    place = place_batch or jax.device_put
    place_global = place_global or jax.device_put
    g = _make_guide(stream.model, guide, rank)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(learning_rate))
    svi = SVI(stream.model, g, optim, OrderedTraceELBO())
    # design-level arrays stay concrete numpy (closed over, as in fit_svi): models may use them
    # in Python (index lists, structure); only per-row arrays and readouts are traced
    fixed = {**stream.static, **stream.globals_}

    def update(state, rows, y, cells):
        return svi.stable_update(state, {**fixed, **rows}, y=y, cells=cells)

    step = jax.jit(update, donate_argnums=0) if out_sharding is None else \
        jax.jit(update, donate_argnums=0, out_shardings=out_sharding)
    k_init, k_rows = jax.random.split(key)
    batches = _indices(stream.n_obs, stream.batch_size, np.asarray(k_rows))
    capacity, recompiles = 0, 0

    def next_batch():
        nonlocal capacity, recompiles
        idx = next(batches)
        if stream.sparse:
            need = int(_block_nnz(stream.y, idx, stream.n_blocks).max())
            if need > capacity:  # grow with headroom, so new shapes (recompiles) stay rare
                capacity = max(256, -(-int(need * 1.15) // 256) * 256)
                recompiles += 1
        return _batch(stream, idx, capacity)

    t0 = time.perf_counter()
    host = next_batch()
    rows, y, cells = jax.device_put(host)
    state = place_global(_compiled_init(stream, svi, guide, rank, optim, fixed, k_init, rows, y, cells))
    rows, y, cells = place(host)
    t_init = time.perf_counter() - t0
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(num_steps):
        state, loss = step(state, rows, y, cells)
        losses.append(loss)
        if i == 0:
            loss.block_until_ready()
            t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
        if i + 1 < num_steps:
            rows, y, cells = place(next_batch())  # host work overlaps the device step dispatched above
        if progress_bar and (i + 1) % max(1, num_steps // 10) == 0:
            print(f"step {i + 1}/{num_steps}  loss {float(loss):.4g}", flush=True)
    losses = np.asarray(jax.device_get(jnp.stack(losses)))
    t_total, c_total = time.perf_counter() - t0, time.process_time() - c0
    _check_losses(losses)
    params = svi.get_params(state)
    timings = {"init_s": t_init, "first_step_s": t_first, "loop_s": t_total, "steps": num_steps,
               "capacity": capacity, "shapes_compiled": recompiles,
               "steady_step_s": (t_total - t_first) / max(num_steps - 1, 1),
               "steady_step_cpu_s": (c_total - c_first) / max(num_steps - 1, 1)}
    return params, losses, g, timings


def _compiled_init(stream: _Stream, svi, guide: str, rank: int, optim, fixed, key, rows, y, cells):
    """The SVI state from one compiled program (as ``fit_svi``): the ``init_to_median`` search,
    the guide's parameters and the optimiser state traced together, instead of NumPyro's eager
    set-up (hundreds of one-off XLA compilations: 75 s of a 10^6-cell fit at load 8).

    ``svi``'s own guide (which the steps and draws use) is set up as the engine's (``set_up_guide``):
    abstractly, or concretely where a support depends on data, and then that eager call's state is used.
    """
    from semimech.infer._svi import set_up_guide

    # the rows are closed over, not abstract: the guide's post-processing (used by ``sample_posterior``
    # after the loop) keeps the set-up's model arguments, which must not be tracers
    data = {**fixed, **rows}
    _, state = set_up_guide(svi, lambda: svi.init(key, data, y=y, cells=cells))
    if state is not None:
        return state

    def init(key, rows, y, cells):
        fresh = SVI(stream.model, _make_guide(stream.model, guide, rank), optim, OrderedTraceELBO())
        return fresh.init(key, {**fixed, **rows}, y=y, cells=cells)

    return jax.jit(init)(key, rows, y, cells)


# ---------------------------------------------------------------------------------------- output
def _small(stream: _Stream, n_rows: int = 4):
    """Model data for the first few rows: enough for structure and global deterministic sites."""
    idx = np.arange(min(n_rows, stream.n_obs))
    data = {**stream.static, **stream.globals_, **{k: v[idx] for k, v in stream.rows.items()}}
    return data, jnp.asarray(idx, dtype=jnp.int32)


def _deterministic_sites(model, data) -> list[str]:
    names = []

    def run():  # abstract evaluation: nothing is computed
        names.extend(n for n, s in trace(model, data).items() if s["type"] == "deterministic")
        return 0

    jax.eval_shape(run)
    return names


def _to_fit(spec, design, stream: _Stream, g, params, losses, key, num_samples: int) -> Fit:
    k_guide, k_det = jax.random.split(key)
    params = jax.device_get(params)
    post = dict(g.sample_posterior(k_guide, params, sample_shape=(num_samples,)))
    data, cells = _small(stream)
    det = _deterministic_sites(stream.raw_model, data)
    if det:
        pred = Predictive(stream.model, posterior_samples=post, return_sites=det)(k_det, data, cells=cells)
        post.update({k: v for k, v in pred.items() if k in det})
    post.pop("y", None)
    samples = {k: np.asarray(v)[None] for k, v in post.items()}
    dims = site_dims(stream.raw_model, data)
    mapped_code_check()
    return Fit(spec=spec, design=design, samples=samples, dims=dims, method="svi", options=stream.opts,
               losses=losses)
