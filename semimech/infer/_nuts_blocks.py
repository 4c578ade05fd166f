"""``fit_nuts(compiled=True)``: NumPyro's NUTS as two programs compiled by semimech, run in blocks.

One program initialises a chain (or, for vectorised chains, all of them in lockstep): NumPyro's ``NUTS.init``,
i.e. the initial point, the first step size and the warm-up adapter's state. The other runs a *block* of ``n``
iterations from a sampler state (``n`` is an argument, up to ``block_max``, a size fixed by the program) and
returns the new state and every iteration's draw (constrained and deterministic sites, as NumPyro's
``postprocess_fn`` gives them) and sampler fields. Warm-up and sampling are the same iterations (NumPyro's
kernel adapts while the state's iteration counter is below ``num_warmup``), so the program is the same for both;
the warm-up draws are dropped on the host. The iterations, and therefore the draws, do not depend on where the
blocks end; the block size only decides how often Python sees the chain:

- a progress bar per iteration (``progress_bar=True``);
- Ctrl-C stops the fit within one block: blocks are sized to take about :data:`BLOCK_SECONDS` (the first
  block is one iteration, then ``n`` follows the measured time per iteration), where one program for the
  whole run could not be cancelled and kept a core busy until its draws were done;
- neither program depends on ``num_samples`` or, for sequential chains, on ``num_chains``: a later fit
  with more draws or chains reuses them.

Sequential chains run one after the other through the one-chain programs; vectorised chains advance together
(NumPyro's ``vectorized``: every chain waits for the deepest tree).
"""

from __future__ import annotations

import time
from operator import attrgetter

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import NUTS

#: target wall seconds of one block (Ctrl-C and the progress bar wait at most about this long)
BLOCK_SECONDS = 0.5
#: most iterations in one block, and the most bytes its buffered draws may take
BLOCK_MAX_ITERATIONS = 1000
BLOCK_MAX_BYTES = 64 * 2**20


def _sampler(kernel, model, settings, state_key, num_warmup, args, kwargs, init_params=None):
    """A NUTS kernel set up for these model arguments (NumPyro builds its step functions in ``init``)."""
    sampler = kernel(model, **settings)
    state = sampler.init(state_key, num_warmup, init_params, model_args=args, model_kwargs=kwargs)
    return sampler, state


def make_programs(model, settings: dict, *, static, assemble, num_warmup: int, lanes: int, fields: tuple,
                  kernel=NUTS):
    """The two functions to compile: ``init(keys, traced) -> state`` and
    ``block(state, n, traced) -> (state, (draws, fields))`` with ``block_max`` rows buffered, and a function
    ``collect_shape(state, traced)`` giving one iteration's output structure (to size ``block_max``). ``kernel``:
    NumPyro's ``NUTS`` class (or a subclass)."""

    def model_args(traced):
        d, yy = assemble(static, traced)
        return (d,), {"y": yy}

    def init(keys, traced):
        args, kwargs = model_args(traced)
        return _sampler(kernel, model, settings, keys if lanes > 1 else keys[0], num_warmup, args, kwargs)[1]

    def kernel_at(state, traced):
        """The kernel set up for ``traced`` and one iteration's output ``collect(state) -> (draws, fields)``.
        NumPyro builds the kernel's adapter and step functions in ``init``; the state it returns is not used
        (dead code for XLA): the chain goes on from ``state``."""
        args, kwargs = model_args(traced)
        sampler, _ = _sampler(kernel, model, settings, state.rng_key, num_warmup, args, kwargs, init_params=state.z)
        post = sampler.postprocess_fn(args, kwargs)
        if lanes > 1:
            post = jax.vmap(post)

        def collect(st):
            return post(st.z), {f: attrgetter(f)(st) for f in fields}

        return sampler, args, kwargs, collect

    def collect_shape(state, traced):
        return kernel_at(state, traced)[3](state)

    def block_fn(block_max):
        def block(state, n, traced):
            sampler, args, kwargs, collect = kernel_at(state, traced)
            proto = jax.eval_shape(collect, state)
            buf = jax.tree.map(lambda s: jnp.zeros((block_max,) + s.shape, s.dtype), proto)

            def body(i, carry):
                st, b = carry
                st = sampler.sample(st, args, kwargs)
                b = jax.tree.map(lambda acc, v: jax.lax.dynamic_update_index_in_dim(acc, v, i, 0), b, collect(st))
                return st, b

            return jax.lax.fori_loop(0, n, body, (state, buf))

        return block

    return init, block_fn, collect_shape


def block_max_for(one_iteration) -> int:
    """Iterations per block buffer: at most :data:`BLOCK_MAX_ITERATIONS`, and at most
    :data:`BLOCK_MAX_BYTES` of buffered draws."""
    size = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(one_iteration))
    return int(max(1, min(BLOCK_MAX_ITERATIONS, BLOCK_MAX_BYTES // max(size, 1))))


def run_chain(init_program, block_program, keys, traced, *, num_warmup: int, num_samples: int, block_max: int,
              on_block=None):
    """Initialise and run one lane (a chain, or vectorised chains) to ``num_warmup + num_samples``
    iterations in blocks; returns the kept draws and fields, iterations on axis 0.

    ``on_block(n, i_done)`` is called after each block (progress). A ``KeyboardInterrupt`` propagates once the
    running block is done (at most about :data:`BLOCK_SECONDS`)."""
    total = num_warmup + num_samples
    state = jax.block_until_ready(init_program(keys, traced))
    pieces, done, n = [], 0, 1
    while done < total:
        n = int(min(n, total - done, block_max))
        t = time.perf_counter()
        state, out = block_program(state, np.int32(n), traced)
        out = jax.block_until_ready(out)
        dt = time.perf_counter() - t
        lo = max(num_warmup - done, 0)  # the block's first kept row
        if lo < n:
            pieces.append(jax.tree.map(lambda a, lo=lo, n=n: np.asarray(a)[lo:n], out))
        done += n
        if on_block is not None:
            on_block(n, done)
        # next block: about BLOCK_SECONDS at the measured pace (the first block may include a one-time cost)
        n = max(1, int(BLOCK_SECONDS * n / max(dt, 1e-6)))
    return jax.tree.map(lambda *a: np.concatenate(a, axis=0), *pieces)
