"""Noise per group of batches: a replicate prior per group (from_replicates(groups=)), NoiseModel.by_batch.

Known answer: two groups of batches measured with sd 0.05 and 0.30; the grouped fit learns each
group's sd and ``predict`` draws a batch's observations with its group's. Negative control: the
same data with the pooled prior give one sd between the two for both batches.
"""

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech import measurement as me
from semimech.errors import DesignError, PopulationOnlyWarning, PredictionError
from semimech.models import additive

GENES = [f"g{i}" for i in range(6)]
SD = {"quiet": 0.05, "loud": 0.30}
BATCH_GROUP = {f"b{b}": ("quiet" if b < 3 else "loud") for b in range(6)}


def _replicates(rng):
    rows = []
    for g, s in SD.items():
        for c in range(8):
            mu = rng.normal(0, 1, len(GENES))
            rows += [dict(cond=f"{g}_c{c}", grp=g, **dict(zip(GENES, mu + rng.normal(0, s, len(GENES)))))
                     for _ in range(2)]
    frame = pd.DataFrame(rows, index=[f"r{i}" for i in range(len(rows))])
    return sm.Design.from_frame(frame, readouts=GENES, perturbation_key="cond", control="quiet_c0"), frame.grp


def _screen(rng):
    effects = {t: rng.normal(0, 0.5, len(GENES)) for t in "ABCDE"}
    rows = []
    for batch, group in BATCH_GROUP.items():
        for lab in ["none", *effects]:
            mu = effects[lab] if lab != "none" else np.zeros(len(GENES))
            rows.append(dict(label=lab, batch=batch, **dict(zip(GENES, mu + rng.normal(0, SD[group], len(GENES))))))
    frame = pd.DataFrame(rows, index=[f"o{i}" for i in range(len(rows))])
    return sm.Design.from_frame(frame, readouts=GENES, perturbation_key="label", control="none", batch_key="batch")


@pytest.fixture(scope="module")
def parts():
    rng = np.random.default_rng(0)
    reps, groups = _replicates(rng)
    return reps, groups, _screen(rng)


@pytest.fixture(scope="module")
def fits(parts):
    reps, groups, screen = parts
    noise = me.from_replicates(reps, groups=groups)
    kw = dict(rng_key=0, num_steps=1000, num_samples=200, progress_bar=False)
    return {"grouped": sm.fit_svi(additive.SPEC, screen.with_noise(noise.by_batch(BATCH_GROUP)), **kw),
            "pooled": sm.fit_svi(additive.SPEC, screen.with_noise(noise), **kw)}


def _spread(fit, batch):
    p = sm.predict(fit, ["A"], rng_key=1, num_cells=1, batch=batch)
    return float(np.mean(np.std(p.draws["observed_mean"] - p.draws["mean"], axis=0)))


def test_replicate_prior_per_group(parts):
    reps, groups, _ = parts
    noise = me.from_replicates(reps, groups=groups)
    per = {g: np.sqrt(np.mean(np.square(list(noise.groups[g]["sd"].values())))) for g in SD}
    assert per["quiet"] == pytest.approx(0.05, rel=0.3) and per["loud"] == pytest.approx(0.30, rel=0.3)
    assert noise.groups["quiet"]["df"]["g0"] == 8
    assert not noise.grouped and noise.by_batch(BATCH_GROUP).grouped
    assert me.NoiseModel.from_dict(noise.by_batch(BATCH_GROUP).to_dict()) == noise.by_batch(BATCH_GROUP)


def test_grouped_fit_learns_each_groups_sd_and_predict_uses_the_batchs(fits):
    grouped, pooled = fits["grouped"], fits["pooled"]
    sd = np.median(grouped.flat("noise_sd"), axis=0)  # (noise_groups, genes), groups sorted: loud, quiet
    assert grouped.design.coords["noise_groups"] == ("loud", "quiet")
    assert np.mean(sd[1]) == pytest.approx(0.05, rel=0.4) and np.mean(sd[0]) == pytest.approx(0.30, rel=0.3)
    quiet, loud, unknown = _spread(grouped, "b0"), _spread(grouped, "b4"), _spread(grouped, None)
    assert quiet == pytest.approx(0.05, rel=0.4) and loud == pytest.approx(0.30, rel=0.3)
    assert quiet < unknown < loud  # an unnamed batch: the mixture over groups
    # negative control: one pooled sd cannot tell the batches apart
    assert _spread(pooled, "b0") == pytest.approx(_spread(pooled, "b4"), rel=0.15)
    assert 0.1 < _spread(pooled, "b0") < 0.3
    dims = grouped.idata["posterior"]["noise_sd"].dims
    assert dims[-2:] == ("noise_groups", "genes")


def test_grouped_fit_saves_and_loads(fits, tmp_path):
    fit = fits["grouped"]
    fit.save(tmp_path / "fit")
    back = sm.load(tmp_path / "fit")
    assert back.design.noise == fit.design.noise and back.design.noise.grouped
    assert _spread(back, "b4") == pytest.approx(_spread(fit, "b4"), rel=1e-6)


def test_bad_grouped_noise_is_a_clear_error(parts, fits):
    reps, groups, screen = parts
    noise = me.from_replicates(reps, groups=groups)
    with pytest.raises(DesignError, match="one label per row"):
        me.from_replicates(reps, groups=groups[:5])
    lone = np.where(np.arange(reps.n_obs) == 0, "solo", np.asarray(groups))  # one row: no replicate of its own
    with pytest.raises(DesignError, match="noise group 'solo'"):
        me.from_replicates(reps, groups=lone)
    with pytest.raises(DesignError, match="needs a noise model with groups"):
        me.from_replicates(reps).by_batch(BATCH_GROUP)
    with pytest.raises(DesignError, match="without replicates: \\['medium'\\]"):
        noise.by_batch({**BATCH_GROUP, "b1": "medium"})
    with pytest.raises(DesignError, match="do not map batches \\['b5'\\]"):
        screen.with_noise(noise.by_batch({b: g for b, g in BATCH_GROUP.items() if b != "b5"}))
    with pytest.raises(PredictionError, match="has no noise group"), pytest.warns(PopulationOnlyWarning):
        sm.predict(fits["grouped"], ["A"], rng_key=0, num_cells=1, batch="b_new")
    with pytest.warns(PopulationOnlyWarning, match="not a training batch"):
        assert sm.predict(fits["grouped"], ["A"], rng_key=0, batch="b_new").draws["mean"].shape[1] == 1  # no cells asked


def test_grouped_noise_with_context_noise_or_signalling_is_refused():
    from semimech.infer._sites import abstract_trace
    from semimech.models import signalling_network

    frame = pd.DataFrame({"cl": ["x", "x", "y", "y"] * 2, "drug": ["none", "d", "none", "d"] * 2,
                          "batch": ["x", "x", "y", "y"] * 2, "g0": np.arange(8.0), "g1": np.arange(8.0) ** 0.5},
                         index=[f"o{i}" for i in range(8)])
    reps = sm.Design.from_frame(frame, readouts=["g0", "g1"], perturbation_key="drug", control="none")
    noise = me.from_replicates(reps, groups=frame.cl).by_batch({"x": "x", "y": "y"})
    ctx = sm.Design.from_frame(frame, readouts=["g0", "g1"], perturbation_key="drug", control="none", context_key="cl",
                               batch_key="batch")
    ctx = ctx.with_noise(noise)
    with pytest.raises(DesignError, match="context_noise"):
        abstract_trace(lambda d, y=None: additive.model(d, effects="population", context_noise=True, y=y),
                       ctx.model_data(), ctx.y)
    with pytest.raises(DesignError, match="signalling_network does not model noise per group"):
        signalling_network._noise(ctx.model_data(), None, 1.0, likelihood="normal", noise_sd=None, misfit=None)
