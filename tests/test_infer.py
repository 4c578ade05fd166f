"""Inference façade: SVI/NUTS smoke, prediction aligned by label, save/load, clear failures."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import semimech as sm
from semimech.errors import InferenceError, PopulationOnlyWarning, PredictionError
from semimech.models import additive


def test_fit_holds_datatree_with_plate_dims(norman_fit, norman_design):
    post = norman_fit.idata["posterior"]
    assert post["effect"].dims == ("chain", "draw", "targets", "genes")
    assert list(post["effect"].coords["targets"].values) == list(norman_design.targets)
    assert post["mean"].dims == ("chain", "draw", "perturbations", "genes")
    assert norman_fit.losses.shape == (300,)
    d = sm.diagnostics(norman_fit)
    assert d["method"] == "svi" and d["nan_steps"] == 0 and np.isfinite(d["final_loss"])


def test_fit_is_immutable(norman_fit):
    with pytest.raises(dataclasses.FrozenInstanceError):
        norman_fit.method = "x"
    with pytest.raises(ValueError):
        norman_fit.samples["baseline"][0, 0, 0] = 1.0


def test_seen_combination_aligned_by_label_in_any_order(norman_fit):
    p = sm.predict(norman_fit, ["KLF1+SET", "SET+KLF1", "control"], rng_key=3)
    np.testing.assert_array_equal(p.draws["mean"][:, 0], p.draws["mean"][:, 1])
    # the control row is the fitted control mean
    np.testing.assert_allclose(p.draws["mean"][:, 2], norman_fit.flat("mean")[:, 0], rtol=1e-5, atol=1e-6)


def test_unseen_combination_is_additive_plus_interaction(norman_fit, pair_terms):
    """KLF1+MAPK1 was never observed: its mean draws are baseline + both effects + fresh interaction."""
    d = norman_fit.design
    assert not any(set(d.targets_of(p)) == {"KLF1", "MAPK1"} for p in d.perturbations)
    p = sm.predict(norman_fit, ["KLF1+MAPK1"], rng_key=4)
    k, t = d.targets.index("KLF1"), d.targets.index("MAPK1")
    eff = norman_fit.flat("effect")
    additive_part = norman_fit.flat("baseline") + eff[:, k] + eff[:, t]
    resid = p.draws["mean"][:, 0] - additive_part
    sd = norman_fit.flat("interaction_sd") * norman_fit.flat("interaction_scale")[:, None] \
        * np.asarray(d.model_data()["baseline_scale"])
    z = resid / sd
    # fresh prior draws of the pair term (a horseshoe local scale times a standard normal):
    # the same distribution as reference draws with the same scales
    ref = pair_terms(norman_fit, sd / np.asarray(d.model_data()["baseline_scale"]))
    assert stats.ks_2samp(z.ravel(), ref.ravel()).pvalue > 1e-3 and abs(np.median(z)) < 0.05
    # negative control: a seen double reuses its fitted interaction, not fresh noise
    q = sm.predict(norman_fit, ["SET+KLF1"], rng_key=4)
    i = d.perturbations.index("SET+KLF1")
    np.testing.assert_allclose(q.draws["mean"][:, 0], norman_fit.flat("mean")[:, i], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts the process's memory maps (Linux)")
def test_repeated_predict_calls_do_not_accumulate_compiled_programs(norman_fit):
    """Each predict compiles its replay; the executable must go with the call. Replayed eagerly, every call
    left one in jax's primitive cache (~34 memory maps a call, same shapes or not) until a long session hit
    the kernel's map limit ("LLVM compilation error: Cannot allocate memory")."""
    def maps():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    labels = [p for p in norman_fit.design.perturbations if p != norman_fit.design.control][:2]
    for i in range(2):  # warm-up: the shapes' programs elsewhere (observation draws) compile once
        sm.predict(norman_fit, labels, rng_key=i, num_cells=[20, 20])
    before = maps()
    for i in range(6):
        sm.predict(norman_fit, labels, rng_key=10 + i, num_cells=[20, 20])
    assert maps() - before < 60, maps() - before  # the eager replay: ~200 for these 6 calls


def test_a_repeated_predict_reuses_its_compiled_replay(norman_fit, compile_events):
    """A second predict of the same conditions (another key), or of other conditions with the same shapes (two
    other singles), compiles nothing, and gives the draws of a replay compiled with the conditions as constants (to
    float32 rounding: XLA folds constants); conditions of other shapes (three singles: the negative control)
    compile their own replay."""
    import functools

    from semimech.infer import release_compiled

    predict_module = sys.modules["semimech.infer.predict"]
    singles = [p for p in norman_fit.design.perturbations if p != norman_fit.design.control and "+" not in p]
    sm.predict(norman_fit, singles[:2], rng_key=0, num_cells=20)
    with compile_events() as compiles:
        again = sm.predict(norman_fit, singles[:2], rng_key=1, num_cells=20)
        other = sm.predict(norman_fit, singles[2:4], rng_key=1, num_cells=20)
        reused = len(compiles)
        sm.predict(norman_fit, singles[4:7], rng_key=1, num_cells=20)
    assert reused == 0 and len(compiles) > 0
    release_compiled()
    fresh = sm.predict(norman_fit, singles[:2], rng_key=1, num_cells=20)
    for kind in ("mean", "observed_mean"):
        np.testing.assert_array_equal(again.draws[kind], fresh.draws[kind])
    replay = predict_module._replay_program
    try:  # the conditions baked into the program, as before the arrays became its arguments
        predict_module._replay_program = functools.partial(replay, constants=True)
        constant = sm.predict(norman_fit, singles[2:4], rng_key=1, num_cells=20)
    finally:
        predict_module._replay_program = replay
    for kind in ("mean", "observed_mean"):
        np.testing.assert_allclose(other.draws[kind], constant.draws[kind], rtol=1e-6, atol=1e-6)
    assert not np.allclose(other.draws["mean"], again.draws["mean"])  # other conditions, other means


def test_a_model_that_needs_its_data_as_constants_is_replayed_with_them():
    """A model that reads a prediction array with numpy (JAX raises while tracing it as an argument) is replayed
    with the arrays baked in, from then on without trying again; the values are those of the model."""
    import functools

    import jax
    import numpyro
    import numpyro.distributions as dist

    predict_module = sys.modules["semimech.infer.predict"]

    def model(data, *, scale):
        rows = np.asarray(data["rows"])  # numpy on the data: needs a concrete array
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        numpyro.deterministic("m", w * scale * rows.astype(np.float32))

    bound = functools.partial(model, scale=2.0)
    post = {"w": np.array([1.0, -0.5], np.float32)}
    data = {"rows": np.array([1, 2, 3], np.int32), "n": 3, "names": np.array(["a", "b", "c"], dtype=object)}
    out = predict_module._replay_program(bound, data, ["m"], reference={})(jax.random.PRNGKey(0), post)
    np.testing.assert_allclose(np.asarray(out["m"]), [[2.0, 4.0, 6.0], [-1.0, -2.0, -3.0]])
    assert predict_module.cache_key("predict.model", bound) in predict_module._CONSTANT_DATA
    # the traced path of a model that does not need constants gives the same values
    plain = functools.partial(lambda data, *, scale: numpyro.deterministic(
        "m", numpyro.sample("w", dist.Normal(0.0, 1.0)) * scale * data["rows"].astype(np.float32)), scale=2.0)
    out2 = predict_module._replay_program(plain, data, ["m"], reference={})(jax.random.PRNGKey(0), post)
    np.testing.assert_allclose(np.asarray(out2["m"]), np.asarray(out["m"]))
    assert predict_module.cache_key("predict.model", plain) not in predict_module._CONSTANT_DATA


def test_prediction_tables(norman_fit):
    p = sm.predict(norman_fit, ["KLF1+TGFBR2", "control"], rng_key=0, num_cells=100)
    frame = p.to_frame(kind="observed_mean")
    assert list(frame.columns) == ["perturbation", "gene", "mean", "sd", "q05", "q25", "q50", "q75", "q95", "source"]
    assert set(frame.source) == {"data"}
    assert len(frame) == 2 * 500 and (frame["q05"] <= frame["q95"]).all()
    a = p.to_anndata()
    assert a.shape == (2, 500) and "q95" in a.layers
    lo, hi = p.interval(0.9, kind="observed_mean")
    assert np.all(hi - lo > 0)
    # the predictive of an observed pseudobulk is wider than the population mean's
    assert p.draws["observed_mean"].var(0).mean() > p.draws["mean"].var(0).mean()


def test_predict_refuses_what_it_cannot_answer(norman_fit, norman_design):
    with pytest.raises(sm.errors.DesignError, match="unknown target 'NOPE'"):
        sm.predict(norman_fit, ["NOPE"], rng_key=0)
    gene = next(g for g in norman_design.genes if g not in norman_design.targets)
    no_population = dataclasses.replace(norman_fit, spec=dataclasses.replace(norman_fit.spec,
                                                                             predicts_unseen_targets=False))
    with pytest.raises(PredictionError, match="never perturbed in training"):
        sm.predict(no_population, [gene], rng_key=0)
    # the additive model answers a never-perturbed gene from its effect population, and says so
    with pytest.warns(sm.errors.PopulationOnlyWarning, match="population"):
        p = sm.predict(norman_fit, [gene], rng_key=0)
    assert p.sources.source.tolist() == ["population"]
    other = sm.Design.from_anndata(_subset_genes(norman_design), perturbation_key="perturbation", control="control")
    with pytest.raises(PredictionError, match="not modelled"):
        sm.predict(norman_fit, other, rng_key=0)


def test_predict_refuses_a_target_held_out_by_a_split(norman_fit):
    """A split keeps encodings; a target whose rows were all held out is still unseen."""
    d = norman_fit.design
    keep = [p for p in d.perturbations if "KLF1" not in d.targets_of(p)]
    held = dataclasses.replace(norman_fit, design=d.select_perturbations(keep))
    no_population = dataclasses.replace(held, spec=dataclasses.replace(held.spec, predicts_unseen_targets=False))
    with pytest.raises(PredictionError, match=r"targets \['KLF1'\] were never perturbed"):
        sm.predict(no_population, ["KLF1"], rng_key=0)
    with pytest.warns(sm.errors.PopulationOnlyWarning):
        assert sm.predict(held, ["KLF1"], rng_key=0).sources.source.tolist() == ["population"]
    sm.predict(held, ["MAPK1+TGFBR2"], rng_key=0)  # seen targets still predicted


def _subset_genes(design):
    import anndata as ad
    import pandas as pd

    X = design.dense_y()[:, :10]
    obs = pd.DataFrame({"perturbation": [design.perturbations[i] for i in design.perturbation_index]},
                       index=[f"c{i}" for i in range(design.n_obs)])
    var = pd.DataFrame(index=[f"X{g}" for g in range(10)])
    return ad.AnnData(X=X, obs=obs, var=var)


def test_save_load_round_trip(norman_fit, tmp_path):
    norman_fit.save(tmp_path / "fit")
    back = sm.load(tmp_path / "fit")
    assert back.spec is norman_fit.spec and back.method == "svi" and dict(back.options) == dict(norman_fit.options)
    assert set(back.samples) == set(norman_fit.samples)
    for k in norman_fit.samples:
        np.testing.assert_array_equal(back.samples[k], norman_fit.samples[k])
        assert back.dims[k] == norman_fit.dims[k]
    np.testing.assert_array_equal(back.losses, norman_fit.losses)
    d0, d1 = norman_fit.design, back.design
    for f in ("obs_names", "genes", "perturbations", "targets", "control", "batches", "is_counts"):
        assert getattr(d0, f) == getattr(d1, f)
    for f in ("perturbation_index", "target_matrix", "size_factors", "n_cells", "y", "y_ss"):
        np.testing.assert_array_equal(getattr(d0, f), getattr(d1, f))
    a = sm.predict(norman_fit, ["KLF1+TGFBR2"], rng_key=9).draws["mean"]
    b = sm.predict(back, ["KLF1+TGFBR2"], rng_key=9).draws["mean"]
    np.testing.assert_array_equal(a, b)


def test_nan_losses_are_reported():
    from semimech.infer.fit import _check_losses

    losses = np.r_[np.linspace(10, 1, 50), np.full(50, np.nan)]
    with pytest.raises(InferenceError, match="NaN/inf at step 50 .* learning_rate"):
        _check_losses(losses)
    _check_losses(np.r_[np.linspace(10, 1, 95), np.nan, np.linspace(1, 0.9, 4)])  # a transient NaN is fine


def test_nan_log_density_is_reported(small_counts_adata):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def broken(data, *, likelihood="negbin", y=None):
        with numpyro.plate("genes", data["n_genes"], dim=-1):
            rate = numpyro.sample("rate", dist.LogNormal(0.0, 1.0))
        numpyro.factor("broken", jnp.log(-rate.sum()))
        with numpyro.plate("cells", data["n_obs"], dim=-2), numpyro.plate("genes", data["n_genes"], dim=-1):
            numpyro.sample("y", dist.Poisson(rate), obs=y)

    spec = sm.ModelSpec(name="broken", model=broken, assumes="nothing")
    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    with pytest.raises(InferenceError, match="NaN/inf at every initial point"):
        sm.fit_svi(spec, d, rng_key=0, num_steps=20, progress_bar=False)


def test_nuts_smoke_with_batches(small_counts_adata):
    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control",
                               batch_key="batch")
    fit = sm.fit_nuts(additive.SPEC, d, rng_key=1, num_warmup=30, num_samples=30, num_chains=2,
                      progress_bar=False)
    diag = sm.diagnostics(fit)
    assert fit.samples["batch_z"].shape == (2, 30, 2, 8)
    assert fit.idata["posterior"]["batch_z"].dims == ("chain", "draw", "batches", "genes")
    assert diag["divergences"] >= 0 and np.isfinite(diag["max_rhat"]) and diag["min_ess_bulk"] > 0
    assert fit.idata["sample_stats"]["diverging"].shape == (2, 30)
    assert fit.likelihood == "negbin"


def test_rng_key_is_required(norman_fit):
    with pytest.raises(TypeError):
        sm.predict(norman_fit, ["KLF1"])  # keyword-only and required
    with pytest.raises(TypeError, match="rng_key is required"):
        sm.predict(norman_fit, ["KLF1"], rng_key=None)


@pytest.mark.parametrize("guide", ["lowrank", "map"])
def test_every_guide_fits_and_predicts(small_counts_adata, guide):
    """Each autoguide returns draws of every latent and deterministic site (AutoDelta needs the
    model's arguments to fill deterministic sites: it used to fail after the fit)."""
    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=30, num_samples=7, guide=guide, progress_bar=False)
    assert fit.samples["mean"].shape == (1, 7, len(d.perturbations), d.n_genes)
    assert "y" not in fit.samples
    pred = sm.predict(fit, list(d.perturbations[:2]), rng_key=1)
    assert np.all(np.isfinite(pred.draws["mean"]))
    if guide == "map":  # a point estimate: every draw of a latent is the same
        assert np.ptp(fit.samples["effect_z"], axis=1).max() == 0.0


def test_unreplicated_design_warns_that_noise_is_not_identified():
    import pandas as pd

    from semimech.infer.fit import UnreplicatedWarning, _warn_unreplicated

    rng = np.random.default_rng(0)
    labels = ["control", "a", "b", "a+b"]
    frame = pd.DataFrame(rng.normal(1.0, 0.2, (4, 3)), columns=["g1", "g2", "g3"]).assign(perturbation=labels)
    one_each = sm.Design.from_frame(frame, readouts=["g1", "g2", "g3"], perturbation_key="perturbation", control="control")
    with pytest.warns(UnreplicatedWarning, match="separated only by the priors"):
        _warn_unreplicated(one_each)
    # negative controls: replicate rows, or a pseudobulk of them, carry the noise information
    twice = pd.concat([frame, frame.assign(g1=frame.g1 + 0.1)], ignore_index=True)
    replicated = sm.Design.from_frame(twice, readouts=["g1", "g2", "g3"], perturbation_key="perturbation",
                                      control="control")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_unreplicated(replicated)
        _warn_unreplicated(replicated.pseudobulk())


@pytest.mark.heavy
def test_predict_names_a_wrong_first_argument_and_the_genes_that_differ(norman, norman_fit):
    """Bad-input audit (F6, F7): arguments swapped or a Design in place of the fit was an AttributeError; a design
    with fewer fitted genes, or the same in another order, said "0 not modelled, e.g. []"."""
    genes = list(norman_fit.design.genes)
    for wrong in (["control"], norman_fit.design, None):
        with pytest.raises(PredictionError, match="predict needs a semimech Fit"):
            sm.predict(wrong, ["control"], rng_key=0)
    kw = dict(perturbation_key="perturbation", control="control")
    fewer = sm.Design.from_anndata(norman[:, genes[:-2]].copy(), **kw)
    with pytest.raises(PredictionError, match=rf"2 fitted genes missing, e.g. \['{genes[-2]}', '{genes[-1]}'\]"):
        sm.predict(norman_fit, fewer, rng_key=0)
    shuffled = sm.Design.from_anndata(norman[:, genes[::-1]].copy(), **kw)
    with pytest.raises(PredictionError, match="the same genes in another order"):
        sm.predict(norman_fit, shuffled, rng_key=0)


def test_predict_in_a_batch_recovers_the_batch_shift():
    """Known answer: batch b2 reads 1.5 units higher than b1 on every gene, so predictions in b2
    minus predictions in b1 are about 1.5; a new batch widens the intervals; a fit without
    batches refuses batch= (negative control: it must not silently return the average batch)."""
    import pandas as pd

    rng = np.random.default_rng(3)
    labels = np.repeat(["control", "a", "b"], 40)
    batch = np.tile(["b1", "b2"], 60)
    y = rng.normal(0.0, 0.3, (120, 4)) + np.where(batch == "b2", 1.5, 0.0)[:, None]
    y[labels == "a", 0] += 1.0
    frame = pd.DataFrame(y, columns=["g1", "g2", "g3", "g4"]).assign(perturbation=labels, batch=batch)
    kw = dict(readouts=["g1", "g2", "g3", "g4"], perturbation_key="perturbation", control="control")
    d = sm.Design.from_frame(frame, batch_key="batch", **kw).pseudobulk()
    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=1500, num_samples=200, progress_bar=False)
    p1 = sm.predict(fit, ["control", "a"], rng_key=1, batch="b1").draws["mean"].mean(0)
    p2 = sm.predict(fit, ["control", "a"], rng_key=1, batch="b2").draws["mean"].mean(0)
    np.testing.assert_allclose(p2 - p1, 1.5, atol=0.15)
    np.testing.assert_allclose(p1[1, 0] - p1[0, 0], 1.0, atol=0.2)  # the effect is the same in each batch
    avg = sm.predict(fit, ["control"], rng_key=1)
    with pytest.warns(PopulationOnlyWarning, match=r"batch 'never_seen' is not a training batch \(\['b1', 'b2'\]\)"):
        new = sm.predict(fit, ["control"], rng_key=1, batch="never_seen")  # a misspelt batch is said, not silent
    assert new.draws["mean"].std(0).mean() > 2 * avg.draws["mean"].std(0).mean()
    flat = sm.fit_svi(additive.SPEC, sm.Design.from_frame(frame, **kw).pseudobulk(), rng_key=0, num_steps=50,
                      num_samples=20, progress_bar=False)
    with pytest.raises(PredictionError, match="no batch offsets"):
        sm.predict(flat, ["control"], rng_key=0, batch="b1")


def _tiny_spec():
    import numpyro
    import numpyro.distributions as dist

    def tiny(data, *, likelihood="negbin", y=None):
        with numpyro.plate("genes", data["n_genes"], dim=-1):
            rate = numpyro.sample("rate", dist.LogNormal(0.0, 1.0))
            disp = numpyro.sample("disp", dist.LogNormal(0.0, 1.0))
        with numpyro.plate("cells", data["n_obs"], dim=-2), numpyro.plate("genes", data["n_genes"], dim=-1):
            numpyro.sample("y", dist.NegativeBinomial2(rate, disp), obs=y)

    return sm.ModelSpec(name="tiny", model=tiny, assumes="one rate per gene")


def test_nuts_settings_reach_the_kernel_and_bad_ones_fail_clearly(small_counts_adata, monkeypatch):
    from numpyro.infer import NUTS

    from semimech.infer import fit as fit_mod, nuts as nuts_mod

    seen = []

    class Recorder(NUTS):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(nuts_mod, "NUTS", Recorder)
    spec = _tiny_spec()
    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    kw = dict(rng_key=0, num_warmup=20, num_samples=10, num_chains=1, progress_bar=False)
    fit = sm.fit_nuts(spec, d, dense_mass=True, target_accept_prob=0.9, max_tree_depth=5, **kw)
    assert seen[-1]["dense_mass"] is True and seen[-1]["target_accept_prob"] == 0.9
    assert seen[-1]["max_tree_depth"] == 5 and fit.samples["rate"].shape == (1, 10, d.n_genes)
    assert np.all(fit.sample_stats["tree_depth"] <= 5)
    # a later fit started from this one: its medians are the start (here the chain starts there exactly)
    sm.fit_nuts(spec, d, dense_mass=[("rate", "disp")], init_values=fit, **{**kw, "num_warmup": 0, "num_samples": 1})
    assert seen[-1]["dense_mass"] == [("rate", "disp")]
    import jax
    from numpyro.infer.util import initialize_model

    model, data, y, _ = fit_mod._prepare(spec, d, {})
    z = initialize_model(jax.random.PRNGKey(3), model, init_strategy=seen[-1]["init_strategy"], model_args=(data,),
                         model_kwargs={"y": y})[0].z
    for site in ("rate", "disp"):
        np.testing.assert_allclose(np.exp(z[site]), np.median(fit.flat(site), axis=0), rtol=1e-5)
    with pytest.raises(InferenceError, match=r"dense_mass names \['rates'\]"):
        sm.fit_nuts(spec, d, dense_mass=[("rates",)], **kw)
    with pytest.raises(InferenceError, match="dense_mass must be True, False, or a list of tuples"):
        sm.fit_nuts(spec, d, dense_mass="yes", **kw)
    with pytest.raises(InferenceError, match="target_accept_prob must be a number in"):
        sm.fit_nuts(spec, d, target_accept_prob=1.5, **kw)
    with pytest.raises(InferenceError, match="max_tree_depth must be an integer"):
        sm.fit_nuts(spec, d, max_tree_depth=0, **kw)
    other = dataclasses.replace(fit, spec=dataclasses.replace(spec, name="other"))
    with pytest.raises(InferenceError, match="fit of the 'other' model"):
        sm.fit_nuts(spec, d, init_values=other, **kw)


def test_nuts_starts_at_an_earlier_fits_medians():
    from semimech.infer.nuts import _init_from

    spec = _tiny_spec()
    fake = sm.Fit(spec=spec, design=None, samples={"rate": np.arange(12.0).reshape(2, 3, 2) + 1.0},
                  dims={"rate": ("genes",)}, method="svi", options={})
    vals = _init_from(fake, spec)
    np.testing.assert_allclose(vals["rate"], np.median(np.arange(12.0).reshape(6, 2) + 1.0, axis=0))
    assert _init_from({"rate": 1.0}, spec) == {"rate": 1.0} and _init_from(None, spec) is None


def test_nuts_chain_method_auto_and_bad_values(monkeypatch):
    """``"auto"``: parallel chains only when JAX has a device per chain (the user's setting), else sequential."""
    import jax

    from semimech.infer import nuts as nuts_mod

    assert jax.local_device_count() == 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    monkeypatch.setattr(jax, "local_device_count", lambda: 1)
    assert nuts_mod._chain_method("auto", 2) == "sequential"
    monkeypatch.setattr(jax, "local_device_count", lambda: 2)
    assert nuts_mod._chain_method("auto", 2) == "parallel"
    assert nuts_mod._chain_method("auto", 1) == "sequential"  # negative control: one chain never needs pmap
    assert nuts_mod._chain_method("auto", 3) == "sequential"  # more chains than devices
    assert nuts_mod._chain_method("vectorized", 2) == "vectorized"
    with pytest.raises(InferenceError, match="chain_method must be one of"):
        nuts_mod._chain_method("threads", 2)
    with pytest.raises(InferenceError, match="num_chains must be a positive integer"):
        nuts_mod._chain_method("auto", 0)


def test_nuts_names_still_import_from_fit(monkeypatch):
    """fit_nuts and its helpers live in semimech.infer.nuts; semimech.infer.fit hands out the same objects, looked
    up at each access (a patch of the nuts module shows through), and still fails on a name it never had."""
    from semimech.infer import fit as fit_mod, nuts as nuts_mod
    from semimech.infer.fit import _chain_method, fit_nuts

    assert fit_nuts is nuts_mod.fit_nuts is sm.fit_nuts and _chain_method is nuts_mod._chain_method
    for name in fit_mod._MOVED_TO_NUTS:
        assert getattr(fit_mod, name) is getattr(nuts_mod, name), name
    monkeypatch.setattr(nuts_mod, "_init_from", "patched")
    assert fit_mod._init_from == "patched"
    with pytest.raises(AttributeError, match="no attribute 'fit_hmc'"):
        fit_mod.fit_hmc


@pytest.mark.slow
def test_nuts_parallel_chains_equal_sequential_draws(tmp_path):
    """With two host devices (the user's choice, set before JAX starts) ``"auto"`` runs the chains in parallel,
    draw for draw the same chains as ``"sequential"``."""
    import subprocess
    import sys

    script = tmp_path / "chains.py"
    script.write_text(
        "import numpyro\nnumpyro.set_host_device_count(2)\n"
        "import numpy as np, jax, numpyro.distributions as dist\nimport semimech as sm\n"
        "from semimech.simulate import simulate_screen\n"
        "def tiny(data, y=None, **_):\n"
        "    with numpyro.plate('genes', data['n_genes'], dim=-1):\n"
        "        m = numpyro.sample('m', dist.Normal(0.0, 1.0))\n"
        "    with numpyro.plate('cells', data['n_obs'], dim=-2), numpyro.plate('genes', data['n_genes'], dim=-1):\n"
        "        numpyro.sample('y', dist.Normal(m, 1.0), obs=y)\n"
        "spec = sm.ModelSpec(name='tiny', model=tiny, assumes='one mean per gene')\n"
        "ad, _ = simulate_screen(n_cells=60, n_genes=3, n_targets=2, rng_key=0, likelihood='normal')\n"
        "d = sm.Design.from_anndata(ad, perturbation_key='perturbation', control='control')\n"
        "kw = dict(rng_key=0, num_warmup=50, num_samples=50, num_chains=2, progress_bar=False)\n"
        "a = sm.fit_nuts(spec, d, **kw).samples['m']\n"
        "b = sm.fit_nuts(spec, d, chain_method='sequential', **kw).samples['m']\n"
        "assert jax.local_device_count() == 2 and a.shape == b.shape == (2, 50, 3)\n"
        "np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)\n"
        "print('OK')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.heavy
def test_default_nuts_fits_do_not_accumulate_compiled_sampling_loops(monkeypatch, simulate_additive):
    """NumPyro compiles its sampling loop anew for every MCMC.run and JAX kept each (~700 memory mappings a fit: a
    long process of NUTS fits reached the kernel's limit); fit_nuts(compiled=False) frees the loop it no longer
    needs, and the compiled path (the default) reuses its two programs."""
    from semimech.infer import nuts
    from semimech.infer._compiled import mapping_count as maps

    if maps() is None:
        pytest.skip("memory mappings are counted on Linux only")

    d = simulate_additive(seed=0, n_targets=3, n_genes=3).pseudobulk()

    def run(seed, compiled=False):
        sm.fit_nuts(additive.SPEC, d, rng_key=seed, num_warmup=20, num_samples=20, num_chains=1,
                    progress_bar=False, effects="horseshoe", compiled=compiled)

    run(0, compiled=None)
    before = maps()
    run(1, compiled=None)  # the same two programs
    assert maps() - before < 150
    run(0)
    before = maps()
    run(1)
    run(2)
    assert maps() - before < 150
    monkeypatch.setattr(nuts, "_release_numpyro_loop", lambda: None)  # negative control: each loop is kept
    before = maps()
    run(3)
    assert maps() - before > 300
