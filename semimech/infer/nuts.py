"""The No-U-Turn sampler: ``fit_nuts`` -> :class:`~semimech.infer.fit.Fit` (NumPyro's NUTS, or one compiled program).

:class:`Fit`, the preparation of the model and data and the warm start are :mod:`semimech.infer.fit`'s, shared
with ``fit_svi``; ``from semimech.infer.fit import fit_nuts`` keeps working.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import MCMC, NUTS, init_to_median

from semimech._blas import limited_blas
from semimech._rng import as_key
from semimech.data.design import Design
from semimech.errors import InferenceError
from semimech.infer import _args
from semimech.infer._compiled import Recent, mapped_code_check
from semimech.infer._interrupt import FitInterrupted
from semimech.infer._progress import Phases
from semimech.infer._sites import site_dims
from semimech.infer.fit import _NO_INIT, Fit, _prepare, warm_init
from semimech.infer.idata import NUTS_EXTRA_FIELDS, nuts_sample_stats
from semimech.infer.spec import ModelSpec


@limited_blas()
def fit_nuts(spec: ModelSpec, design: Design, *, rng_key, num_warmup: int = 500, num_samples: int = 500,
             num_chains: int = 2, target_accept_prob: float = 0.85, max_tree_depth: int = 8,
             chain_method: str = "auto", progress_bar: bool = True, row_mask=None,
             init_values: Mapping[str, Any] | Fit | None = None, dense_mass=False, compiled: bool | None = None,
             **options) -> Fit:
    """Fit by the No-U-Turn sampler (NumPyro NUTS).

    ``num_warmup``: warm-up (adaptation) iterations per chain, not kept; ``num_samples``: draws kept
    *per chain* (the fit holds ``num_chains * num_samples``; :func:`fit_svi`'s ``num_samples`` is the
    total); ``num_chains``: the number of chains (default 2); ``progress_bar``: show the sampler's progress.
    ``spec``, ``design``, ``rng_key`` and ``**options`` (model options) as in :func:`fit_svi`.

    ``chain_method``: ``"auto"`` (default) runs the chains in parallel, one per device, when JAX
    sees at least ``num_chains`` devices, else one after the other; or NumPyro's
    ``"sequential"``, ``"parallel"`` or ``"vectorized"``. On a CPU, JAX sees one device unless told
    otherwise *before it starts*: call ``numpyro.set_host_device_count(2)`` (or set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) first thing in the session to give
    two chains two cores; semimech never changes that setting for you. Measured on the 4-gene
    problem of ``benchmarks/nuts_chains.py``: the first fit (compilation included) takes half
    the wall time of sequential chains (``RESULTS_speed.md``). ``"vectorized"`` runs the chains in
    lockstep in one program (every chain waits for the deepest tree). Divergences are counted in
    :meth:`Fit.diagnostics`. ``row_mask`` as in :func:`fit_svi`.

    ``init_values``: a warm start as in :func:`fit_svi` (site -> constrained value), or an earlier
    :class:`Fit` of the same model (e.g. an SVI fit), whose posterior medians are the start; every
    chain then starts at the same point (R-hat still compares the chains' draws, but from one start
    it is less able to reveal separate modes). Default: each chain at the median of 15 prior draws.

    ``dense_mass``: NumPyro's mass matrix: ``False`` (default) a diagonal one adapted in warm-up,
    ``True`` one dense matrix over all latent sites (adapts to linear correlations between
    parameters, e.g. a readout's offset and scale; costs ``O(d^2)`` per step and needs enough
    warm-up to estimate ``d(d+1)/2`` entries), or a list of tuples of site names, each a dense
    block (e.g. ``[("offset_z", "scale_z")]``), the other sites diagonal. Measured on
    ``signalling_network`` (one HepG2 context, 766 dimensions, 200 warm-up draws), ``True`` mixed
    worse than the diagonal (``benchmarks/RESULTS_signalling.md``): the defaults stay.
    ``target_accept_prob`` (in (0, 1)) and ``max_tree_depth`` (at most ``2**max_tree_depth - 1``
    leapfrog steps per draw) are NumPyro's.

    ``compiled``: ``None`` (default) means ``True`` unless the chains run in parallel (``chain_method="parallel"``,
    or ``"auto"`` with a device per chain), where NumPyro's ``MCMC.run`` (``False``) is used. With ``True`` semimech
    compiles NumPyro's NUTS as two programs, one initialising a chain (vectorised chains: all of them) and one
    running a block of iterations from a sampler state (:mod:`semimech.infer._nuts_blocks`), and runs the chains
    block by block: the progress bar counts iterations, Ctrl-C stops the fit within one block (blocks are sized to
    about half a second) with nothing left running, and the programs depend neither on ``num_samples`` nor, for
    sequential chains, on ``num_chains``. Their compilation is interruptible and uses the opt-in persistent
    cache (``SEMIMECH_CACHE_DIR`` or ``semimech.infer.set_cache_dir``), stored by one process and loaded by a
    later one. ``False`` (NumPyro's ``MCMC.run``) initialises the chains operation by operation, compiles its
    sampling loop again on every call and never uses that cache. The draws of the two paths differ for the same
    ``rng_key`` with sequential chains (the same sampler compiled differently: not the same floating-point
    rounding; the posterior agrees within Monte Carlo error) and are the same with vectorised ones. Measured on
    ``benchmarks/stan_nuts.py``'s 4-gene model (``RESULTS_speed.md``): the compiled path's first fit in a fresh
    process takes a third to a half of ``compiled=False``'s time, and a returning user's process (the persistent cache)
    finds both programs by a key known before tracing (no tracing or lowering): the in-process key below plus a
    hash of semimech's source, of the source files of the user's loaded modules (the model function's among
    them) and the versions of jax, jaxlib, numpyro, numpy and the loaded packages, the device, ``XLA_FLAGS`` and
    JAX's configuration (:mod:`semimech.infer._fastkey`). A model function without a source file (a notebook
    cell, ``python -c``), a lambda or a local function is found only by the hash of its lowered programs (traced
    and lowered first); a missing or damaged entry is compiled anew. The draws are the same from a fresh compile,
    either key or this process's copy. ``semimech.infer.nuts.LAST_PROGRAM["cache"]`` says where the last fit
    found its programs (``"memory"``, ``"fast"``, ``"disk"`` or ``"compiled"``: the least cached of the two). A
    later compiled fit in the same process with the same model, options, NUTS settings, warm start and warm-up
    length, and data of the same structure and shapes, reuses the programs (only the sampling is paid); the
    process keeps the last four pairs.

    With ``compiled=False`` each call compiles NumPyro's sampler anew, and JAX kept the compiled loop in its
    process-wide caches (~700 memory mappings per fit, measured): a process running many NUTS fits (a loop over 50 or
    more folds) reached the kernel's limit of mappings, and LLVM then aborts with "Unable to allocate section
    memory". The loop of a fit without a progress bar is now freed after the fit (no later fit could reuse it); with
    a progress bar NumPyro keeps at most 8; vectorised chains still leave ~500 mappings per fit in JAX's caches
    (measured). Every fit warns (:class:`~semimech.errors.CompiledCodeWarning`) once the process holds 70% of the
    limit; ``jax.clear_caches()`` (``benchmarks/heldout.py`` calls it after every fold) and
    :func:`semimech.infer.release_compiled` free the rest.
    """
    from semimech.infer.auto import cut_sites_in

    rng_key = as_key(rng_key)  # a bad seed is named before anything compiles (the model: _prepare)
    num_warmup = _args.count("num_warmup", num_warmup, minimum=0, what="warm-up iterations")
    num_samples = _args.count("num_samples", num_samples, what="draws per chain")
    model, data, y, opts = _prepare(spec, design, options, row_mask, method="nuts")
    cut = cut_sites_in(spec, model, data, y)
    if cut:
        raise InferenceError(
            f"fit_nuts: the {spec.name!r} model's density is a cut posterior with these options (site {cut[0]!r}: its "
            "gradient is stopped on purpose), so NUTS would sample with a gradient that is not its density's. Fit it "
            "with fit_svi (or sm.fit), or turn the cut off for NUTS (signalling_network: misfit_cut=False).")
    dense_mass = _check_nuts_settings(dense_mass, target_accept_prob, max_tree_depth, model, data, y)
    chain_method = _chain_method(chain_method, num_chains)
    if compiled is None:
        compiled = not (chain_method == "parallel" and num_chains > 1)
    if not isinstance(compiled, (bool, np.bool_)):
        raise InferenceError(f"compiled must be True, False or None (automatic), got {compiled!r}.")
    if compiled and chain_method == "parallel" and num_chains > 1:
        raise InferenceError("fit_nuts(compiled=True) runs the chains one after the other or vectorized, in compiled "
                             "blocks; chain_method='parallel' (one device per chain) needs compiled=False.")
    init_values = _init_from(init_values, spec)
    init = init_to_median(num_samples=15) if init_values is None else warm_init(
        {k: jnp.asarray(v) for k, v in init_values.items()})
    settings = dict(target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth, init_strategy=init,
                    dense_mass=dense_mass)
    if compiled:
        # what the two programs depend on besides their traced arguments (as fit_svi's engine key; warm
        # starts are constants of the programs, so their values are part of it)
        # (the programs do not depend on the number of draws, nor on the number of chains unless they are
        # vectorised: _nuts_compiled adds the chains run together)
        key_parts = ("nuts-blocks", NUTS, spec.model, opts, target_accept_prob, max_tree_depth, dense_mass,
                     "median" if init_values is None else dict(init_values), num_warmup, jax.default_backend())
        samples, extra = _nuts_compiled(model, data, y, settings, rng_key=rng_key, num_warmup=num_warmup,
                                        num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                                        phases=Phases(show=progress_bar, label=f"fit_nuts {spec.name}"),
                                        key_parts=key_parts)
    else:
        mcmc = MCMC(NUTS(model, **settings), num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                    chain_method=chain_method, progress_bar=progress_bar)
        try:
            mcmc.run(rng_key, data, y=y, extra_fields=NUTS_EXTRA_FIELDS)
        except RuntimeError as err:
            if "valid initial parameters" not in str(err):
                raise
            raise InferenceError(_NO_INIT) from None
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        extra = mcmc.get_extra_fields(group_by_chain=True)
        _release_numpyro_loop()
    stats = nuts_sample_stats(extra)
    # deterministic sites are recorded by NUTS; keep everything but the observations
    samples.pop("y", None)
    dims = site_dims(model, data, y)
    mapped_code_check()
    return Fit(spec=spec, design=design, samples=samples, dims=dims, method="nuts", options=opts,
               sample_stats=stats)


MAX_NUTS_PROGRAMS = 4
#: compiled programs of ``fit_nuts(compiled=True)`` in this process
_NUTS_PROGRAMS = Recent(MAX_NUTS_PROGRAMS)
#: where the last ``fit_nuts(compiled=True)`` found its program: ``"memory"`` (this process), ``"fast"`` (the
#: persistent cache by its fast key: no tracing or lowering), ``"disk"`` (the persistent cache by the lowered
#: program's hash) or ``"compiled"``
LAST_PROGRAM = {"cache": None}


def _nuts_compiled(model, data, y, settings: dict, *, rng_key, num_warmup, num_samples, num_chains, chain_method,
                   phases: Phases, key_parts=None):
    """``fit_nuts(compiled=True)``: NumPyro's NUTS as two programs compiled by semimech (an initialisation and a
    block of iterations, :mod:`semimech.infer._nuts_blocks`), run block by block.

    The readouts and per-row arrays are arguments of the programs (``split_data``, as in ``fit_svi``), the
    design's structure is part of them; they are compiled side by side (interruptibly, the persistent cache if
    one is set, found by the fast key first) and kept for later fits of the process with the same ``key_parts``,
    structure and shapes (the last :data:`MAX_NUTS_PROGRAMS`; no tracing, lowering or compiling then).
    Returns ``(samples, extra fields)`` as NumPy arrays, grouped by chain.
    """
    from semimech.infer import _nuts_blocks as nb
    from semimech.infer._compiled import cache_key, signature
    from semimech.infer._svi import _assemble, split_data

    static, traced = split_data(data, y)
    traced = jax.device_put(traced)
    lanes = num_chains if chain_method == "vectorized" else 1
    key = as_key(rng_key)
    keys = jax.random.split(key, num_chains) if num_chains > 1 else key[None]
    lane_keys = [keys] if lanes > 1 else [keys[c:c + 1] for c in range(num_chains)]
    pkey = None if key_parts is None else cache_key(*key_parts, lanes, static, signature(traced))
    init_fn, block_fn, collect_shape = nb.make_programs(model, settings, static=static, assemble=_assemble,
                                                        num_warmup=num_warmup, lanes=lanes, fields=NUTS_EXTRA_FIELDS,
                                                        kernel=NUTS)
    programs = _NUTS_PROGRAMS.get(pkey)
    LAST_PROGRAM["cache"] = "memory"
    if programs is None:
        with phases.phase("compile_s", "compiling NUTS (initialisation, and a block of iterations)"):
            programs = _compile_nuts(pkey, init_fn, block_fn, collect_shape, (lane_keys[0], traced))
        _NUTS_PROGRAMS.put(pkey, programs)
    init_program, block_program, block_max = programs
    total = num_warmup + num_samples
    phases.start_steps(num_chains * total, text=f"NUTS, {num_chains} chain(s) x ({num_warmup} warm-up + "
                                                f"{num_samples} draws)")
    per_lane = []
    t0 = time.perf_counter()
    try:
        for lk in lane_keys:
            per_lane.append(nb.run_chain(init_program, block_program, lk, traced, num_warmup=num_warmup,
                                         num_samples=num_samples, block_max=block_max,
                                         on_block=lambda n, done: phases.steps_done(n * lanes)))
    except KeyboardInterrupt:
        raise FitInterrupted(
            f"fit_nuts interrupted (Ctrl-C) while sampling "
            f"{f'chain {len(per_lane) + 1} of {num_chains}' if lanes == 1 else f'{num_chains} vectorized chains'}; "
            "nothing was returned, and nothing is left running (the compiled programs are kept: a new call "
            "starts without compiling).") from None
    finally:
        phases.end_steps()
        phases.add("sample_s", time.perf_counter() - t0)
    # iterations on axis 0 of each lane: to (chains, draws, ...)
    if lanes > 1:
        samples, extra = jax.tree.map(lambda a: np.swapaxes(a, 0, 1), per_lane[0])
    else:
        samples, extra = jax.tree.map(lambda *a: np.stack(a), *per_lane)
    # NumPyro checks the initial point only outside a traced program: a chain that never had a finite log
    # density started where the model cannot be evaluated
    if not np.isfinite(extra["potential_energy"]).any(axis=-1).all():
        raise InferenceError(_NO_INIT)
    return samples, extra


def _compile_nuts(pkey, init_fn, block_fn, collect_shape, init_args):
    """``(init program, block program, block_max)``: each found by its fast key when the persistent cache has it
    (no tracing or lowering), else traced, lowered and compiled side by side (or loaded by the lowered program's
    hash). ``LAST_PROGRAM["cache"]`` says where: the least cached of the two."""
    from semimech.infer._compiled import cache_dir, cache_key, submit_compile, wait_future
    from semimech.infer._fastkey import load_fast, program_key, store_fast
    from semimech.infer._nuts_blocks import block_max_for

    on_disk = pkey is not None and cache_dir() is not None
    n_arg = np.int32(1)
    fkey_init = program_key(cache_key(pkey, "init"), init_args) if on_disk else None
    init_program = load_fast(fkey_init, init_args)
    where = ["fast"]
    pending = None
    if init_program is None:
        lowered_init = jax.jit(init_fn).lower(*init_args)
        pending = (submit_compile(lowered_init), lowered_init)
        state_shape = lowered_init.out_info
    else:
        state_shape = init_program.out_info
    block_args = (state_shape, n_arg, init_args[1])
    fkey_block = program_key(cache_key(pkey, "block"), block_args) if on_disk else None
    block_program = load_fast(fkey_block, block_args)
    if block_program is None:
        block_max = block_max_for(jax.eval_shape(collect_shape, state_shape, init_args[1]))
        lowered_block = jax.jit(block_fn(block_max)).lower(*block_args)
        fut = submit_compile(lowered_block)
        block_program, hit = wait_future(fut)
        where.append("disk" if hit else "compiled")
        store_fast(fkey_block, lowered_block, fut.disk_key, block_args)
    if pending is not None:
        init_program, hit = wait_future(pending[0])
        where.append("disk" if hit else "compiled")
        store_fast(fkey_init, pending[1], pending[0].disk_key, init_args)
    # the buffer's length is the program's: found from its output (a loaded program included)
    block_max = int(jax.tree.leaves(block_program.out_info[1])[0].shape[0])
    LAST_PROGRAM["cache"] = max(where, key=("fast", "disk", "compiled").index)
    return init_program, block_program, block_max


CHAIN_METHODS = ("auto", "sequential", "parallel", "vectorized")


def _chain_method(method, num_chains: int) -> str:
    """``"auto"``: parallel chains when JAX has a device for each, else sequential; others checked."""
    if method not in CHAIN_METHODS:
        raise InferenceError(f"chain_method must be one of {CHAIN_METHODS}, got {method!r}.")
    _args.count("num_chains", num_chains)
    if method == "auto":
        return "parallel" if num_chains > 1 and jax.local_device_count() >= num_chains else "sequential"
    return method


def _init_from(init_values, spec: ModelSpec):
    """``init_values`` as a mapping: a :class:`Fit`'s posterior medians (same model only), else as given."""
    if not isinstance(init_values, Fit):
        return init_values
    if init_values.spec.name != spec.name:
        raise InferenceError(f"init_values is a fit of the {init_values.spec.name!r} model; a warm start must come "
                             f"from a fit of the model being fitted ({spec.name!r}).")
    return {k: np.median(init_values.flat(k), axis=0) for k in init_values.samples}


def _release_numpyro_loop() -> None:
    """Free the sampling loop NumPyro compiled for this fit (nothing else of JAX's).

    ``numpyro.util.fori_collect`` (without a progress bar) jits its loop with the fit's body function as a static
    argument, a new one per ``MCMC.run``: JAX kept every compiled loop, ~700 memory mappings a fit (measured: 5 tiny
    fits 2,825 -> 5,594 mappings; with this 2,139 -> 2,141). No later fit can reuse them. ``clear_cache`` of that
    jitted function drops its compiled entries; as a side effect JAX also empties its cache of traced parameters,
    so another jitted function may be traced again the next time it is called outside its fast path (its compiled
    code for calls already seen stays). With a progress bar NumPyro keeps at most 8 loop bodies itself. A NumPyro
    without this function leaves things as they were.
    """
    import numpyro.util

    loop = getattr(numpyro.util, "_fori_collect_loop", None)
    if loop is None:
        return
    try:
        jax.jit(loop, static_argnums=(0, 1), donate_argnums=3).clear_cache()
    except Exception:  # noqa: BLE001 - freeing memory must never fail a fit
        pass


def _check_nuts_settings(dense_mass, target_accept_prob, max_tree_depth, model, data, y):
    """Clear errors for NUTS settings NumPyro would reject late or silently misread; returns ``dense_mass``."""
    if not (isinstance(target_accept_prob, (int, float)) and 0.0 < target_accept_prob < 1.0):
        raise InferenceError(f"target_accept_prob must be a number in (0, 1), got {target_accept_prob!r}.")
    if isinstance(max_tree_depth, (bool, np.bool_)) or not isinstance(max_tree_depth, (int, np.integer)) or not (
            1 <= max_tree_depth <= 15):
        raise InferenceError(f"max_tree_depth must be an integer from 1 to 15, got {max_tree_depth!r}.")
    if isinstance(dense_mass, (bool, np.bool_)):
        return bool(dense_mass)
    blocks = list(dense_mass) if isinstance(dense_mass, (list, tuple)) else None
    if not blocks or not all(isinstance(b, tuple) and b and all(isinstance(n, str) for n in b) for b in blocks):
        raise InferenceError("dense_mass must be True, False, or a list of tuples of latent site names (dense "
                             f"blocks, e.g. [('offset_z', 'scale_z')]), got {dense_mass!r}.")
    tr = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(data, y=y)
    latent = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    unknown = sorted({n for b in blocks for n in b} - set(latent))
    if unknown:
        raise InferenceError(f"dense_mass names {unknown}, which are not latent sites of this model (its latent "
                             f"sites: {latent}).")
    return blocks
