"""Compilation paid once: cache keys, interruptible compiles, an opt-in persistent cache.

- :func:`cache_key` turns a model, its options and the design's structural arrays into a
  hashable key (arrays by content), or ``None`` when something cannot be keyed safely (then
  nothing is reused).
- :func:`submit_compile` compiles a lowered JAX function in a worker thread, and the caller
  waits for it in short sleeps (:func:`wait_future`, :func:`compile_lowered_keyed`), so Ctrl-C
  stops the wait at once (the compile finishes in the background); with a persistent cache
  folder (:func:`cache_dir`) the executable is stored and loaded by the hash of its lowered
  program.
- :func:`wait` blocks on device arrays in the same interruptible way.

Persistent cache (opt-in). Set the environment variable ``SEMIMECH_CACHE_DIR`` to a folder,
or call ``semimech.infer.set_cache_dir(path)``. semimech then serialises the executables of
*its own* compiled functions (SVI init, step block, posterior draws; NUTS only with
``fit_nuts(compiled=True)``: the default NUTS path is NumPyro's own) there, keyed by a
hash of the lowered program, the JAX version and the device. It never touches JAX's global
configuration (``jax_compilation_cache_dir`` would also cache, and change, every other JAX
program of the process); delete the folder to clear it. Where the user has switched JAX's own
persistent cache on and it serves a program, semimech does not store that program (an executable
loaded from JAX's cache does not serialise whole; JAX's cache serves it again).

The fast key of ``fit_nuts(compiled=True)``, known before tracing, is :mod:`semimech.infer._fastkey`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import os
import pickle
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np

_UNKEYABLE = object()
_CACHE_DIR: Path | None = None
_CACHE_DIR_SET = False
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="semimech-compile")


# ------------------------------------------------------------------------------------- keys
def freeze(value):
    """A hashable, content-based stand-in for ``value``; ``_UNKEYABLE`` if there is none."""
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        a = np.asarray(value)
        if a.dtype == object:
            return _UNKEYABLE
        return ("array", a.shape, str(a.dtype), hashlib.blake2b(np.ascontiguousarray(a).tobytes(),
                                                                  digest_size=16).hexdigest())
    if isinstance(value, dict):
        items = tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
        return _UNKEYABLE if any(v is _UNKEYABLE for _, v in items) else ("dict", items)
    if isinstance(value, (list, tuple)):
        items = tuple(freeze(v) for v in value)
        return _UNKEYABLE if any(v is _UNKEYABLE for v in items) else (type(value).__name__, items)
    if isinstance(value, functools.partial):
        parts = (freeze(value.func), freeze(value.args), freeze(value.keywords))
        return _UNKEYABLE if _UNKEYABLE in parts else ("partial",) + parts
    if value is None or isinstance(value, (bool, int, float, str, complex)):
        return (type(value).__name__, value)
    if callable(value) and hasattr(value, "__qualname__"):
        return ("callable", value)  # module-level functions hash by identity and stay alive in the key
    return _UNKEYABLE


def cache_key(*parts):
    """A key for the compiled-function cache, or ``None`` when some part cannot be keyed."""
    frozen = freeze(tuple(parts))
    return None if frozen is _UNKEYABLE else frozen


def signature(tree) -> tuple:
    """Structure, shapes and dtypes of a pytree of arrays (what a compiled function depends on)."""
    leaves, treedef = jax.tree.flatten(tree)
    return (str(treedef), tuple((tuple(np.shape(x)), str(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype))
                                for x in leaves))


_KEPT: list = []  # every Recent of the process (release_compiled)


class Recent:
    """The last ``size`` objects kept in this process by cache key, most recently used last (a ``None``
    key, see :func:`cache_key`, is never kept): fit_svi's engines, fit_nuts(compiled=True)'s programs."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        _KEPT.append(self)

    def get(self, key):
        """The object kept for ``key`` (now the most recent), or ``None``."""
        if key is None or key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key, value) -> None:
        if key is None:
            return
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def release_compiled() -> None:
    """Drop the compiled programs semimech keeps in this process for later fits of the same shapes.

    ``fit_svi`` keeps its last 8 compiled engines (init, steps and draws of a model, its options and the data's
    shapes) and ``fit_nuts(compiled=True)`` its last 4 programs, so that a second fit pays no compilation. Each
    engine holds about 100 MB and ~1,800 of the process's memory mappings (measured on small additive-model fits;
    Linux's limit is ``vm.max_map_count``, 65,530 by default, beyond which LLVM aborts the process). A long process
    that fits many different models or shapes can call this between them; the next fit compiles again. JAX's own
    caches (e.g. NumPyro's programs of ``fit_nuts(compiled=False)`` with vectorised chains, ~500 mappings per fit)
    are the user's to clear: ``jax.clear_caches()``.
    """
    for kept in _KEPT:
        kept.clear()


def mapping_count() -> int | None:
    """The memory mappings this process holds (Linux: the lines of ``/proc/self/maps``), or ``None`` elsewhere."""
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def mapped_code_check(*, share: float = 0.7) -> None:
    """Warn (:class:`~semimech.errors.CompiledCodeWarning`) when this process holds more than ``share`` of the
    kernel's memory-mapping limit (Linux: ``/proc/sys/vm/max_map_count``; nothing elsewhere). Compiled programs
    map their kernels one by one, and past the limit LLVM aborts the whole process in its next compile, without a
    Python error; called at the end of every fit, this says so while there is time to act. Once per crossing."""
    global _WARNED_MAPS
    n = mapping_count()
    if n is None:
        return
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if n <= share * limit:
        _WARNED_MAPS = False
        return
    if not _WARNED_MAPS:
        import warnings

        from semimech.errors import CompiledCodeWarning

        _WARNED_MAPS = True
        warnings.warn(
            f"this process holds {n:,} memory mappings, most of them compiled programs, and the kernel allows "
            f"{limit:,} (vm.max_map_count); past it the next compile aborts the process. Free compiled code "
            "between fits of new shapes: semimech.infer.release_compiled() (semimech's kept programs) and "
            "jax.clear_caches() (JAX's, e.g. NumPyro's sampler of each fit_nuts call), or restart the process.",
            CompiledCodeWarning, stacklevel=3)


_WARNED_MAPS = False


# --------------------------------------------------------------------------- persistent cache
def set_cache_dir(path) -> None:
    """Store semimech's compiled programs in ``path`` (``None`` switches the cache off).

    Overrides ``SEMIMECH_CACHE_DIR``. Only semimech's own compiled functions are stored; JAX's
    global configuration is left alone.
    """
    global _CACHE_DIR, _CACHE_DIR_SET
    _CACHE_DIR = None if path is None else Path(path).expanduser()
    _CACHE_DIR_SET = True


def cache_dir() -> Path | None:
    """The persistent cache folder in use, or ``None`` (the default: no persistent cache)."""
    if _CACHE_DIR_SET:
        return _CACHE_DIR
    env = os.environ.get("SEMIMECH_CACHE_DIR")
    return Path(env).expanduser() if env else None


def _disk_key(lowered, options=None) -> str:
    dev = jax.devices()[0]
    h = hashlib.sha256()
    for part in (jax.__version__, getattr(jax.lib, "__version__", ""), dev.platform, dev.device_kind,
                 sorted((options or {}).items()), lowered.as_text()):
        h.update(str(part).encode())
    return h.hexdigest()


def _load(folder: Path, key: str, lowered):
    from jax.experimental.serialize_executable import deserialize_and_load

    path = folder / f"{key}.bin"
    if not path.exists():
        return None
    try:
        payload = pickle.loads(path.read_bytes())
        return deserialize_and_load(payload, lowered.in_tree, lowered.out_tree)
    except Exception:  # a damaged or incompatible entry is a cache miss, never an error
        return None


def _store(folder: Path, key: str, compiled) -> None:
    from jax.experimental.serialize_executable import serialize

    try:
        payload, _, _ = serialize(compiled)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(pickle.dumps(payload))
        os.replace(tmp, folder / f"{key}.bin")  # atomic: a reader never sees half a file
    except Exception:
        pass  # an unwritable cache only costs the next process a compile


# --------------------------------------------------------------------------------- waiting
def wait_future(fut: concurrent.futures.Future):
    """The future's result, waiting in short sleeps so that Ctrl-C interrupts the wait."""
    while True:
        try:
            return fut.result(timeout=0.1)
        except concurrent.futures.TimeoutError:
            continue


def wait(tree):
    """Block until every array of ``tree`` is computed, interruptibly; returns ``tree``."""
    leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    delay = 0.001
    while not all(x.is_ready() for x in leaves):
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return tree


def compile_lowered_keyed(lowered, *, compiler_options: dict | None = None):
    """Compile (or load from the persistent cache) a ``jax.stages.Lowered``; interruptible.

    Returns ``(compiled, loaded_from_disk, disk key or None)``.
    """
    key = _disk_key(lowered, compiler_options) if cache_dir() is not None else None
    return (*wait_future(_submit(lowered, compiler_options, key)), key)


def submit_compile(lowered, compiler_options: dict | None = None, *, after=None) -> concurrent.futures.Future:
    """Start compiling (or loading from the persistent cache) a ``jax.stages.Lowered`` in a worker thread.

    Returns a future of ``(compiled, loaded_from_disk)`` (wait with :func:`wait_future`): the caller can
    lower the next program, or run one already compiled, while this one compiles. ``after``: a future to
    let finish first (its outcome is not looked at), so that on a small machine two programs are compiled
    one after the other instead of taking cores from a third one the fit needs first. The future's
    ``disk_key`` is the program's key in the persistent cache (``None`` without one), as
    :func:`compile_lowered_keyed` returns it.
    """
    key = _disk_key(lowered, compiler_options) if cache_dir() is not None else None  # in the caller's thread
    fut = _submit(lowered, compiler_options, key, after=after)
    fut.disk_key = key
    return fut


def _submit(lowered, options: dict | None, key: str | None, *, after=None) -> concurrent.futures.Future:
    folder = cache_dir()

    def work():
        if after is not None:
            concurrent.futures.wait([after])
        hit = _load(folder, key, lowered) if key is not None else None
        if hit is not None:
            return hit, True
        if key is None:
            return _compile(lowered, options), False
        hits = _jax_cache_hits()
        compiled = _compile(lowered, options)
        if _jax_cache_hits() == hits:  # compiled here, not loaded from JAX's own cache: it serialises whole
            _store(folder, key, compiled)
        return compiled, False

    return _POOL.submit(work)


_HITS = threading.local()  # JAX persistent-cache hits of the compiles run in this thread
_LISTENING = False
_LISTEN_LOCK = threading.Lock()


def _jax_cache_hits() -> int:
    """Hits of JAX's *own* persistent cache (a user's ``jax_compilation_cache_dir``) in this thread so far.

    An executable JAX loaded from its cache serialises without its kernels: semimech stored such a program, and
    the next fit loading it failed ("Function add_convert_fusion not found"). A program JAX's cache served is not
    stored in semimech's (JAX's cache serves it to the next process anyway)."""
    global _LISTENING
    with _LISTEN_LOCK:
        if not _LISTENING:
            jax.monitoring.register_event_listener(_count_jax_cache_hit)
            _LISTENING = True
    return getattr(_HITS, "n", 0)


def _count_jax_cache_hit(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _HITS.n = getattr(_HITS, "n", 0) + 1


def _compile(lowered, options: dict | None):
    """``lowered.compile(options)``; options this jaxlib's XLA does not know are dropped (a compile-speed
    setting must never break a fit): the program is then compiled with XLA's defaults."""
    if not options:
        return lowered.compile()
    try:
        return lowered.compile(options)
    except Exception as err:
        if "no such compile option" not in str(err).lower():
            raise
        return lowered.compile()


__all__ = ["cache_dir", "cache_key", "compile_lowered_keyed", "freeze", "set_cache_dir", "signature", "submit_compile",
           "wait", "wait_future"]
