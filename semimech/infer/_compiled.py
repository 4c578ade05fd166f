"""Compilation paid once: cache keys, interruptible compiles, an opt-in persistent cache.

- :func:`cache_key` turns a model, its options and the design's structural arrays into a
  hashable key (arrays by content), or ``None`` when something cannot be keyed safely (then
  nothing is reused).
- :func:`compile_lowered` compiles a lowered JAX function in a worker thread while the caller
  waits in short sleeps, so Ctrl-C stops the wait at once (the compile finishes in the
  background); with a persistent cache folder (:func:`cache_dir`) the executable is stored
  and loaded by the hash of its lowered program.
- :func:`wait` blocks on device arrays in the same interruptible way.

Persistent cache (opt-in). Set the environment variable ``SEMIMECH_CACHE_DIR`` to a folder,
or call ``semimech.infer.set_cache_dir(path)``. semimech then serialises the executables of
*its own* compiled functions (SVI init, step block, posterior draws; NUTS only with
``fit_nuts(compiled=True)``: the default NUTS path is NumPyro's own) there, keyed by a
hash of the lowered program, the JAX version and the device. It never touches JAX's global
configuration (``jax_compilation_cache_dir`` would also cache, and change, every other JAX
program of the process); delete the folder to clear it.

Two keys. Every executable is stored as ``<hash of the lowered program>.bin`` (the lowered text,
the JAX/jaxlib version, the device, the compile options): finding it needs the program traced and
lowered. ``fit_nuts(compiled=True)`` also writes a small index ``<fast key>.fast`` pointing at that
file, the fast key (:func:`program_key`) computed from what is known BEFORE tracing: its
in-process key (model, options, NUTS settings, warm start, chain and draw counts, the design's
structure by content, the traced data's shapes and dtypes, the rng key's), plus what could change
the program without changing those: a hash of the installed semimech source (the ``semimech`` and
``semimech.models`` packages' .py files, once per process), the source file of every module
outside the Python installation and its site-packages that is loaded when the key is made (the
user's script and modules: the model function's and whatever it calls), the jax, jaxlib, numpyro
and numpy versions, the device platform, kind and count, ``XLA_FLAGS``, JAX's configuration values,
NumPyro's validation default and the compile options. A returning user's fit then loads the
executable without tracing or lowering (measured: 0.6 s of a 1.6 s fit call, ``RESULTS_speed.md``
session 14). A model function without a source file (defined in a notebook or ``python -c``), a
lambda or a local function, or anything :func:`cache_key` cannot key, gets no fast key (the
lowered-program key still applies). A missing, damaged or incompatible index or executable is a
miss: the program is traced, lowered and compiled (or loaded by its lowered hash) as before.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import os
import pickle
import re
import sys
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
_LOCK = threading.Lock()


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


class Recent:
    """The last ``size`` objects kept in this process by cache key, most recently used last (a ``None``
    key, see :func:`cache_key`, is never kept): fit_svi's engines, fit_nuts(compiled=True)'s programs."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()

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


# ----------------------------------------------------------------- the fast key (no lowering)
_SOURCE_HASH: str | None = None
_FILE_HASHES: dict = {}  # path -> ((mtime_ns, size), sha256 hex)


def _file_hash(path) -> str | None:
    """sha256 of a file's bytes (cached by modification time and size), ``None`` if unreadable."""
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        hit = _FILE_HASHES.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
    _FILE_HASHES[path] = (stamp, digest)
    return digest


def _package_dirs() -> list[Path]:
    import importlib.util

    dirs = [Path(__file__).resolve().parent.parent]  # the semimech package
    spec = importlib.util.find_spec("semimech.models")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        dirs.append(Path(loc).resolve())
    return dirs


def source_hash() -> str:
    """A hash of the installed semimech source (``semimech`` and ``semimech.models``), once per process."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        h = hashlib.sha256()
        for d in _package_dirs():
            for f in sorted(d.rglob("*.py")):
                h.update(str(f.relative_to(d)).encode())
                h.update(f.read_bytes())
        _SOURCE_HASH = h.hexdigest()
    return _SOURCE_HASH


@functools.lru_cache(maxsize=1)
def _installation_roots() -> tuple:
    import site
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sysconfig.get_paths().get("stdlib", ""),
             *site.getsitepackages(), site.getusersitepackages()}
    return tuple(sorted({os.path.realpath(r) for r in roots if r}))


@functools.lru_cache(maxsize=None)
def _outside_installation(path: str) -> bool:
    path = os.path.realpath(path)
    return not any(path == r or path.startswith(r + os.sep) for r in _installation_roots())


def _user_sources() -> tuple | None:
    """(file, sha256) of every loaded module outside the Python installation and its site-packages
    (the user's script and modules; semimech's own are in :func:`source_hash`); ``None`` if one is unreadable."""
    skip = {str(d) for d in _package_dirs()}
    out = []
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not f or not f.endswith(".py") or not _outside_installation(f):
            continue
        real = os.path.realpath(f)
        if any(real.startswith(d + os.sep) for d in skip):
            continue
        digest = _file_hash(real)
        if digest is None:
            return None
        out.append((real, digest))
    return tuple(sorted(set(out)))


def _stable(frozen) -> str | None:
    """A text for a :func:`freeze` result that is the same in every process, ``None`` if there is none
    (a lambda, a local function, a callable whose module has no source file)."""
    if isinstance(frozen, tuple) and len(frozen) == 2 and frozen[0] == "callable":
        fn = frozen[1]
        qual, mod = getattr(fn, "__qualname__", ""), getattr(fn, "__module__", None)
        module = sys.modules.get(mod) if mod else None
        f = getattr(module, "__file__", None)
        code = getattr(fn, "__code__", None)
        if "<" in qual or not f or (code is not None and os.path.realpath(code.co_filename) != os.path.realpath(f)):
            return None  # a lambda, a local function, a notebook cell's function (its own file, not its module's)
        digest = _file_hash(os.path.realpath(f))
        return None if digest is None else f"callable:{mod}:{qual}:{digest}"
    if isinstance(frozen, tuple):
        parts = [_stable(x) for x in frozen]
        return None if any(p is None for p in parts) else "(" + ",".join(parts) + ")"
    if isinstance(frozen, float):
        return "f" + frozen.hex()
    return type(frozen).__name__ + ":" + repr(frozen)


def program_key(key, args, compiler_options=None) -> str | None:
    """The fast disk key of a program: its in-process ``key`` (from :func:`cache_key`) made stable
    across processes, the signature of its ``args``, and everything that could change the program
    without changing those (module docstring); ``None`` when there is none (no fast path then)."""
    if key is None:
        return None
    try:
        import numpyro
        import numpyro.distributions as dist

        stable = _stable(key)
        users = _user_sources()
        if stable is None or users is None:
            return None
        # the versions of the loaded top-level packages (a model may call into any of them)
        versions = sorted((name, str(getattr(m, "__version__", ""))) for name, m in list(sys.modules.items())
                          if "." not in name and m is not None)
        dev = jax.devices()[0]
        config = sorted((k, repr(v)) for k, v in jax.config.values.items())
        parts = ("semimech-fast-1", stable, signature(args), source_hash(), users, jax.__version__,
                 getattr(jax.lib, "__version__", ""), getattr(jax.lib, "xla_extension_version", ""),
                 numpyro.__version__, np.__version__, versions, dev.platform, dev.device_kind, jax.device_count(),
                 os.environ.get("XLA_FLAGS", ""), config, getattr(dist.Distribution, "_validate_args", None),
                 sorted((compiler_options or {}).items()))
        return hashlib.sha256(repr(parts).encode()).hexdigest()
    except Exception:
        return None


# Lowering has side effects that running a program can need: on a CPU, lowering a linear solve initialises
# jaxlib's LAPACK kernels (a deserialised program calling an uninitialised kernel crashes the process,
# measured). The fast path skips lowering, so an entry records its program's custom-call targets and is
# used only when each is one whose initialisation is known and done here: LAPACK's (any other target, e.g.
# a host callback or a GPU solver, makes the entry a miss).
_CUSTOM_CALL = re.compile(r'custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*"([^"]+)"')
_FAST_TARGETS = re.compile(r"lapack_\w+_ffi")


def _custom_calls(text: str) -> list[str]:
    return sorted({a or b for a, b in _CUSTOM_CALL.findall(text)})


def _prepare_targets(targets) -> bool:
    """Initialise what ``targets`` need at run time; False if one of them is not known to be safe."""
    if not all(_FAST_TARGETS.fullmatch(t) for t in targets):
        return False
    if targets:
        from jax._src.lax import linalg

        linalg.initialize_lapack()
    return True


def load_fast(key: str | None, args):
    """The executable stored under the fast ``key`` (see :func:`store_fast`), or ``None`` (a miss, or
    anything wrong with the entry: then the caller traces and lowers as without it)."""
    folder = cache_dir()
    if folder is None or key is None:
        return None
    from jax.experimental.serialize_executable import deserialize_and_load

    path = folder / f"{key}.fast"
    try:
        if not path.exists():
            return None
        index = pickle.loads(path.read_bytes())
        in_tree = jax.tree.structure((tuple(args), {}))
        if index.get("format") != 1 or index["in_tree"] != str(in_tree) or not _prepare_targets(index["targets"]):
            return None
        payload = pickle.loads((folder / f"{index['exec']}.bin").read_bytes())
        out_tree = pickle.loads(index["out_tree"])
        return deserialize_and_load(payload, in_tree, out_tree)
    except Exception:
        return None


def store_fast(key: str | None, lowered, exec_key: str | None, args) -> None:
    """Point the fast ``key`` at the executable stored as ``exec_key`` (its lowered-program key), with
    the output structure ``deserialize_and_load`` needs; skipped when anything does not round-trip."""
    folder = cache_dir()
    if folder is None or key is None or exec_key is None or not (folder / f"{exec_key}.bin").exists():
        return
    try:
        in_tree = jax.tree.structure((tuple(args), {}))
        if in_tree != lowered.in_tree:
            return
        out_tree = pickle.dumps(lowered.out_tree)
        if pickle.loads(out_tree) != lowered.out_tree:
            return
        targets = _custom_calls(lowered.as_text())
        if not all(_FAST_TARGETS.fullmatch(t) for t in targets):
            return
        index = {"format": 1, "exec": exec_key, "in_tree": str(in_tree), "out_tree": out_tree, "targets": targets}
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(pickle.dumps(index))
        os.replace(tmp, folder / f"{key}.fast")  # atomic, as _store
    except Exception:
        pass


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


def compile_lowered(lowered, *, compiler_options: dict | None = None):
    """Compile (or load from the persistent cache) a ``jax.stages.Lowered``; interruptible.

    Returns ``(compiled, loaded_from_disk)``.
    """
    return compile_all([(lowered, compiler_options)])[0]


def compile_lowered_keyed(lowered, *, compiler_options: dict | None = None):
    """As :func:`compile_lowered`, returning ``(compiled, loaded_from_disk, disk key or None)``."""
    return _compile_all([(lowered, compiler_options)])[0]


def compile_all(items) -> list:
    """Compile several ``(lowered, compiler_options)`` at once, each in its own thread.

    XLA compiles one program on one core; programs compiled side by side use the others. The
    wait is interruptible (Ctrl-C), and the persistent cache (if any) is read and written.
    Returns ``[(compiled, loaded_from_disk), ...]`` in order.
    """
    return [(c, hit) for c, hit, _ in _compile_all(items)]


def submit_compile(lowered, compiler_options: dict | None = None, *, after=None) -> concurrent.futures.Future:
    """Start compiling (or loading from the persistent cache) a ``jax.stages.Lowered`` in a worker thread.

    Returns a future of ``(compiled, loaded_from_disk)`` (wait with :func:`wait_future`): the caller can
    lower the next program, or run one already compiled, while this one compiles. ``after``: a future to
    let finish first (its outcome is not looked at), so that on a small machine two programs are compiled
    one after the other instead of taking cores from a third one the fit needs first.
    """
    folder = cache_dir()
    key = _disk_key(lowered, compiler_options) if folder is not None else None  # in the caller's thread

    def work():
        if after is not None:
            concurrent.futures.wait([after])
        hit = _load(folder, key, lowered) if key is not None else None
        if hit is not None:
            return hit, True
        compiled = _compile(lowered, compiler_options)
        if key is not None:
            _store(folder, key, compiled)
        return compiled, False

    return _POOL.submit(work)


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


def _compile_all(items) -> list:
    folder = cache_dir()
    out, futures = [], []
    for lowered, options in items:
        key = _disk_key(lowered, options) if folder is not None else None
        hit = _load(folder, key, lowered) if key is not None else None
        out.append([hit, hit is not None, key])
        futures.append(None if hit is not None else _POOL.submit(_compile, lowered, options))
    for slot, fut in zip(out, futures):
        if fut is None:
            continue
        slot[0] = wait_future(fut)
        if slot[2] is not None:
            _store(folder, slot[2], slot[0])
    return [tuple(slot) for slot in out]


__all__ = ["cache_dir", "cache_key", "compile_all", "compile_lowered", "compile_lowered_keyed", "freeze", "load_fast",
           "program_key", "set_cache_dir", "signature", "source_hash", "store_fast", "submit_compile", "wait",
           "wait_future"]
