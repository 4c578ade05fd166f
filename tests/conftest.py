"""Shared fixtures: small real and synthetic designs, one cached short fit per session.

Tests that need the third-party data of ``../shared/data`` (users of the repository do not have
it) use the ``shared_data`` fixture (the data folder, or a skip) or the ``needs_shared`` marker;
never ``shared_data_dir()`` directly. Either way they skip with :data:`SHARED_SKIP_REASON` when
the folder is unreachable (``SEMIMECH_NO_SHARED_DATA=1`` simulates that; ``.ci/run`` runs the
suite once this way), and ``pytest -m needs_shared`` selects exactly them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED_SKIP_REASON = ("needs the shared third-party data (../shared/data or $SEMIMECH_SHARED_DATA); "
                      "users of the repository do not have it")


def _shared_data_or_skip() -> Path:
    from semimech.datasets import DatasetNotFoundError, shared_data_dir

    try:
        return shared_data_dir()
    except DatasetNotFoundError:
        pytest.skip(SHARED_SKIP_REASON)


#: The test processes share one JAX persistent compilation cache, a temporary folder made for the run and removed
#: after it: the suite is compile-bound (small problems, ~10 s of XLA compile per fit on 2 cores), and the xdist
#: workers and the tests that clear semimech's kept programs compile many of the same programs. The default run
#: (670 tests, 2 cores, one after the other on the same machine) took 21:22 without it and 17:54 with it (with the
#: two trimmed tests of that commit; 2,524 -> 2,112 test-seconds). It is the test processes' JAX setting, never
#: semimech's (which leaves JAX's configuration to the user): ``SEMIMECH_TEST_JAX_CACHE=0`` runs without it.
_JAX_CACHE_ENV = "SEMIMECH_TEST_JAX_CACHE_DIR"
_JAX_CACHE_MADE = pytest.StashKey[str]()  # the folder, in the process that made it (and removes it)


def _share_jax_compilation_cache(config) -> None:
    import tempfile

    if os.environ.get("SEMIMECH_TEST_JAX_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # switched off, or the caller's own cache
    folder = os.environ.get(_JAX_CACHE_ENV)
    if folder is None:  # the first process (xdist's controller, or the only one): the workers inherit it
        folder = tempfile.mkdtemp(prefix="semimech-test-jax-cache-")
        os.environ[_JAX_CACHE_ENV] = folder
        config.stash[_JAX_CACHE_MADE] = folder
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)


#: The test processes compile with XLA's backend optimisation level 0 (and LLVM's expensive passes off): the suite is
#: compile-bound (a short fit of a small model is ~8 s of XLA compile per program on 2 cores and runs its steps in
#: milliseconds), the programs are the same programs (the level changes how LLVM optimises the machine code, not
#: what is computed), and semimech already compiles its init and draw programs at levels 0 and 1 (``_svi``). Three
#: of the heaviest test files (50 tests, 2 workers, same machine, one after the other): 302 s at the default level,
#: 246 s with this (the default run: 18:33 -> 14:40). Runs that select the slow tests (long fits, whose steps
#: a lower level may slow down, and the notebooks) keep XLA's defaults. A test process's setting, never semimech's:
#: ``SEMIMECH_TEST_XLA_FAST=0`` runs without it, and an ``XLA_FLAGS`` that sets the level already is left alone.
_FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _fast_xla_compiles(config) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    marks = config.getoption("markexpr", "") or ""
    if "slow" in marks.replace("not slow", ""):  # `-m slow`, `-m "slow or ..."`: long fits, notebooks
        return
    if os.environ.get("SEMIMECH_TEST_XLA_FAST", "1") == "0" or "xla_backend_optimization_level" in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} {_FAST_XLA_FLAGS}".strip()  # read when JAX's backend starts: before any test


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_shared: needs the shared third-party data; skips without it")
    _fast_xla_compiles(config)
    _share_jax_compilation_cache(config)


def pytest_unconfigure(config):
    folder = config.stash.get(_JAX_CACHE_MADE, None)
    if folder is not None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    # a test that asks for the `shared_data` fixture is a needs_shared test too (for `-m needs_shared`)
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("needs_shared") is None:
            item.add_marker(pytest.mark.needs_shared)


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_shared") is not None:
        _shared_data_or_skip()


#: Memory mappings of the test process past which a module's end drops the compiled programs kept by semimech and
#: JAX. Each compiled program maps its kernels separately (an SVI engine ~1,800 mappings, NumPyro's programs of a
#: NUTS fit some hundreds): one process running the slow suite reached 61,713, and past the kernel's vm.max_map_count
#: (65,530) LLVM aborts the process ("Fatal Python error: Aborted" in a compile, seen in the time-course tests late in
#: `pytest -m slow`); with this, its peak was 45,863.
MAX_TEST_MAPS = 30_000


@pytest.fixture(autouse=True, scope="module")
def _bounded_compiled_code():
    yield
    from semimech.infer._compiled import mapping_count

    if (mapping_count() or 0) > MAX_TEST_MAPS:  # None: not Linux, no such limit to watch
        import gc

        import jax

        from semimech.infer import release_compiled

        release_compiled()
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of the shared third-party datasets; skips the test when it is unreachable."""
    return _shared_data_or_skip()


@pytest.fixture(scope="module")
def benchmark_module():
    """``benchmark_module(name)``: a script of ``benchmarks/`` imported as a module, with the folder on
    ``sys.path`` for the test module's duration only (its names, e.g. ``guides``, would shadow others)."""
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(bench)


@pytest.fixture(scope="session")
def norman():
    from semimech.datasets import norman19_devel

    return norman19_devel()


@pytest.fixture(scope="session")
def norman_design(norman):
    import semimech as sm

    return sm.Design.from_anndata(norman, perturbation_key="perturbation", control="control")


@pytest.fixture(scope="session")
def small_counts_adata():
    """60 cells x 8 genes of NB counts: control, A, B, A+B in two batches."""
    import anndata as ad

    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "A+B"], 15)
    batch = np.tile(["b1", "b2"], 30)
    mu = np.full((60, 8), 5.0)
    mu[labels == "A", :2] *= 3
    mu[labels == "B", 2:4] *= 0.3
    mu[labels == "A+B", :2] *= 3
    mu[labels == "A+B", 2:4] *= 0.3
    X = rng.negative_binomial(10, 10 / (10 + mu)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels, "batch": batch}, index=[f"c{i}" for i in range(60)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(8)]))


@pytest.fixture(scope="session")
def norman_fit(norman_design):
    """A short SVI fit of the additive model on the Norman pseudobulk (shared by several tests)."""
    import semimech as sm
    from semimech.models import additive

    return sm.fit_svi(additive.SPEC, norman_design.pseudobulk(), rng_key=0, num_steps=300, num_samples=100,
                      progress_bar=False)


def additive_cells(*, seed=0, n_targets=5, n_genes=6, cells=8, noise=0.4, pairs_every=2):
    """Cells from the additive model without interaction: control, every single, every other double."""
    import itertools

    import semimech as sm

    rng = np.random.default_rng(seed)
    targets = [f"T{i}" for i in range(n_targets)]
    eff = rng.normal(0, 1.0, (n_targets, n_genes)) * (rng.random((n_targets, n_genes)) < 0.7)
    pairs = list(itertools.combinations(range(n_targets), 2))[::pairs_every]
    labels = ["control"] + targets + [f"{targets[a]}+{targets[b]}" for a, b in pairs]
    blocks, lab = [], []
    for p in labels:
        parts = [] if p == "control" else [targets.index(t) for t in p.split("+")]
        blocks.append(2.0 + eff[parts].sum(0) + noise * rng.normal(size=(cells, n_genes)))
        lab += [p] * cells
    y = np.vstack(blocks)
    genes = [f"g{i}" for i in range(n_genes)]
    frame = pd.DataFrame(y, columns=genes, index=[f"c{i}" for i in range(len(y))]).assign(p=lab)
    return sm.Design.from_frame(frame, readouts=genes, perturbation_key="p", control="control")


@pytest.fixture(scope="session")
def simulate_additive():
    """:func:`additive_cells` (a function: pass seed, n_targets, ...)."""
    return additive_cells


@pytest.fixture(scope="session")
def additive_screen():
    """Cells of :func:`additive_cells` (5 targets, 6 genes, 8 cells per condition, 5 doubles)."""
    return additive_cells()


def fresh_pair_terms(fit, tau, *, seed=0):
    """Reference draws of an unseen pair's standardised interaction ``local * z`` given ``tau``.

    ``tau`` (draws, genes): the pair's scale in units of the gene's control scale
    (``interaction_scale * interaction_sd``). Prior draws of the additive model's pair term
    divided by ``tau * unit``: a regularised-horseshoe local scale times a standard normal
    (``interactions="horseshoe"``, the default), a standard normal with ``"normal"``.
    """
    import numpy as np

    from semimech.models._treatments import local_scale

    rng = np.random.default_rng(seed)
    z = rng.normal(size=tau.shape)
    if fit.options.get("interactions", "horseshoe") == "normal":
        return z
    return np.asarray(local_scale(rng.normal(size=tau.shape), tau, slab=fit.options.get("interaction_slab", 2.0))) * z


@pytest.fixture
def pair_terms():
    """:func:`fresh_pair_terms` (a function: pass fit, tau)."""
    return fresh_pair_terms


@pytest.fixture
def jax_cache():
    """JAX's own persistent cache (the test processes share one, conftest.py) for one test: ``jax_cache(True)``
    switches it on (a folder of its own if none is set; every program stored), ``jax_cache(False)`` off, so that the
    tests of semimech's cache see only the programs they compile. Restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {n: getattr(jax.config, n) for n in names}

    def switch(on: bool, folder=None):
        jax.config.update("jax_enable_compilation_cache", on)
        if on:
            if jax.config.jax_compilation_cache_dir is None:
                jax.config.update("jax_compilation_cache_dir", str(folder))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        cc.reset_cache()  # JAX decides once per process whether its cache is used

    yield switch
    for n, v in before.items():
        jax.config.update(n, v)
    cc.reset_cache()


@contextlib.contextmanager
def _compile_events():
    import jax

    events = []

    def listen(event, secs, **kw):
        if "backend_compile" in event:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@pytest.fixture
def compile_events():
    """``with compile_events() as events:``: the XLA backend compiles inside the block, a list filled as they
    happen (a test that something is reused counts them)."""
    return _compile_events
