"""Known or partly known measurement error (semimech.measurement.noise), replicates and duplicates."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech import measurement as me
from semimech.errors import DesignError
from semimech.infer.fit import DuplicateRowsWarning, UnreplicatedWarning, _warn_unreplicated
from semimech.measurement.noise import known_variance


def _frame(rows, *, genes=("g1", "g2"), seed=0, sd=0.2, batch=None):
    rng = np.random.default_rng(seed)
    f = pd.DataFrame(rng.normal(2.0, sd, (len(rows), len(genes))), columns=list(genes)).assign(perturbation=rows)
    if batch is not None:
        f["ctx"] = batch
    f.index = [f"r{i}" for i in range(len(rows))]
    return f


def _design(frame, **kw):
    genes = [c for c in frame.columns if c.startswith("g")]
    return sm.Design.from_frame(frame, readouts=genes, perturbation_key="perturbation", control="control", **kw)


def test_xmap_sd_on_the_log_scale_matches_simulated_assay_noise():
    """Known answer: raw values x with sd sqrt(a^2 + (c x)^2), put through log10(x + 1): the
    empirical sd of the transformed values is what the model uses (delta method), at low and
    high signal; the identity transform gives the raw sd (negative control: they differ)."""
    a, c = 10.0, 0.08  # relative sd 8-10%: where the delta method holds
    rng = np.random.default_rng(0)
    for x in (200.0, 5000.0):
        raw = x + np.sqrt(a**2 + (c * x) ** 2) * rng.standard_normal(200_000)
        emp = np.log10(raw + 1).std()
        data = me.xmap(additive=a, multiplicative=c).model_data(_design(_frame(["control", "a"])))
        model_sd = float(np.sqrt(known_variance(data, np.full(2, np.log10(x + 1)))[0]))
        assert model_sd == pytest.approx(emp, rel=0.03)
        raw_data = me.xmap(additive=a, multiplicative=c, transform="identity").model_data(_design(_frame(["control", "a"])))
        assert float(np.sqrt(known_variance(raw_data, np.full(2, x))[0])) == pytest.approx(np.hypot(a, c * x))


@pytest.mark.parametrize("make, match", [
    (lambda: me.fixed(0.0), "positive"),
    (lambda: me.fixed(-1.0), "positive"),
    (lambda: me.fixed({"g1": 0.1, "g2": float("nan")}), "'g2'"),
    (lambda: me.xmap(additive=-1, multiplicative=0.1), ">= 0"),
    (lambda: me.NoiseModel("fixed"), "needs sd"),
    (lambda: me.xmap(additive=1, multiplicative=0.1, transform="sqrt"), "transform"),
])
def test_bad_noise_models_are_clear_errors(make, match):
    with pytest.raises(DesignError, match=match):
        make()


def test_noise_models_must_fit_the_design():
    d = _design(_frame(["control", "a"]))
    with pytest.raises(DesignError, match="both 0"):
        d.with_noise(me.xmap(additive=0.0, multiplicative=0.0))
    with pytest.raises(DesignError, match="missing"):
        d.with_noise(me.fixed({"g1": 0.1}))
    with pytest.raises(DesignError, match="unknown"):
        d.with_noise(me.fixed({"g1": 0.1, "g2": 0.1, "g9": 0.1}))
    with pytest.raises(DesignError, match=r"NoiseModel .*got float\. For a known sd, pass semimech\.measurement\.fixed\(0\.1\)"):
        d.with_noise(0.1)
    with pytest.raises(DesignError, match=r"got str\.$"):  # no hint where no number was given
        d.with_noise("0.1")
    with pytest.raises(DesignError, match="from_replicates needs a semimech Design .*got NoneType"):
        me.from_replicates(None)  # was AttributeError: 'NoneType' object has no attribute 'y'


def test_replicate_sd_is_recovered_and_exact_copies_are_not_replicates():
    """Known answer: 40 conditions x 3 replicates with sd 0.3 give a pooled sd near 0.3; copies of
    a row add nothing (and alone they are an error naming them, not an sd of 0)."""
    rows = [f"p{i}" for i in range(40) for _ in range(3)]
    f = _frame(["control"] * 3 + rows, sd=0.3, seed=1)
    f.loc[:, ["g1", "g2"]] += np.repeat(np.random.default_rng(2).normal(0, 1, (41, 2)), 3, axis=0)
    noise = me.from_replicates(_design(f))
    assert noise.sd["g1"] == pytest.approx(0.3, rel=0.12) and noise.df["g1"] == 82
    copies = _frame(["control", "a", "a", "b", "b"])
    copies.iloc[2] = copies.iloc[1]
    copies.iloc[4] = copies.iloc[3]
    d = _design(copies)
    assert me.duplicate_rows(d) == [("r1", "r2"), ("r3", "r4")]
    with pytest.raises(DesignError, match="r2"):
        me.from_replicates(d)


def test_replicate_sd_reads_rows_by_position_when_their_names_repeat():
    """Two frames concatenated keep their indices, so row names repeat across them. Known answer: the pooled sd of the
    concatenated design is that of the same rows with a unique index (an exact copy dropped once). Before, the copy's
    *name* was dropped, and with it an unrelated row of the other frame that shares it (df 3, not 4)."""
    from semimech.errors import DuplicateNamesWarning
    from semimech.measurement.replicates import has_replicates, replicate_sd

    a = pd.DataFrame({"g1": [1.0, 1.0, 2.0, 3.0], "g2": [1.0, 1.0, 0.0, 4.0],
                      "perturbation": ["control", "control", "a", "a"]})
    b = pd.DataFrame({"g1": [5.0, 2.5, 2.0, 3.3], "g2": [1.2, 1.0, 0.3, 4.1],
                      "perturbation": ["b", "b", "control", "a"]})
    both = pd.concat([a, b])
    with pytest.warns(DuplicateNamesWarning, match=r"8 rows share 4 name\(s\).*reset_index\(drop=True\)"):
        repeated = _design(both)
    unique = _design(both.reset_index(drop=True))  # negative control of the warning: none here (warnings are errors)
    sd, df = replicate_sd(repeated)
    sd_u, df_u = replicate_sd(unique)
    assert df.tolist() == df_u.tolist() == [4.0, 4.0]  # 8 rows, 1 copy dropped, 3 conditions
    np.testing.assert_allclose(sd, sd_u)
    assert me.duplicate_rows(repeated) == [("0", "1")] and has_replicates(repeated)


def test_fit_reports_duplicated_rows():
    f = _frame(["control", "control", "a", "a", "b"])
    f.iloc[3] = f.iloc[2]
    with pytest.warns(DuplicateRowsWarning, match="r2, r3"):
        _warn_unreplicated(_design(f))


def test_resolution_floor_is_off_for_bulk_rows_and_on_for_cells():
    bulk = _design(_frame(["control", "a", "b", "a+b"] * 2))
    assert bulk.model_data()["noise_floor"] == 0.0
    cells = _design(_frame(["control", "a"] * 20))
    assert cells.model_data()["noise_floor"] > 0.0
    assert bulk.with_noise(me.learned(resolution_floor=True)).model_data()["noise_floor"] > 0.0
    assert cells.with_noise(me.learned(resolution_floor=False)).model_data()["noise_floor"] == 0.0


def test_unreplicated_warning_only_when_noise_and_effects_are_not_identified():
    """One row per condition: the warning fires for context-specific effects, not when an effect
    is shared across contexts (residual degrees of freedom), nor with a known noise model."""
    ctx = ["c1"] * 3 + ["c2"] * 3 + ["c3"] * 3
    shared = _design(_frame(["control", "a", "b"] * 3, batch=ctx), batch_key="ctx")
    specific = _design(_frame(["control", "a@c1", "b@c1", "control", "a@c2", "b@c2", "control", "a@c3", "b@c3"],
                              batch=ctx), batch_key="ctx")
    with pytest.warns(UnreplicatedWarning):
        _warn_unreplicated(specific)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_unreplicated(shared)
        _warn_unreplicated(specific.with_noise(me.fixed(0.1)))
        _warn_unreplicated(specific, noise_given=True)  # a model option sets the noise (signalling noise_sd)


def test_a_noise_option_silences_the_unreplicated_warning_in_a_fit():
    """Through _prepare as a fit calls it: the signalling model's noise_sd option is a known noise;
    without it the same unreplicated design warns (negative control)."""
    from semimech.infer.fit import _prepare
    from semimech.models import signalling_network as sn

    ctx = ["c1"] * 3 + ["c2"] * 3 + ["c3"] * 3
    specific = _design(_frame(["control", "a@c1", "b@c1", "control", "a@c2", "b@c2", "control", "a@c3", "b@c3"],
                              batch=ctx), batch_key="ctx")
    with pytest.warns(UnreplicatedWarning):
        _prepare(sn.SPEC, specific, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _prepare(sn.SPEC, specific, {"noise_sd": 0.1})


def test_known_noise_sets_the_observation_interval_and_survives_save_load(tmp_path):
    """Known answer: with a fixed sd of 0.5 and many replicates of the mean, the sd of the
    'observed_mean' draws of one new observation is about 0.5, whatever the data's spread (0.05)."""
    f = _frame(["control", "a"] * 30, sd=0.05)
    d = _design(f).with_noise(me.fixed(0.5))
    from semimech.models import additive

    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=300, num_samples=200, progress_bar=False)
    assert np.all(fit.flat("noise_sd") == 0.0)  # nothing left to learn
    pred = sm.predict(fit, ["a"], rng_key=1, num_cells=1)
    assert pred.draws["observed_mean"].std(0).mean() == pytest.approx(0.5, rel=0.15)
    fit.save(tmp_path / "f")
    again = sm.load(tmp_path / "f")
    assert again.design.noise == d.noise
    counts = _design(_frame(["control", "a"]).assign(g1=[3, 5], g2=[0, 2]), counts=True)
    with pytest.raises(DesignError, match="counts"):
        counts.with_noise(me.fixed(0.5))
