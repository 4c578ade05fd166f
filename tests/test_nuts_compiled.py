"""fit_nuts(compiled=True): NumPyro's NUTS as two programs compiled by semimech (an initialisation and a block of
iterations), run block by block."""

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import semimech as sm
from semimech.errors import InferenceError


def _normal_spec():
    def tiny(data, y=None, **_):
        with numpyro.plate("genes", data["n_genes"], dim=-1):
            m = numpyro.sample("m", dist.Normal(0.0, 1.0))
            s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("cells", data["n_obs"], dim=-2), numpyro.plate("genes", data["n_genes"], dim=-1):
            numpyro.sample("y", dist.Normal(m, s), obs=y)

    return sm.ModelSpec(name="tiny_normal", model=tiny, assumes="one mean and scale per gene")


@pytest.fixture(scope="module")
def design():
    from semimech.simulate import simulate_screen

    ad, _ = simulate_screen(n_cells=60, n_genes=3, n_targets=2, rng_key=0, likelihood="normal")
    return sm.Design.from_anndata(ad, perturbation_key="perturbation", control="control")


def test_compiled_bad_settings_fail_before_anything_is_compiled(design):
    kw = dict(rng_key=0, num_warmup=5, num_samples=5, num_chains=2, progress_bar=False)
    with pytest.raises(InferenceError, match="compiled must be True, False or None"):
        sm.fit_nuts(_normal_spec(), design, compiled="yes", **kw)
    with pytest.raises(InferenceError, match="chain_method='parallel'.*needs compiled=False"):
        sm.fit_nuts(_normal_spec(), design, compiled=True, chain_method="parallel", **kw)


@pytest.mark.slow
@pytest.mark.parametrize("chain_method", ["sequential", "vectorized"])
def test_compiled_posterior_agrees_with_the_default_path(design, chain_method, tmp_path, jax_cache):
    """Same sampler as NumPyro's MCMC.run, compiled differently: the same posterior within Monte Carlo error (the
    same draws for vectorised chains, other rounding for sequential ones); the same fields; and with a persistent
    cache a second fit loads the two stored programs and repeats the draws."""
    from semimech.infer import set_cache_dir
    from semimech.infer._compiled import cache_dir

    spec = _normal_spec()
    kw = dict(rng_key=3, num_warmup=300, num_samples=400, num_chains=2, progress_bar=False, chain_method=chain_method)
    eager = sm.fit_nuts(spec, design, compiled=False, **kw)  # NumPyro's MCMC.run
    jax_cache(False)  # a program JAX's own cache serves is not stored by semimech (it would not serialise whole)
    before = cache_dir()
    set_cache_dir(tmp_path)
    try:
        one = sm.fit_nuts(spec, design, compiled=True, **kw)
        assert len(list(tmp_path.glob("*.bin"))) == 2  # the initialisation and the block
        again = sm.fit_nuts(spec, design, compiled=True, **kw)
    finally:
        set_cache_dir(before)
    for site in ("m", "s"):
        np.testing.assert_array_equal(one.samples[site], again.samples[site])
        assert one.samples[site].shape == eager.samples[site].shape == (2, 400, design.n_genes)
        a, b = eager.flat(site), one.flat(site)
        ess_a = sm.diagnostics(eager)["min_ess_bulk"]
        ess_b = sm.diagnostics(one)["min_ess_bulk"]
        se = np.sqrt(a.var(0) / ess_a + b.var(0) / ess_b)
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se), (site, a.mean(0), b.mean(0), se)
    assert set(one.sample_stats) == set(eager.sample_stats)
    assert sm.diagnostics(one)["max_rhat"] < 1.05 and sm.diagnostics(one)["divergences"] == 0


@pytest.mark.slow
def test_compiled_fit_where_the_density_cannot_be_evaluated_fails_clearly(design):
    def broken(data, y=None, **_):
        m = numpyro.sample("m", dist.Normal(0.0, 1.0).expand([data["n_genes"]]).to_event(1))
        numpyro.factor("nan", m.sum() * np.nan)

    spec = sm.ModelSpec(name="broken", model=broken, assumes="nothing")
    with pytest.raises(InferenceError, match="NaN/inf at every initial point"):
        sm.fit_nuts(spec, design, rng_key=0, num_warmup=5, num_samples=5, num_chains=1, progress_bar=False,
                    compiled=True)


@pytest.mark.slow
def test_compiled_program_is_reused_in_the_process_for_the_same_shapes(design, monkeypatch):
    """A second compiled=True fit with the same model, settings and shapes compiles nothing and, with the
    same key, repeats the draws; other data of the same shapes, more draws or more sequential chains run on the
    same two programs; another warm-up length (negative control) compiles both anew."""
    from semimech.infer import _compiled, nuts as nuts_module

    nuts_module._NUTS_PROGRAMS.clear()
    compiles = []
    real = _compiled.submit_compile
    monkeypatch.setattr(_compiled, "submit_compile", lambda *a, **k: compiles.append(1) or real(*a, **k))
    spec = _normal_spec()
    kw = dict(num_warmup=100, num_samples=100, num_chains=1, progress_bar=False, compiled=True)
    first = sm.fit_nuts(spec, design, rng_key=5, **kw)
    assert len(compiles) == 2 and nuts_module.LAST_PROGRAM["cache"] == "compiled"
    again = sm.fit_nuts(spec, design, rng_key=5, **kw)
    assert len(compiles) == 2 and nuts_module.LAST_PROGRAM["cache"] == "memory"
    np.testing.assert_array_equal(first.samples["m"], again.samples["m"])
    from semimech.simulate import simulate_screen

    ad, _ = simulate_screen(n_cells=60, n_genes=3, n_targets=2, rng_key=1, likelihood="normal")
    other_data = sm.Design.from_anndata(ad, perturbation_key="perturbation", control="control")
    other = sm.fit_nuts(spec, other_data, rng_key=6, **kw)
    assert len(compiles) == 2
    assert not np.array_equal(other.samples["m"], first.samples["m"])
    longer = sm.fit_nuts(spec, design, rng_key=5, **{**kw, "num_samples": 120})
    np.testing.assert_array_equal(longer.samples["m"][:, :100], first.samples["m"])  # the same chain, run on
    two = sm.fit_nuts(spec, design, rng_key=5, **{**kw, "num_chains": 2, "chain_method": "sequential"})
    assert len(compiles) == 2 and two.samples["m"].shape[:2] == (2, 100)
    sm.fit_nuts(spec, design, rng_key=5, **{**kw, "num_warmup": 120})
    assert len(compiles) == 4


def test_compiled_draws_do_not_depend_on_where_blocks_end(design, monkeypatch):
    """The blocks only decide how often Python sees the chain: one iteration per block gives the very draws and
    sampler fields of the default block sizes (warm-up and sampling split inside a block or between blocks)."""
    from semimech.infer import _nuts_blocks

    kw = dict(rng_key=2, num_warmup=37, num_samples=23, num_chains=2, progress_bar=False, compiled=True,
              chain_method="sequential")
    spec = _normal_spec()
    usual = sm.fit_nuts(spec, design, **kw)
    monkeypatch.setattr(_nuts_blocks, "BLOCK_SECONDS", 0.0)  # every block one iteration
    single = sm.fit_nuts(spec, design, **kw)
    assert usual.samples.keys() == single.samples.keys() and usual.samples["m"].shape == (2, 23, design.n_genes)
    for site in usual.samples:
        np.testing.assert_array_equal(usual.samples[site], single.samples[site])
    for field in usual.sample_stats:
        np.testing.assert_array_equal(usual.sample_stats[field], single.sample_stats[field])
    # negative control: another key is another chain
    other = sm.fit_nuts(spec, design, **{**kw, "rng_key": 3})
    assert not np.array_equal(other.samples["m"], usual.samples["m"])


def test_compiled_fit_stops_within_a_block_on_ctrl_c(design, monkeypatch):
    """Ctrl-C (a real SIGINT) while the compiled sampler runs: a one-line FitInterrupted within about a block
    (BLOCK_SECONDS), and nothing keeps running after it (the process's CPU time stands still)."""
    import os
    import signal
    import threading
    import time

    from semimech.infer import _nuts_blocks
    from semimech.infer._interrupt import FitInterrupted

    started = threading.Event()
    real = _nuts_blocks.run_chain

    def run_chain(*args, **kwargs):
        started.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(_nuts_blocks, "run_chain", run_chain)
    sent = {}

    def interrupt():
        if started.wait(120):
            time.sleep(0.5)
            sent["t"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGINT)

    # the handler of an interactive session (a process started in the background, as CI may be, ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        # more iterations than run in the time the test allows (~0.02 ms each here): the interrupt must end it
        with pytest.raises(KeyboardInterrupt) as err:
            sm.fit_nuts(_normal_spec(), design, rng_key=0, num_warmup=200, num_samples=1_000_000, num_chains=1,
                        progress_bar=False, compiled=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    latency = time.perf_counter() - sent["t"]
    assert isinstance(err.value, FitInterrupted), type(err.value)
    assert "interrupted (Ctrl-C)" in str(err.value) and "\n" not in str(err.value)
    assert latency < _nuts_blocks.BLOCK_SECONDS + 1.5, latency
    cpu = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu < 0.3, "a compiled program kept running after the interrupt"


# ------------------------------------------------------ the persistent cache's fast key (no lowering)
_RETURNING_USER = '''
import sys, json
import numpy as np
import numpyro
import numpyro.distributions as dist
import semimech as sm
import semimech.infer.nuts as nuts
import semimech.infer._fastkey as fastkey
from semimech.simulate import simulate_screen


def tiny(data, y=None, prior_sd=1.0, **_):  # module level: a fast key needs a model with a source file
    with numpyro.plate("genes", data["n_genes"], dim=-1):
        m = numpyro.sample("m", dist.Normal(0.0, prior_sd))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("cells", data["n_obs"], dim=-2), numpyro.plate("genes", data["n_genes"], dim=-1):
        numpyro.sample("y", dist.Normal(m, s), obs=y)


out, prior_sd, source = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if source != "-":
    fastkey._SOURCE_HASH = source  # as if semimech's source had changed
ad, _ = simulate_screen(n_cells=60, n_genes=3, n_targets=2, rng_key=0, likelihood="normal")
design = sm.Design.from_anndata(ad, perturbation_key="perturbation", control="control")
spec = sm.ModelSpec(name="tiny_normal", model=tiny, assumes="one mean and scale per gene")
fit = sm.fit_nuts(spec, design, rng_key=3, num_warmup=60, num_samples=40, num_chains=2, progress_bar=False,
                  chain_method="sequential", compiled=True, prior_sd=prior_sd)
np.savez(out, m=fit.samples["m"], s=fit.samples["s"])
print(json.dumps({"cache": nuts.LAST_PROGRAM["cache"]}))
'''


def _returning_user(script, tmp_path, name, cache, prior_sd=1.0, source="-"):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SEMIMECH_CACHE_DIR"}
    if cache is not None:
        env["SEMIMECH_CACHE_DIR"] = str(cache)
    out = tmp_path / f"{name}.npz"
    proc = subprocess.run([sys.executable, str(script), str(out), str(prior_sd), source], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    draws = dict(np.load(out))
    return json.loads(proc.stdout.strip().splitlines()[-1])["cache"], draws


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
def test_returning_process_loads_the_program_without_lowering_and_repeats_the_draws(tmp_path):
    """A fresh process with the cache folder of an earlier one finds the executable by the fast key (no
    tracing or lowering) and gives the very draws of the uncached path; negative controls: another model
    option or another semimech source misses the fast key, a damaged index or executable falls back; the
    draws stay identical throughout."""
    script = tmp_path / "returning_user.py"
    script.write_text(_RETURNING_USER)
    cache = tmp_path / "cache"
    where, uncached = _returning_user(script, tmp_path, "uncached", None)
    assert where == "compiled"
    where, first = _returning_user(script, tmp_path, "first", cache)
    assert where == "compiled" and len(list(cache.glob("*.fast"))) == 2 and len(list(cache.glob("*.bin"))) == 2
    _same(first, uncached)
    where, second = _returning_user(script, tmp_path, "second", cache)
    assert where == "fast"
    _same(second, uncached)
    # negative controls: the fast key must see these
    where, other = _returning_user(script, tmp_path, "option", cache, prior_sd=2.0)
    assert where == "compiled"  # another program altogether
    assert not np.array_equal(other["m"], uncached["m"])
    where, src = _returning_user(script, tmp_path, "source", cache, source="0" * 64)
    assert where == "disk"  # same lowered program, found by its lowered hash only
    _same(src, uncached)
    # a damaged index: the lowered-program key still finds the executable
    for f in cache.glob("*.fast"):
        f.write_bytes(b"not a pickle")
    where, damaged = _returning_user(script, tmp_path, "damaged_index", cache)
    assert where == "disk"
    _same(damaged, uncached)
    # a damaged executable: both keys miss, the program is compiled again (and stored again)
    for f in cache.glob("*.bin"):
        f.write_bytes(f.read_bytes()[:1000])
    where, damaged = _returning_user(script, tmp_path, "damaged_exec", cache)
    assert where == "compiled"
    _same(damaged, uncached)
    where, again = _returning_user(script, tmp_path, "again", cache)
    assert where == "fast"
    _same(again, uncached)


def test_program_key_needs_a_stable_keyable_program(monkeypatch):
    """No fast key for what cannot be keyed across processes (a local function, an unkeyable part); the
    key changes with an option value and with semimech's source hash."""
    import json

    import semimech.infer._fastkey as fastkey
    from semimech.infer._compiled import cache_key
    from semimech.infer._fastkey import program_key

    args = (np.zeros(2, np.uint32), {"y": np.zeros((3, 2), np.float32)})
    base = program_key(cache_key("nuts", json.dumps, {"prior_sd": 1.0}), args)
    assert base is not None and base == program_key(cache_key("nuts", json.dumps, {"prior_sd": 1.0}), args)
    assert program_key(cache_key("nuts", json.dumps, {"prior_sd": 2.0}), args) != base
    assert program_key(cache_key("nuts", json.dumps, {"prior_sd": 1.0}), (args[0], {"y": np.zeros((4, 2), np.float32)})) != base
    assert program_key(cache_key("nuts", lambda x: x), args) is None
    cell = {"__name__": "json"}  # a notebook cell's function: its code is in its own file, not its module's
    exec(compile("def model(x):\n    return x\n", "/tmp/ipykernel_0/0.py", "exec"), cell)
    assert program_key(cache_key("nuts", cell["model"]), args) is None
    assert program_key(None, args) is None

    def local(x):
        return x

    assert program_key(cache_key("nuts", local), args) is None
    monkeypatch.setattr(fastkey, "_SOURCE_HASH", "0" * 64)
    assert program_key(cache_key("nuts", json.dumps, {"prior_sd": 1.0}), args) != base
