"""The compiled fit machinery: reuse across fits, the reference NumPyro path, timings, Ctrl-C and resume."""

from __future__ import annotations

import signal

import numpy as np
import pytest

import semimech as sm
from semimech.infer import FitInterrupted, _svi
from semimech.models import additive

KW = dict(num_steps=40, num_samples=50, progress_bar=False)


@pytest.fixture(scope="module")
def design(small_counts_adata):
    return sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control",
                                  batch_key="batch")


def _same(a, b):
    assert set(a.samples) == set(b.samples)
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k], err_msg=k)
    np.testing.assert_array_equal(a.losses, b.losses)


@pytest.mark.heavy
def test_cached_and_uncached_paths_give_identical_draws(design, tmp_path, jax_cache):
    """A fresh compile, the in-process cache and the opt-in persistent cache give the same fit."""
    from semimech.infer import set_cache_dir

    jax_cache(False)  # JAX's own cache, shared by the test processes, may already hold these programs
    set_cache_dir(tmp_path)
    try:
        _svi.clear_cache()
        first = sm.fit_svi(additive.SPEC, design, rng_key=3, **KW)  # compiled (and stored on disk)
        assert len(list(tmp_path.glob("*.bin"))) == 3  # init, step block, draws
        again = sm.fit_svi(additive.SPEC, design, rng_key=3, **KW)  # compiled programs reused in memory
        _svi.clear_cache()
        loaded = sm.fit_svi(additive.SPEC, design, rng_key=3, **KW)  # compiled programs loaded from disk
    finally:
        set_cache_dir(None)
    assert first.timings["compiled_reused"] == 0 and again.timings["compiled_reused"] == 1
    assert "compile_s" not in again.timings and loaded.timings["compiled_from_disk"] == 3
    _same(first, again)
    _same(first, loaded)
    # negative control: another seed through the same compiled programs gives other draws
    other = sm.fit_svi(additive.SPEC, design, rng_key=4, **KW)
    assert other.timings["compiled_reused"] == 1
    assert not np.array_equal(other.samples["baseline"], first.samples["baseline"])


@pytest.mark.heavy
def test_semimechs_cache_stores_whole_programs_beside_jaxs_own_cache(design, tmp_path, jax_cache):
    """With JAX's own persistent cache on (a user's ``jax_compilation_cache_dir``), a program JAX had cached was
    loaded from there and semimech stored that executable, which serialises without its kernels: the next fit
    loading it failed ("Function add_convert_fusion not found"; in CI when another test had compiled the same
    programs). Now a program JAX's cache serves is not stored by semimech. Known answer: the fit after the storing
    one runs and gives its draws; what semimech did store loads whole."""
    from semimech.infer import set_cache_dir

    jax_cache(True, tmp_path / "jax")
    try:
        _svi.clear_cache()
        sm.fit_svi(additive.SPEC, design, rng_key=0, **KW)      # JAX's cache now holds these programs
        set_cache_dir(tmp_path / "semimech")
        _svi.clear_cache()
        stored = sm.fit_svi(additive.SPEC, design, rng_key=3, **KW)
        _svi.clear_cache()
        loaded = sm.fit_svi(additive.SPEC, design, rng_key=3, **KW)
    finally:
        set_cache_dir(None)
        _svi.clear_cache()
    kept = len(list((tmp_path / "semimech").glob("*.bin")))
    assert kept < 3                                            # JAX's cache served some: those are not kept
    assert loaded.timings.get("compiled_from_disk", 0) == kept
    _same(stored, loaded)


def test_persistent_cache_is_off_unless_asked(monkeypatch, tmp_path):
    from semimech.infer import _compiled, cache_dir, set_cache_dir

    monkeypatch.setattr(_compiled, "_CACHE_DIR_SET", False)  # as in a fresh process
    monkeypatch.delenv("SEMIMECH_CACHE_DIR", raising=False)
    assert cache_dir() is None
    monkeypatch.setenv("SEMIMECH_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    set_cache_dir(None)  # an explicit choice overrides the environment
    assert cache_dir() is None


def test_timings_cover_the_phases(design):
    fit = sm.fit_svi(additive.SPEC, design, rng_key=0, **KW)
    t = fit.timings
    for k in ("setup_s", "init_s", "steps_s", "draws_s", "total_s"):
        assert t[k] >= 0, k
    assert t["steps"] == KW["num_steps"]
    assert t["setup_s"] + t["init_s"] + t["steps_s"] + t["draws_s"] + t.get("compile_s", 0) <= t["total_s"] + 1e-6


def _reference_fit(design, *, seed, num_steps, num_samples):
    """The pre-compilation path: NumPyro's eager SVI.run, guide.sample_posterior, Predictive
    (with the guide ``fit_svi`` uses for ``guide="normal"``)."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI, Predictive, Trace_ELBO, autoguide, init_to_median

    # the options fit_svi settles (the effect population's geometry for SVI: effect_deviation="centred")
    model = functools.partial(additive.SPEC.model, **additive.SPEC.resolve_options({"likelihood": "negbin"}, "svi"))
    data = design.model_data()
    y = jnp.asarray(design.dense_y(), jnp.float32)
    g = autoguide.AutoNormal(model, init_loc_fn=init_to_median(num_samples=15), init_scale=0.05)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(optax.cosine_decay_schedule(0.02, num_steps, 0.01)))
    k_fit, k_draw = jax.random.split(jax.random.PRNGKey(seed))
    res = SVI(model, g, optim, Trace_ELBO()).run(k_fit, num_steps, data, y=y, progress_bar=False, stable_update=True)
    k_guide, k_det = jax.random.split(k_draw)
    post = {k: v for k, v in g.sample_posterior(k_guide, res.params, data, y=y, sample_shape=(num_samples,)).items()
            if k != "y"}
    post.update(Predictive(model, posterior_samples=post, return_sites=["effect", "mean"])(k_det, data))
    return {k: np.asarray(v) for k, v in post.items()}, np.asarray(res.losses)


@pytest.mark.slow
def test_fixed_seed_posterior_matches_the_eager_numpyro_path(design):
    """Same seed, guide and optimiser as the eager NumPyro run: converged losses agree and the
    draws agree within Monte Carlo error (they use the random key differently). Negative
    control: a fit stopped after 3 steps."""
    n, steps = 400, 300
    ref, ref_losses = _reference_fit(design, seed=5, num_steps=steps, num_samples=n)
    fit = sm.fit_svi(additive.SPEC, design, rng_key=5, num_steps=steps, num_samples=n, progress_bar=False)
    # the same computation from the same starting point (sparse vs dense NB: float rounding)
    np.testing.assert_allclose(fit.losses[:20], ref_losses[:20], rtol=1e-3)
    assert abs(fit.losses[-50:].mean() - ref_losses[-50:].mean()) < 0.01 * abs(ref_losses[-50:].mean())

    def z(samples):
        out = []
        for k in ("baseline", "effect", "concentration", "mean"):
            a, b = samples[k].reshape(n, -1), ref[k].reshape(n, -1)
            se = np.sqrt((a.var(0) + b.var(0)) / n) + 1e-12
            out.append(np.abs(a.mean(0) - b.mean(0)) / se)
        return np.concatenate(out)

    zs = z({k: fit.flat(k) for k in fit.samples})
    assert np.mean(zs > 3.5) < 0.01 and np.median(zs) < 1.0
    short = sm.fit_svi(additive.SPEC, design, rng_key=5, num_steps=3, num_samples=n, progress_bar=False)
    assert np.mean(z({k: short.flat(k) for k in short.samples}) > 3.5) > 0.2


def test_ctrl_c_stops_between_blocks_and_resume_gives_the_uninterrupted_fit(design, monkeypatch):
    from semimech.infer import _progress

    whole = sm.fit_svi(additive.SPEC, design, rng_key=7, **KW)
    calls = []
    original = _progress.Phases.steps_done

    def press_ctrl_c(self, n, loss=None):  # Ctrl-C arrives while the first block is reported
        original(self, n, loss)
        calls.append(n)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(_progress.Phases, "steps_done", press_ctrl_c)
    with pytest.raises(FitInterrupted, match=r"interrupted \(Ctrl-C\) after \d+ of 40 steps") as err:
        sm.fit_svi(additive.SPEC, design, rng_key=7, **KW)
    monkeypatch.setattr(_progress.Phases, "steps_done", original)
    ckpt = err.value.checkpoint
    assert 0 < ckpt.done < 40 and len(ckpt.losses) == ckpt.done
    assert isinstance(err.value, KeyboardInterrupt) and "\n" not in str(err.value)
    resumed = sm.fit_svi(additive.SPEC, design, rng_key=7, resume=ckpt, **KW)
    _same(whole, resumed)
    # the checkpoint only resumes the fit it came from
    with pytest.raises(sm.errors.InferenceError, match="different fit"):
        sm.fit_svi(additive.SPEC, design, rng_key=8, resume=ckpt, **KW)
    with pytest.raises(sm.errors.InferenceError, match="checkpoint of a FitInterrupted"):
        sm.fit_svi(additive.SPEC, design, rng_key=7, resume="nope", **KW)


def test_ctrl_c_before_any_step_leaves_nothing_to_resume(design, monkeypatch):
    from semimech.infer import _svi as engine_module

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    engine_module.clear_cache()
    monkeypatch.setattr(engine_module, "wait_future", interrupted)  # Ctrl-C while waiting for a compile
    with pytest.raises(FitInterrupted, match="before any step finished") as err:
        sm.fit_svi(additive.SPEC, design, rng_key=1, **KW)
    assert err.value.checkpoint is None
    monkeypatch.undo()
    # the compiles went on in the background: the next fit picks them up
    fit = sm.fit_svi(additive.SPEC, design, rng_key=1, **KW)
    assert fit.timings["compiled_reused"] == 1 and np.isfinite(fit.losses).all()


def _record_submits(monkeypatch):
    """Wrap ``_svi.submit_compile``: a list of (program name, options, the future it waits for, its future)."""
    calls = []
    real = _svi.submit_compile

    def record(lowered, options=None, *, after=None):
        fut = real(lowered, options, after=after)
        name = lowered.as_text().split("@", 1)[1].split(" ", 1)[0]  # "module @jit__block_fn attributes ..."
        calls.append((name, options, after, fut))
        return fut

    monkeypatch.setattr(_svi, "submit_compile", record)
    return calls


@pytest.mark.heavy
def test_compiles_start_with_the_step_and_the_draws_wait_for_the_init_on_two_cores(design, monkeypatch):
    """The step's compile (the one the fit waits for) starts first; with fewer than SIDE_BY_SIDE_CORES cores
    the draws compile after the init, else all three at once. The draws' compile options (LLVM level 1,
    for compile speed) reach their compile; the fit is the same, bit for bit, with the draws compiled with
    XLA's defaults (the 8-core run)."""
    assert _svi.DRAWS_COMPILER_OPTIONS == {"xla_backend_optimization_level": 1}
    fits = {}
    # XLA's default level named: the test processes compile at level 0 (conftest), where None would mean that
    xla_default = {"xla_backend_optimization_level": 3}
    for cores, draws_options in ((2, _svi.DRAWS_COMPILER_OPTIONS), (8, xla_default)):
        _svi.clear_cache()
        monkeypatch.setattr(_svi, "_cores", lambda: cores)
        monkeypatch.setattr(_svi, "DRAWS_COMPILER_OPTIONS", draws_options)
        calls = _record_submits(monkeypatch)
        fits[cores] = sm.fit_svi(additive.SPEC, design, rng_key=5, **KW)
        assert [c[0] for c in calls] == ["jit__block_fn", "jit__init_fn", "jit__draw_fn"]
        assert calls[0][1] == _svi.STEP_COMPILER_OPTIONS and calls[1][1] == _svi.INIT_COMPILER_OPTIONS
        assert calls[2][1] == draws_options
        assert calls[0][2] is None and calls[1][2] is None
        if cores < _svi.SIDE_BY_SIDE_CORES:
            assert calls[2][2] is calls[1][3]  # the draws' compile waits for the init's
        else:
            assert calls[2][2] is None
        assert fits[cores].timings["compile_s"] > 0
        monkeypatch.undo()
    _same(fits[2], fits[8])
    _svi.clear_cache()


def test_a_failed_compile_is_raised_at_its_use_and_tried_again(design, monkeypatch):
    from semimech.infer import _compiled

    def broken(lowered, options):
        raise RuntimeError("compile failed (test)")

    _svi.clear_cache()
    monkeypatch.setattr(_compiled, "_compile", broken)
    with pytest.raises(RuntimeError, match="compile failed"):
        sm.fit_svi(additive.SPEC, design, rng_key=2, **KW)
    monkeypatch.undo()
    fit = sm.fit_svi(additive.SPEC, design, rng_key=2, **KW)  # the cached engine compiles again
    assert fit.timings["compiled_reused"] == 1 and np.isfinite(fit.losses).all()


def test_a_compile_option_this_xla_does_not_know_falls_back_to_the_defaults(design, monkeypatch):
    import jax
    import jax.numpy as jnp

    from semimech.infer import _compiled

    lowered = jax.jit(lambda x: jnp.sin(x) * 2.0).lower(jnp.ones(3))
    with pytest.raises(Exception, match="(?i)no such compile option"):  # what jaxlib says (the fallback's cue)
        lowered.compile({"xla_semimech_no_such_option": True})
    compiled, from_disk = _compiled.wait_future(_compiled.submit_compile(lowered, {"xla_semimech_no_such_option": True}))
    assert not from_disk
    np.testing.assert_array_equal(compiled(jnp.ones(3)), lowered.compile()(jnp.ones(3)))
    # another error is not swallowed
    class Failing:
        def compile(self, options=None):
            raise ValueError("something else")

    with pytest.raises(ValueError, match="something else"):
        _compiled._compile(Failing(), {"xla_backend_optimization_level": 0})
    # a fit whose init option is unknown to XLA still fits
    _svi.clear_cache()
    monkeypatch.setattr(_svi, "INIT_COMPILER_OPTIONS", {"xla_semimech_no_such_option": True})
    fit = sm.fit_svi(additive.SPEC, design, rng_key=0, **KW)
    assert np.isfinite(fit.losses).all()
    _svi.clear_cache()


def test_a_second_ctrl_c_stops_at_once():
    from semimech.infer._interrupt import deferred_interrupt

    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupt() as flag:
        signal.raise_signal(signal.SIGINT)
        assert flag.set
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_schedule_in_the_state_is_optax_cosine_adam():
    """The optimiser whose rate and length are state gives optax's updates (incl. clipping, past the end)."""
    import jax
    import jax.numpy as jnp

    from semimech.infer import _optim

    rng = np.random.default_rng(0)
    params = {"a": jnp.zeros(5), "b": jnp.zeros((2, 3))}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 6.0, p.shape), jnp.float32), params) for _ in range(30)]

    def run(tx, state):
        out = []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]))
        return np.stack(out)

    ref = run(_optim.reference(0.02, 25), _optim.reference(0.02, 25).init(params))
    tx = _optim.optimiser()
    ours = run(tx, _optim.set_schedule(tx.init(params), learning_rate=0.02, num_steps=25))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)
    # negative control: another length gives other updates
    other = run(tx, _optim.set_schedule(tx.init(params), learning_rate=0.02, num_steps=10))
    assert np.max(np.abs(other - ref)) > 1e-4


def test_other_num_steps_and_rate_reuse_the_compiled_programs(design):
    """num_steps and learning_rate are data of the compiled programs: a fit with others compiles nothing
    and gives what a fresh compilation gives."""
    _svi.clear_cache()
    first = sm.fit_svi(additive.SPEC, design, rng_key=5, **KW)
    kw = dict(KW, num_steps=25, learning_rate=0.01)
    reused = sm.fit_svi(additive.SPEC, design, rng_key=5, **kw)
    assert first.timings["compiled_reused"] == 0 and reused.timings["compiled_reused"] == 1
    assert len(reused.losses) == 25 and reused.losses[0] == first.losses[0]  # same start, other schedule
    assert not np.allclose(reused.losses[5:25], first.losses[5:25])  # negative control: the rate did change
    _svi.clear_cache()
    fresh = sm.fit_svi(additive.SPEC, design, rng_key=5, **kw)
    assert fresh.timings["compiled_reused"] == 0
    _same(reused, fresh)


def test_same_shapes_with_other_data_reuse_the_compiled_programs(design, small_counts_adata):
    """A design with the same structure and shapes but other counts (new data, a resample) compiles nothing:
    its data-centred priors are data of the compiled programs, not constants; same fit as a fresh compile."""
    _svi.clear_cache()
    first = sm.fit_svi(additive.SPEC, design, rng_key=5, **KW)
    other_data = small_counts_adata.copy()
    other_data.X = np.asarray(other_data.X) * 3 + 1  # other baselines (priors centred elsewhere), same shapes
    d2 = sm.Design.from_anndata(other_data, perturbation_key="perturbation", control="control", batch_key="batch")
    assert not np.allclose(d2.model_data()["baseline_loc"], design.model_data()["baseline_loc"])
    reused = sm.fit_svi(additive.SPEC, d2, rng_key=5, **KW)
    assert first.timings["compiled_reused"] == 0 and reused.timings["compiled_reused"] == 1
    assert not np.allclose(reused.samples["baseline"], first.samples["baseline"])  # negative control: other data
    _svi.clear_cache()
    fresh = sm.fit_svi(additive.SPEC, d2, rng_key=5, **KW)
    assert fresh.timings["compiled_reused"] == 0
    _same(reused, fresh)


def test_release_compiled_drops_the_kept_programs_and_the_next_fit_compiles_again(design):
    from semimech.infer import nuts

    sm.fit_svi(additive.SPEC, design, rng_key=0, **KW)
    again = sm.fit_svi(additive.SPEC, design, rng_key=1, **KW)
    assert again.timings["compiled_reused"] == 1 and len(_svi._ENGINES) >= 1
    nuts._NUTS_PROGRAMS.put(("a key",), object())  # stands for a kept fit_nuts(compiled=True) program
    sm.infer.release_compiled()
    assert len(_svi._ENGINES) == 0 and len(nuts._NUTS_PROGRAMS) == 0
    fresh = sm.fit_svi(additive.SPEC, design, rng_key=1, **KW)
    assert fresh.timings["compiled_reused"] == 0
    _same(fresh, again)  # the same programs compiled again: the same draws


def test_a_process_near_the_memory_mapping_limit_is_warned_once_per_crossing():
    import warnings
    from pathlib import Path

    from semimech.infer import _compiled

    if not Path("/proc/sys/vm/max_map_count").exists():
        pytest.skip("the mapping limit is read on Linux only")
    _compiled._WARNED_MAPS = False
    try:
        with pytest.warns(sm.errors.CompiledCodeWarning, match="release_compiled"):
            _compiled.mapped_code_check(share=0.0)  # any process holds more than 0% of the limit
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _compiled.mapped_code_check(share=0.0)  # once per crossing
            _compiled.mapped_code_check(share=1.0)  # negative control: below the limit, silent (and re-armed)
        with pytest.warns(sm.errors.CompiledCodeWarning):
            _compiled.mapped_code_check(share=0.0)
    finally:
        _compiled._WARNED_MAPS = False
