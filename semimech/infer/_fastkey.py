"""The fast key of the persistent cache: finding a compiled program without tracing or lowering it.

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
lambda or a local function, or anything :func:`~semimech.infer._compiled.cache_key` cannot key,
gets no fast key (the lowered-program key still applies). A missing, damaged or incompatible index
or executable is a miss: the program is traced, lowered and compiled (or loaded by its lowered
hash) as before.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from semimech.infer._compiled import cache_dir, signature

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


__all__ = ["load_fast", "program_key", "source_hash", "store_fast"]
