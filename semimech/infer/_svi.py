"""SVI compiled once per model and shapes: init, blocks of steps and posterior draws.

An :class:`Engine` holds three compiled functions for one model (with its options), guide,
optimiser and data *shapes*:

- ``init(key, traced) -> state``: NumPyro's own ``SVI.init`` (the guide's set-up, the
  ``init_loc_fn`` search for a valid starting point, the optimiser state) under ``jit``: one
  compilation instead of hundreds of eager operations;
- ``block(state, traced, n) -> (state, losses)``: ``n`` SVI steps in one ``fori_loop`` (any
  ``n`` up to ``block_size`` without recompiling), so the host can show progress and stop on
  Ctrl-C between blocks;
- ``draws[num_samples](key, state, traced) -> samples``: posterior draws of every latent site
  and every deterministic site in one call.

``traced`` holds the readouts and the per-row arrays of ``Design.model_data()``; everything else
of the model data is structural (closed over as constants and keyed by content). A second fit
of the same model, options and shapes (another seed, a K-fold refit of same-shape data) finds
the engine in a process-wide cache and compiles nothing.

The programs compile in worker threads while the fit goes on (:meth:`Engine.prepare`): the step's
first, the others lowered while it compiles; each use waits for its own program only, so the draws
can compile while the steps run.

The guide used inside the compiled functions is set up by an abstract evaluation (no
computation, no compilation): its prototype then holds abstract placeholders where NumPyro
keeps initial values, which are never used (parameters always come from ``init``'s state).
Guides whose supports depend on values (e.g. ``Uniform(low=a_sample, ...)``) are set up
concretely instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer import SVI, Predictive

from semimech.infer._compiled import Recent, submit_compile, wait_future
from semimech.infer._elbo import OrderedTraceELBO
from semimech.infer.fit import DATA_SUMMARIES

ROW_KEYS = ("perturbation_index", "batch_index", "size_factors", "n_cells", "y_ss", "row_mask")
#: Always traced (not keyed): the data-centred priors, so that a fit of another design with the same
#: structure and shapes (a cross-validation fold, a refit on new data) reuses the compiled programs.
FOLD_KEYS = DATA_SUMMARIES
#: Key of the warm-start values in ``traced`` (``fit_svi(init_values=...)``), read by the compiled init.
INIT_KEY = "_init_values"
BLOCK_SIZE = 256
# the initialisation runs once per fit: compile it for compile speed (measured on the additive
# NB model, 2,000 x 200: 3.5 instead of 5.1 CPU-s to compile, 0.14 instead of 0.09 s to run)
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
#: XLA options of the step program (none: measured options that compile it faster run it slower, RESULTS_speed.md).
STEP_COMPILER_OPTIONS = None
#: XLA options of the posterior draws' program: LLVM's optimisation level 1 instead of 2 (measured on the
#: additive NB model, 2,000 x 200, 400 draws: 1.6 instead of 2.7-2.8 CPU-s to compile, the same 0.03 s to
#: run, the same draws bit for bit; RESULTS_speed.md). ``None`` compiles it with XLA's defaults.
DRAWS_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
#: With fewer cores than this, the draws' compile waits for the init's (see ``Engine.prepare``).
SIDE_BY_SIDE_CORES = 3
MAX_ENGINES = 8
_ENGINES = Recent(MAX_ENGINES)


def split_data(data: dict, y) -> tuple[dict, dict]:
    """``(static, traced)``: structural model data, and readouts plus per-row arrays."""
    traced = {k: data[k] for k in ROW_KEYS if data.get(k) is not None}
    traced.update({k: np.asarray(data[k], np.float32) for k in FOLD_KEYS if data.get(k) is not None})
    traced["y"] = y
    static = {k: v for k, v in data.items() if k not in traced}
    return static, traced


def _assemble(static: dict, traced: dict):
    data = dict(static)
    data.update({k: v for k, v in traced.items() if k not in ("y", INIT_KEY)})
    return data, traced["y"]


@dataclasses.dataclass(eq=False)
class Engine:
    """Compiled SVI for one model, guide, optimiser and data signature (see the module docstring)."""

    key: Any
    model: Callable
    static: dict
    guide: Any
    svi: SVI
    latent: tuple[str, ...]
    deterministic: tuple[str, ...]
    make_guide: Callable
    optim: Any
    state_shapes: Any = None
    block_size: int = BLOCK_SIZE
    compiled: dict = dataclasses.field(default_factory=dict)
    pending: dict = dataclasses.field(default_factory=dict)  # name -> future of (compiled, from_disk)

    def prepare(self, traced, num_samples: int, *, init: bool = True, phases=None) -> None:
        """Start compiling the programs a fit needs that are not compiled yet, and return without waiting.

        Each program is lowered here and its compile started at once in a worker thread, the SVI step
        (the longest compile, which the steps wait for) first: the init and the draws are lowered while
        it compiles. Each use (:meth:`init`, :meth:`compile_block`, :meth:`draws`) waits for its own
        program only, so the draws compile while the initialisation and the steps run. On a machine with
        fewer than :data:`SIDE_BY_SIDE_CORES` cores the draws compile after the init (two compiles at
        once, not three sharing two cores, which slowed the step's compile that the fit waits for).
        """
        if self.state_shapes is None:
            return
        for name, fut in list(self.pending.items()):  # a compile that failed earlier is tried again
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                del self.pending[name]
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        todo = []
        if "block" not in self.compiled and "block" not in self.pending:
            todo.append(("block", self._block_fn, (self.state_shapes, traced, jax.ShapeDtypeStruct((), jnp.int32)),
                         "the SVI step", STEP_COMPILER_OPTIONS))
        if init and "init" not in self.compiled and "init" not in self.pending:
            todo.append(("init", self._init_fn, (key, traced), "the initialisation", INIT_COMPILER_OPTIONS))
        name = f"draws{num_samples}"
        if name not in self.compiled and name not in self.pending:
            todo.append((name, functools.partial(self._draw_fn, num_samples), (key, self.state_shapes, traced),
                         f"the draw of {num_samples} posterior samples", DRAWS_COMPILER_OPTIONS))
        if not todo:
            return
        ctx = phases.phase("compile_s", "compiling " + ", ".join(t[3] for t in todo)) if phases is not None else _null()
        serial = _cores() < SIDE_BY_SIDE_CORES
        with ctx:
            for name, fn, args, _, options in todo:
                after = self.pending.get("init") if serial and name.startswith("draws") else None
                lowered = jax.jit(fn).lower(*args)
                self.pending[name] = submit_compile(lowered, options, after=after)

    # ------------------------------------------------------------------------------ compile
    def _get(self, name: str, fn: Callable, args: tuple, *, phases=None, text: str = "compiling", options=None):
        if name in self.compiled:
            return self.compiled[name]
        ctx = phases.phase("compile_s", text) if phases is not None else _null()
        with ctx:
            fut = self.pending.get(name)
            if fut is None:
                fut = self.pending[name] = submit_compile(jax.jit(fn).lower(*args), options)
            try:
                compiled, from_disk = wait_future(fut)
            except KeyboardInterrupt:
                raise  # the compile goes on in the background; the next wait picks it up
            except BaseException:
                self.pending.pop(name, None)  # a failed compile is tried again next time
                raise
        self.pending.pop(name, None)
        if phases is not None and from_disk:
            phases.add("compiled_from_disk", 1)
        self.compiled[name] = compiled
        return compiled

    def _init_fn(self, key, traced):
        data, y = _assemble(self.static, traced)
        # a fresh guide: its set-up (the init_loc_fn search) is traced into this one program
        if INIT_KEY in traced:  # warm start: values are data of this program, not constants
            from semimech.infer.fit import warm_init

            guide = self.make_guide(self.model, init_loc_fn=warm_init(traced[INIT_KEY]))
        else:
            guide = self.make_guide(self.model)
        return SVI(self.model, guide, self.optim, OrderedTraceELBO()).init(key, data, y=y)

    def _block_fn(self, state, traced, n):
        data, y = _assemble(self.static, traced)
        svi = self.svi

        def body(i, carry):
            s, buf = carry
            s, loss = svi.stable_update(s, data, y=y)
            return s, buf.at[i].set(jnp.asarray(loss, buf.dtype))

        return jax.lax.fori_loop(0, n, body, (state, jnp.full((self.block_size,), jnp.nan, jnp.float32)))

    def _draw_fn(self, num_samples, key, state, traced):
        data, y = _assemble(self.static, traced)
        params = self.svi.get_params(state)
        k_guide, k_det = jax.random.split(key)
        post = Predictive(self.guide, params=params, num_samples=num_samples, parallel=True)(k_guide, data, y=y)
        post = {k: post[k] for k in self.latent}
        if self.deterministic:  # the model replayed per draw (sequentially: memory stays at one draw)
            post.update(Predictive(self.model, posterior_samples=post, return_sites=list(self.deterministic))(k_det, data))
        return post

    def init(self, key, traced, *, phases=None):
        """The initial SVI state (compiled on first use)."""
        fn = self._get("init", self._init_fn, (key, traced), phases=phases, text="compiling the initialisation",
                       options=INIT_COMPILER_OPTIONS)
        return fn(key, traced)

    def compile_block(self, state, traced, *, phases=None) -> None:
        self._get("block", self._block_fn, (state, traced, np.int32(1)), phases=phases, text="compiling the SVI step",
                  options=STEP_COMPILER_OPTIONS)

    def block(self, state, traced, n: int):
        """``n <= block_size`` steps from ``state``: ``(state, losses)`` (losses padded with NaN)."""
        return self.compiled["block"](state, traced, np.int32(n))

    def draws(self, key, state, traced, num_samples: int, *, phases=None):
        """``num_samples`` draws of every latent and deterministic site (compiled per ``num_samples``)."""
        fn = self._get(f"draws{num_samples}", functools.partial(self._draw_fn, num_samples), (key, state, traced),
                       phases=phases, text=f"compiling the draw of {num_samples} posterior samples",
                       options=DRAWS_COMPILER_OPTIONS)
        return fn(key, state, traced)


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _dynamic_support(prototype_trace) -> bool:
    for site in prototype_trace.values():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        support = site["fn"].support
        bounds = ()
        if isinstance(support, constraints._GreaterThan):
            bounds = (support.lower_bound,)
        elif isinstance(support, constraints._Interval):
            bounds = (support.lower_bound, support.upper_bound)
        if any(isinstance(b, jax.core.Tracer) for b in bounds):
            return True
    return False


def set_up_guide(svi: SVI, init: Callable, *args):
    """Set up ``svi``'s guide by ``init(*args)`` (a call of ``svi.init``): ``(shapes, state)``.

    The set-up is an abstract evaluation with ``args`` abstract (nothing computed or compiled;
    ``state`` is ``None``): the guide's prototype then holds placeholders, which the compiled
    programs never read. Where a site's support depends on values (a bound computed from the
    data), the guide is set up concretely instead, and ``state`` is that eager call's SVI state.
    """
    shapes = jax.eval_shape(init, *args)
    if not _dynamic_support(svi.guide.prototype_trace):
        return shapes, None
    svi.guide.prototype_trace = None  # the next call sets the guide up again, on values
    state = init(*args)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), state), state


def engine(model: Callable, static: dict, traced: dict, *, make_guide: Callable, optim, key) -> tuple[Engine, bool]:
    """The cached engine for ``key`` (``None``: never cached), or a new one; ``(engine, hit)``."""
    cached = _ENGINES.get(key)
    if cached is not None:
        return cached, True
    guide = make_guide(model)
    svi = SVI(model, guide, optim, OrderedTraceELBO())

    def setup(tr):
        data, y = _assemble(static, tr)
        return svi.init(jax.random.PRNGKey(0), data, y=y)

    shapes, _ = set_up_guide(svi, setup, traced)
    latent = tuple(n for n, s in guide.prototype_trace.items() if s["type"] == "sample" and not s["is_observed"])
    det = tuple(n for n, s in guide.prototype_trace.items() if s["type"] == "deterministic")
    eng = Engine(key=key, model=model, static=static, guide=guide, svi=svi, latent=latent, deterministic=det,
                 make_guide=make_guide, optim=optim, state_shapes=shapes)
    _ENGINES.put(key, eng)
    return eng, False


def clear_cache() -> None:
    """Forget every compiled SVI engine of this process (the next fit compiles again)."""
    _ENGINES.clear()


__all__ = ["BLOCK_SIZE", "Engine", "ROW_KEYS", "clear_cache", "engine", "set_up_guide", "split_data"]
_ = handlers  # numpyro handlers are used by the guides' set-up inside SVI.init


# ----------------------------------------------------------------------------------- the loop
@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """Where an interrupted ``fit_svi`` stopped: pass it back as ``resume=`` to continue.

    Attributes
    ----------
    fingerprint
        What the fit was (model, options, guide, optimiser, data, seed); a resume must match it.
    state
        The SVI state (parameters, optimiser moments, random key) after ``done`` steps, on the host.
    losses
        The loss of each of the ``done`` steps.
    done, num_steps
        Steps finished, steps asked for.
    """

    fingerprint: str
    state: Any
    losses: np.ndarray
    done: int
    num_steps: int


def run_blocks(eng: Engine, state, traced, *, num_steps: int, done: int, losses: list, phases, flag,
               target_s: float = 0.5):
    """Run the remaining steps in blocks of about ``target_s`` seconds.

    Returns ``(state, losses, status)``: ``"done"``, ``"interrupted"`` (``flag.set`` by Ctrl-C
    ended the loop early) or ``"no_init"`` (every loss of the first block was NaN/inf: the
    optimiser never left an invalid starting point). ``losses`` is the list of per-block numpy arrays (extended in place).
    """
    import time

    from semimech.infer._compiled import wait

    n = min(eng.block_size, 8)  # a short first block measures the step time
    phases.start_steps(num_steps, done=done)
    first = True
    while done < num_steps and not flag.set:
        n = max(1, min(n, num_steps - done, eng.block_size))
        t = time.perf_counter()
        new_state, buf = eng.block(state, traced, n)
        wait((new_state, buf))
        state = new_state
        host = np.asarray(buf)[:n]
        losses.append(host)
        done += n
        dt = time.perf_counter() - t
        phases.add("steps_s", dt)
        phases.steps_done(n, float(host[-1]))
        if first:
            first = False
            if not np.isfinite(host).any() and done == n:
                phases.end_steps()
                return state, losses, "no_init"
        n = int(n * target_s / max(dt, 1e-4))
    phases.end_steps()
    return state, losses, "interrupted" if flag.set else "done"
