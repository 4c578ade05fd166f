"""Probes of the public API (issue 15): each bad input gets a clear semimech error, good input still works."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import DesignError, PredictionError

LABELS = np.repeat(["control", "A", "B"], 4)


def _adata(X, genes=("g0", "g1", "g2"), labels=LABELS):
    obs = pd.DataFrame({"p": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)))


def _counts(seed=0):
    return np.random.default_rng(seed).poisson(5, size=(12, 3)).astype(np.float32)


def _build(adata, **kw):
    return sm.Design.from_anndata(adata, perturbation_key="p", control="control", **kw)


# ---------------------------------------------------------------- duplicate gene names

def test_duplicate_var_names_are_an_error_naming_them():
    with pytest.warns(UserWarning, match="not unique"):  # anndata's own warning
        dup = _adata(_counts(), genes=("g0", "g0", "g1"))
    with pytest.raises(DesignError, match=r"gene names are not unique: \['g0'\].*var_names_make_unique"):
        _build(dup)
    with pytest.raises(DesignError, match=r"var_names of the genes= chosen are not unique: \['g0'\]"):
        _build(dup, genes=["g0", "g1"])  # would silently take the last g0 column
    assert _build(dup, genes=["g1"]).genes == ("g1",)  # negative control: the duplicate is not chosen


def test_repeated_cell_names_are_a_warning_naming_them_and_the_fix():
    from semimech.errors import DuplicateNamesWarning

    frame = pd.DataFrame(_counts(), columns=["g0", "g1", "g2"]).assign(p=LABELS)
    twice = pd.concat([frame.iloc[:6], frame.iloc[6:].reset_index(drop=True)])  # the second half's index restarts at 0
    with pytest.warns(DuplicateNamesWarning, match=r"12 rows share 6 name\(s\) \('0', '1', '2', '3', '4' \.\.\.\).*"
                                                  r"pd.concat\(\.\.\., ignore_index=True\)"):
        d = sm.Design.from_frame(twice, readouts=["g0", "g1", "g2"], perturbation_key="p", control="control")
    assert d.n_obs == 12 and np.array_equal(d.dense_y(), frame[["g0", "g1", "g2"]].to_numpy())  # every row kept, in order
    with pytest.warns(UserWarning, match="not unique"):  # anndata's own warning
        dup = ad.AnnData(X=_counts(), obs=pd.DataFrame({"p": LABELS}, index=["c0", "c1"] * 6))
    with pytest.warns(DuplicateNamesWarning, match=r"obs_names_make_unique"):
        _build(dup)
    # negative control: unique names give no warning (warnings are errors in this suite)
    assert _build(_adata(_counts())).n_obs == 12


def test_duplicate_genes_argument_is_an_error():
    with pytest.raises(DesignError, match=r"genes= are not unique: \['g0'\]"):
        _build(_adata(_counts()), genes=["g0", "g0"])
    assert _build(_adata(_counts()), genes=["g2", "g0"]).genes == ("g2", "g0")


def test_duplicate_readout_columns_of_a_frame_are_an_error():
    frame = pd.DataFrame(_counts(), columns=["g0", "g1", "g2"]).assign(p=LABELS)
    with pytest.raises(DesignError, match=r"readouts are not unique: \['g0'\]"):
        sm.Design.from_frame(frame, readouts=["g0", "g0"], perturbation_key="p", control="control")
    twice = frame.set_axis(["g0", "g0", "g2", "p"], axis=1)
    with pytest.raises(DesignError, match=r"readout columns \['g0'\] occur more than once in the frame"):
        sm.Design.from_frame(twice, readouts=["g0", "g2"], perturbation_key="p", control="control")
    d = sm.Design.from_frame(frame, readouts=["g0", "g2"], perturbation_key="p", control="control")
    assert d.dense_y().shape == (12, 2)


# ---------------------------------------------------------------- counts or continuous

def test_huge_whole_floats_are_not_counts():
    rng = np.random.default_rng(1)
    huge = np.abs(rng.normal(size=(12, 3))) * 1e30  # every float this large is a whole number
    assert np.all(np.mod(huge, 1) == 0)
    assert _build(_adata(huge)).is_counts is False
    with pytest.raises(DesignError, match="above the largest plausible count 2147483647"):
        _build(_adata(huge), counts=True)
    # negative controls: real counts, as floats or integers, up to the bound, are counts
    assert _build(_adata(_counts())).is_counts is True
    assert _build(_adata(_counts().astype(np.int64))).is_counts is True
    edge = _counts().astype(np.float64)  # float32 cannot hold 2**31 - 1 exactly
    edge[0, 0] = 2**31 - 1
    assert _build(_adata(edge)).is_counts is True
    edge[0, 0] = 2**31
    assert _build(_adata(edge)).is_counts is False


# ---------------------------------------------------------------- a design with nothing perturbed

def test_a_label_used_as_its_own_control_is_an_error_at_design_time():
    only = _adata(_counts(), labels=np.repeat(["A"], 12))
    with pytest.raises(DesignError, match="every row has the control label 'A': the design has no perturbed"):
        sm.Design.from_anndata(only, perturbation_key="p", control="A")
    frame = pd.DataFrame(_counts(), columns=["g0", "g1", "g2"]).assign(p="ctrl")
    with pytest.raises(DesignError, match="no perturbed condition"):
        sm.Design.from_frame(frame, readouts=["g0"], perturbation_key="p", control="ctrl")
    two = _adata(_counts(), labels=np.repeat(["ctrl", "A"], 6))  # negative control: one perturbation suffices
    assert sm.Design.from_anndata(two, perturbation_key="p", control="ctrl").targets == ("A",)


# ---------------------------------------------------------------- strings among the readouts

def test_strings_in_x_name_the_gene_and_row():
    X = _counts().astype(object)
    X[3, 1] = "n/a"
    with pytest.raises(DesignError, match=r"readout \(gene\) 'g1' holds non-numeric values \(1 of 12, e.g. 'n/a' "
                                          r"in row 'c3'\)"):
        _build(_adata(X))


def test_strings_in_a_frame_readout_column_name_the_column():
    frame = pd.DataFrame(_counts(), columns=["g0", "g1", "g2"], index=[f"s{i}" for i in range(12)]).assign(p=LABELS)
    frame["g2"] = frame["g2"].astype(object)
    frame.loc["s5", "g2"] = "12,5"
    frame.loc["s7", "g2"] = "high"
    with pytest.raises(DesignError, match=r"readout column 'g2' holds non-numeric values \(2 of 12, e.g. '12,5' in "
                                          r"row 's5'\)"):
        sm.Design.from_frame(frame, readouts=["g0", "g2"], perturbation_key="p", control="control")
    numeric = frame.assign(g2=pd.to_numeric(frame["g2"], errors="coerce").fillna(1.0))  # negative control
    assert sm.Design.from_frame(numeric, readouts=["g0", "g2"], perturbation_key="p", control="control").n_genes == 2


# ---------------------------------------------------------------- num_cells in predict

def test_num_cells_must_match_the_labels():
    from semimech.infer.predict import _num_cells

    labels = ["A", "B"]
    with pytest.raises(PredictionError, match=r"num_cells has shape \(3,\): expected one number, or 2 numbers"):
        _num_cells([10, 20, 30], labels)
    with pytest.raises(PredictionError, match=r"shape \(1, 2\)"):
        _num_cells([[10, 20]], labels)
    with pytest.raises(PredictionError, match="a number or one number per label"):
        _num_cells(["a", "b"], labels)
    with pytest.raises(PredictionError, match="positive and finite"):
        _num_cells([10, 0], labels)
    np.testing.assert_array_equal(_num_cells(7, labels), [7.0, 7.0])
    np.testing.assert_array_equal(_num_cells([7, 9], labels), [7.0, 9.0])


def test_predict_reports_a_num_cells_of_the_wrong_length(small_counts_adata):
    """...and the other bad arguments of ``predict`` and ``Fit.flat`` found by probing (nothing to predict, a string
    as seed, an unknown site), each against the good call beside it."""
    from semimech.models import additive

    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    fit = sm.fit_svi(additive.SPEC, d.pseudobulk(), rng_key=0, num_steps=5, num_samples=5, progress_bar=False)
    with pytest.raises(PredictionError, match="expected one number, or 2 numbers"):
        sm.predict(fit, ["A", "B"], rng_key=0, num_cells=[10, 20, 30])
    assert sm.predict(fit, ["A", "B"], rng_key=0, num_cells=[10, 20]).draws["observed_mean"].shape[1] == 2
    with pytest.raises(PredictionError, match="predict needs what to predict.*got NoneType"):
        sm.predict(fit, None, rng_key=0)
    for bad in (-1, 2.5, True):  # -1 and 2.5 were taken silently (a negative count skipped the check)
        with pytest.raises(PredictionError, match=rf"steady_state_draws must be an integer >= 0 \(0 skips the steady-state check\), got {bad!r}"):
            sm.predict(fit, ["A"], rng_key=0, steady_state_draws=bad)
    with pytest.raises(TypeError, match="rng_key must be an int or a jax.random key, got str"):
        sm.predict(fit, ["A"], rng_key="A")
    with pytest.raises(KeyError, match="'nope' is not a site of this 'additive' fit; its sites: .*'effect'"):
        fit.flat("nope")
    assert fit.flat("effect").shape[0] == 5


# ---------------------------------------------------------------- the fits' counts, rates, seed and model

@pytest.mark.parametrize("kwargs, match", [
    ({"num_steps": 0}, r"num_steps must be a positive integer \(SVI steps\), got 0"),
    ({"num_steps": -5}, r"num_steps must be a positive integer \(SVI steps\), got -5"),
    ({"num_steps": 2.5}, r"num_steps must be a positive integer \(SVI steps\), got 2.5"),
    ({"num_samples": 0}, r"num_samples must be a positive integer \(posterior draws\), got 0"),
    ({"learning_rate": -0.1}, r"learning_rate must be a finite positive number, got -0.1"),
    ({"learning_rate": float("nan")}, r"learning_rate must be a finite positive number, got nan"),
    ({"restarts": True}, r"restarts must be a positive integer"),
    ({"rng_key": "abc"}, r"rng_key must be an int or a jax.random key, got str 'abc'"),
    ({"rng_key": 1.5}, r"rng_key must be an int or a jax.random key, got float"),
])
def test_fit_svi_names_a_bad_count_rate_or_seed_before_tracing(small_counts_adata, kwargs, match):
    """Each used to fail late or not at all: ``num_steps=0`` as "the loss became NaN at step 0", ``num_samples=0`` in a
    JAX reshape, a negative learning rate climbed the loss, a string seed in JAX's dtype check. (The good values
    beside them: every fit of the suite; here ``test_predict_reports_a_num_cells_of_the_wrong_length``.)"""
    from semimech.errors import InferenceError
    from semimech.models import additive

    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    args = {"rng_key": 0, "num_steps": 5, "num_samples": 5, "progress_bar": False, **kwargs}
    with pytest.raises(TypeError if "rng_key" in kwargs else InferenceError, match=match):
        sm.fit_svi(additive.SPEC, d.pseudobulk(), **args)


def test_the_fits_name_a_model_given_by_name_and_bad_nuts_counts(small_counts_adata):
    from semimech.errors import InferenceError
    from semimech.models import additive

    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control").pseudobulk()
    for fit in (sm.fit_svi, sm.fit_nuts, sm.fit):
        with pytest.raises(InferenceError, match=r"must be a semimech ModelSpec, got str 'additive'; pass "
                                                 r"semimech.models.get\('additive'\)"):
            fit("additive", d, rng_key=0, progress_bar=False)
    with pytest.raises(InferenceError, match="must be a semimech ModelSpec, got str 'additive'"):
        sm.sample_prior("additive", d, rng_key=0)
    with pytest.raises(InferenceError, match="must be a semimech ModelSpec, got str 'additive'"):
        sm.fit_svi_minibatch("additive", d, rng_key=0, batch_size=2, num_steps=2)
    for kwargs, match in (({"learning_rate": 0.0}, "learning_rate must be a finite positive number, got 0.0"),
                          ({"num_samples": -1}, r"num_samples must be a positive integer \(posterior draws\)")):
        with pytest.raises(InferenceError, match=match):
            sm.fit_svi_minibatch(additive.SPEC, d, rng_key=0, batch_size=2, num_steps=2, **kwargs)
    for kwargs, match in (({"num_warmup": -1}, "num_warmup must be an integer >= 0"),
                          ({"num_samples": 0}, "num_samples must be a positive integer"),
                          ({"num_chains": 0}, "num_chains must be a positive integer")):
        with pytest.raises(InferenceError, match=match):
            sm.fit_nuts(additive.SPEC, d, rng_key=0, progress_bar=False, **kwargs)


def test_a_misspelt_model_option_is_named_with_the_close_ones(small_counts_adata):
    """``effect_prior=`` for ``effect_prior_scale=`` was a ``TypeError`` from inside the trace ("model() got an
    unexpected keyword argument"), after the set-up; now every entry point names it and its neighbours first."""
    from semimech.models import additive

    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control").pseudobulk()
    match = r"model 'additive' has no option 'effect_prior'\. Did you mean 'effect_prior_scale'"
    for call in (lambda: sm.fit_svi(additive.SPEC, d, rng_key=0, progress_bar=False, effect_prior=1.0),
                 lambda: sm.fit_nuts(additive.SPEC, d, rng_key=0, progress_bar=False, effect_prior=1.0),
                 lambda: sm.fit(additive.SPEC, d, rng_key=0, effect_prior=1.0),
                 lambda: sm.sample_prior(additive.SPEC, d, rng_key=0, num_samples=2, effect_prior=1.0),
                 lambda: sm.fit_svi_minibatch(additive.SPEC, d, rng_key=0, batch_size=2, num_steps=2, effect_prior=1.0)):
        with pytest.raises(DesignError, match=match):
            call()
    # the right name is taken; a model that takes **options is not second-guessed
    assert sm.sample_prior(additive.SPEC, d, rng_key=0, num_samples=2, effect_prior_scale=1.0) is not None

    def open_model(data, *, y=None, **options):
        import numpyro
        import numpyro.distributions as dist

        with numpyro.plate("genes", data["n_genes"], dim=-1):
            m = numpyro.sample("m", dist.Normal(0.0, options.get("scale", 1.0)))
            with numpyro.plate("cells", data["n_obs"], dim=-2):
                numpyro.sample("y", dist.Normal(m, 1.0), obs=y)

    spec = sm.ModelSpec(name="open", model=open_model, assumes="nothing")
    assert sm.sample_prior(spec, d, rng_key=0, num_samples=2, scale=2.0) is not None


def test_prior_draws_minibatch_steps_and_epochs_are_whole_counts(small_counts_adata):
    """``sample_prior(num_samples=2.5)``, ``fit_svi_minibatch(num_steps=2.5)`` and ``cross_validate(num_steps=2.5)``
    were truncated to 2 by ``int()``; a NaN ``num_epochs`` failed in ``round``. Each is a DesignError naming it."""
    from semimech.evaluate.cv import _steps
    from semimech.models import additive

    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    with pytest.raises(DesignError, match=r"num_samples must be a positive integer \(prior draws\), got 2.5"):
        sm.sample_prior(additive.SPEC, d, rng_key=0, num_samples=2.5)
    for kwargs, match in (({"num_steps": 2.5}, r"num_steps must be a positive integer \(SVI steps\), got 2.5"),
                          ({"num_epochs": float("nan")}, r"num_epochs must be a finite number > 0, got nan"),
                          ({"num_steps": 2, "batch_size": 2.5}, r"batch_size must be a positive integer \(rows per")):
        with pytest.raises(DesignError, match=match):
            sm.fit_svi_minibatch(additive.SPEC, d, rng_key=0, **{"batch_size": 4, **kwargs})
    with pytest.raises(DesignError, match=r"num_steps must be a positive integer \(refit SVI steps\), got 2.5"):
        _steps(None, 2.5)
    assert _steps(None, 7) == 7


# ---------------------------------------------------------------- the time-course fits' settings

_TC_BAD = [
    ({"num_steps": 0}, "InferenceError", r"num_steps must be a positive integer \((SVI|Adam) steps\), got 0"),
    ({"num_steps": -1}, "InferenceError", r"num_steps must be a positive integer"),
    ({"num_steps": 2.5}, "InferenceError", r"num_steps must be a positive integer .*got 2.5"),
    ({"learning_rate": -1.0}, "InferenceError", r"learning_rate must be a finite positive number, got -1.0"),
    ({"learning_rate": float("nan")}, "InferenceError", r"learning_rate must be a finite positive number, got nan"),
    ({"max_steps": 0}, "InferenceError", r"max_steps must be a positive integer \(ODE solver steps per solve\)"),
    ({"num_samples": 0}, "InferenceError", r"num_samples must be a positive integer \(posterior draws\), got 0"),
    ({"method": "nuts", "num_warmup": -1}, "InferenceError", r"num_warmup must be an integer >= 0"),
    ({"onset_scale": -1.0, "onset": "latent"}, "DesignError", r"onset_scale must be a finite number > 0, got -1.0"),
    ({"steady_state_weight": float("nan")}, "DesignError", r"steady_state_weight must be a finite number >= 0, got nan"),
    ({"steady_state_tau": 0.0}, "DesignError", r"steady_state_tau must be a finite number > 0, got 0.0"),
    ({"prior_scale": 0.0}, "DesignError", r"prior_scale must be a finite number > 0, got 0.0"),
]


@pytest.mark.parametrize("name", ["time_course", "neural_ode", "neural_ode_bayes"])
def test_time_course_fits_name_a_bad_setting_before_tracing(name):
    """Each used to fail late, foreign or not at all: ``num_steps=-1`` in MLIR ("invalid tensor dimension size"),
    ``num_steps=0`` as "every optimisation step failed", ``max_steps=0`` inside diffrax ("at least one checkpoint"),
    a negative rate, a fractional step count, ``num_samples=0``, a negative onset scale and a NaN steady-state
    weight silently fitted (20-30 s each), ``prior_scale=0`` as NumPyro's "invalid scale parameter". Each is now
    raised before anything is traced. (The good values beside them: tests/test_time_course_model.py,
    test_neural_ode.py and test_neural_ode_bayes.py fit each model.)"""
    import inspect

    from semimech import errors, models
    from semimech.timecourse import time_course_design

    rng = np.random.default_rng(0)
    tc = time_course_design(np.abs(rng.normal(size=(8, 2))) + 1, time=[0, 1] * 4,
                            condition=["control"] * 4 + ["A"] * 4, covariates={"control": [0.0], "A": [1.0]},
                            control="control")
    fit = models.TIME_COURSE[name].fit
    params = inspect.signature(fit).parameters
    tried = 0
    for kwargs, error, match in _TC_BAD:
        if not set(kwargs) <= set(params):
            continue
        with pytest.raises(getattr(errors, error), match=match):
            fit(tc, rng_key=0, **{"num_steps": 2, **kwargs})
        tried += 1
    assert tried >= 6


# ---------------------------------------------------------------- which interval a Prediction gives by default

def _prediction(with_observed: bool):
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(200, 2, 3))
    draws = {"mean": mean}
    if with_observed:
        draws["observed_mean"] = mean + rng.normal(scale=2.0, size=mean.shape)
    return sm.Prediction(perturbations=("A", "B"), genes=("g0", "g1", "g2"), draws=draws, control="control",
                         model="test")


def test_default_interval_is_the_one_for_an_observation():
    p = _prediction(True)
    lo, hi = p.interval(0.9)
    np.testing.assert_array_equal(lo, p.interval(0.9, kind="observed_mean")[0])
    assert np.all(hi - lo > p.interval(0.9, kind="mean")[1] - p.interval(0.9, kind="mean")[0])
    pd.testing.assert_frame_equal(p.to_frame(), p.to_frame(kind="observed_mean"))
    np.testing.assert_array_equal(p.to_anndata().layers["q95"], p.to_anndata(kind="observed_mean").layers["q95"])
    n_draws, n_rows, n_genes = p.draws["mean"].shape  # the repr: shapes, not a wall of draws
    assert repr(p) == (f"Prediction(model={p.model!r}, {n_rows} conditions x {n_genes} genes; draws: "
                       f"mean ({n_draws}, {n_rows}, {n_genes}), observed_mean ({n_draws}, {n_rows}, {n_genes}))")


def test_without_num_cells_the_default_says_which_kind_to_ask_for():
    p = _prediction(False)
    for call in (lambda: p.interval(0.9), p.to_frame, p.summary, p.to_anndata):
        with pytest.raises(PredictionError, match="num_cells=.*kind='mean'"):
            call()
    lo, hi = p.interval(0.9, kind="mean")  # explicit: the population mean
    assert lo.shape == (2, 3) and np.all(hi > lo)
    assert list(p.to_frame(kind="mean").columns)[:4] == ["perturbation", "gene", "mean", "sd"]


# ---------------------------------------------------------------- design construction (audit A: F5, F8-F13, F15, F16)

def _frame(**cols):
    frame = pd.DataFrame(_counts(), columns=["g0", "g1", "g2"], index=[f"s{i}" for i in range(12)]).assign(p=LABELS)
    return frame.assign(**cols)


def _from_frame(frame, **kw):
    return sm.Design.from_frame(frame, **{"readouts": ["g0", "g1"], "perturbation_key": "p", "control": "control",
                                          **kw})


def test_a_control_of_the_label_columns_own_type_names_its_text_label():
    """F5/F16: labels are read as text, so ``control=0`` on an int column named a label ('0') the message listed."""
    ints = _frame(p=np.repeat([0, 1, 2], 4))
    d = _from_frame(ints, control=0)
    assert d.control == "0" and d.perturbations == ("0", "1", "2") and d.targets == ("1", "2")
    assert _from_frame(ints, control=np.int64(0)).control == "0"
    assert _from_frame(_frame(p=np.repeat([0.0, 1.0, 2.0], 4)), control=0.0).control == "0.0"
    assert _from_frame(_frame(p=np.repeat([False, True, True], 4)), control=False).perturbations == ("False", "True")
    for bad in (["control"], ("control", "NT"), {"control"}, np.array(["control"])):
        with pytest.raises(DesignError, match=r"control= must be one label, the label of the unperturbed rows; got "
                                              rf"{type(bad).__name__} .*relabel them to one first"):
            _from_frame(_frame(), control=bad)
    with pytest.raises(DesignError, match=r"got list \['control'\]\. Pass that single label \(control='control'\)"):
        sm.Design.from_frame(_frame(d=["none"] * 4 + ["X"] * 8), readouts=["g0"], factors={"drug": "d"},
                             control=["control"])


def test_size_factors_that_are_not_numbers_name_the_column_and_row():
    """F8: a text column was a raw pandas ValueError; NaN / 0 named neither the column nor the row."""
    with pytest.raises(DesignError, match=r"size_factor_key 'sf' holds non-numeric values \(12 of 12, e.g. 'x' in "
                                          r"row 's0'\)\. Size factors must be positive numbers"):
        _from_frame(_frame(sf="x"), size_factor_key="sf")
    with pytest.raises(DesignError, match=r"size_factor_key 'sf' must hold one positive finite number per row; 1 of "
                                          r"12 rows do not \(e.g. nan in row 's7'\)"):
        _from_frame(_frame(sf=[1.0] * 7 + [np.nan] + [1.0] * 4), size_factor_key="sf")
    adata = _adata(_counts())
    adata.obs["sf"] = ["1.0"] * 11 + ["big"]
    with pytest.raises(DesignError, match=r"size_factor_key 'sf' holds non-numeric values \(1 of 12, e.g. 'big' in "
                                          r"row 'c11'\)"):
        _build(adata, size_factor_key="sf")
    adata.obs["sf"] = np.r_[np.ones(11), 0.0]
    with pytest.raises(DesignError, match=r"1 of 12 rows do not \(e.g. 0.0 in row 'c11'\)"):
        _build(adata, size_factor_key="sf")
    with pytest.raises(DesignError, match=r"n_cells_key 'n' holds non-numeric values"):
        _from_frame(_frame(n="x"), n_cells_key="n")
    sf = np.linspace(0.5, 1.5, 12)  # negative controls: numbers, and numbers written as text, are read
    np.testing.assert_allclose(_from_frame(_frame(sf=sf), size_factor_key="sf").size_factors, sf)
    adata.obs["sf"] = [str(x) for x in sf]
    np.testing.assert_allclose(_build(adata, size_factor_key="sf").size_factors, sf)


@pytest.mark.parametrize("col, kind", [
    (pd.date_range("2020-01-01", periods=12), r"datetime64\[ns\] values, not real numbers.*nanoseconds since 1970"),
    (pd.to_timedelta(np.arange(12), unit="h"), r"timedelta64\[ns\] values, not real numbers.*as nanoseconds"),
    (np.arange(12) + 1j, r"complex128 values, not real numbers.*keep only the real part"),
    (pd.Categorical(pd.date_range("2020-01-01", periods=12)), r"categorical datetime64\[ns\] values"),
])
def test_dates_durations_and_complex_readouts_are_an_error(col, kind):
    """F9: a date column was read as nanoseconds since 1970 (1.58e18), a complex one kept its real part."""
    with pytest.raises(DesignError, match=rf"readout column 'g1' holds {kind}"):
        _from_frame(_frame(g1=col))
    X = _counts().astype(np.complex64)
    with pytest.raises(DesignError, match=r"readouts hold complex64 values, not real numbers"):
        _build(_adata(X))


def test_the_readout_dtypes_that_are_numbers_still_convert():
    """F9's negative control: ints, bools, nullable numbers, numeric text and numeric-text categories are read."""
    for col in (np.arange(12), np.arange(12) % 2 == 0, pd.array(range(12), dtype="Int64"),
                pd.array(np.arange(12.0), dtype="Float64"), pd.array([True, False] * 6, dtype="boolean"),
                [str(i) for i in range(12)], pd.Categorical([str(i) for i in range(12)]),
                pd.array([str(i) for i in range(12)], dtype="string"), np.arange(12, dtype=np.float32)):
        y = _from_frame(_frame(g1=col)).dense_y()[:, 1]
        np.testing.assert_array_equal(y, np.asarray(pd.Series(col).astype(float)))


def test_target_sep_must_be_a_non_empty_string():
    """F10: '' was a raw "empty separator"; None split on whitespace and took 'A+B' for one target."""
    combo = _frame(p=np.repeat(["control", "A", "B", "A+B"], 3))
    for bad, shown in (("", "str ''"), (None, "NoneType None"), (1, "int 1")):
        with pytest.raises(DesignError, match=rf"target_sep must be a non-empty string.*got {shown}\. Pass the "
                                              "separator your labels use"):
            _from_frame(combo, target_sep=bad)
        with pytest.raises(DesignError, match="target_sep must be a non-empty string"):
            _build(_adata(_counts(), labels=np.repeat(["control", "A", "B", "A+B"], 3)), target_sep=bad)
    assert _from_frame(combo).targets == ("A", "B")
    assert _from_frame(combo.assign(p=combo["p"].str.replace("+", "_")), target_sep="_").targets == ("A", "B")


@pytest.mark.parametrize("seed, match", [
    (True, r"rng_key must be an int or a jax.random key, got bool True"),
    (np.False_, r"rng_key must be an int or a jax.random key, got bool"),
    (2**64, r"rng_key 18446744073709551616 is outside the seeds JAX accepts \(a 64-bit integer"),
    (-(2**63) - 1, r"rng_key -9223372036854775809 is outside the seeds JAX accepts"),
])
def test_a_bool_or_out_of_range_seed_is_refused(seed, match):
    """F11: ``rng_key=True`` was seed 1 (the count arguments refuse bools); 2**64 a raw OverflowError inside JAX."""
    from semimech._rng import as_key

    with pytest.raises(TypeError, match=match):
        as_key(seed)


def test_the_seeds_accepted_before_still_are():
    from semimech._rng import as_key

    for seed in (0, -1, np.int64(-5), np.uint32(7), np.uint64(5), 2**63 - 1, -(2**63)):
        assert as_key(seed).shape == (2,)
    np.testing.assert_array_equal(as_key(np.int64(3)), as_key(3))


def test_a_wrong_container_points_to_the_right_constructor():
    """F12: from_frame(Series / array / AnnData) and from_anndata(DataFrame) were AttributeErrors."""
    frame, adata = _frame(), _adata(_counts())
    with pytest.raises(DesignError, match=r"from_frame needs a pandas DataFrame, got a Series \('g0'\).*to_frame"):
        _from_frame(frame["g0"])
    with pytest.raises(DesignError, match=r"from_frame needs a pandas DataFrame.*got ndarray\. Wrap an array"):
        _from_frame(frame.to_numpy())
    with pytest.raises(DesignError, match=r"from_frame needs a pandas DataFrame, got an AnnData: use "
                                          r"Design.from_anndata"):
        _from_frame(adata)
    with pytest.raises(DesignError, match=r"from_anndata needs an AnnData, got a DataFrame: use Design.from_frame"):
        _build(frame)
    with pytest.raises(DesignError, match=r"from_anndata needs an AnnData .*got ndarray"):
        _build(_counts())
    with pytest.raises(DesignError, match=r"readouts= must name the measured columns .*got NoneType None"):
        _from_frame(frame, readouts=None)
    d = _from_frame(frame, readouts=(c for c in ["g0", "g2"]))  # a generator is read once, not refused
    assert d.genes == ("g0", "g2") and d.dense_y().shape == (12, 2)


def test_an_anndata_without_x_names_its_layers():
    """F13: X=None read as "a 2-D matrix, got shape ()" without saying X is None or to pass layer=."""
    adata = _adata(_counts())
    adata.layers["counts"] = adata.X.copy()
    adata.X = None
    with pytest.raises(DesignError, match=r"adata.X is None: this AnnData holds its readouts in a layer\. Pass "
                                          r"layer= one of \['counts'\]"):
        _build(adata)
    assert _build(adata, layer="counts").is_counts
    del adata.layers["counts"]
    with pytest.raises(DesignError, match="adata.X is None and adata has no layers"):
        _build(adata)


def test_a_missing_label_turned_into_text_is_not_a_target():
    """F15: ``.astype(str)`` turns a missing label into 'nan', which became a target 'nan'."""
    lab = pd.Series(list(LABELS[:10]) + [np.nan, None], dtype=object).astype(str)  # 'nan', 'None'
    with pytest.raises(DesignError, match=r"2 rows have a perturbation label that reads as a missing value turned "
                                          r"into text \(\['None', 'nan'\]\), e.g. by .astype\(str\).*Drop those rows"):
        _from_frame(_frame(p=lab.to_numpy()))
    with pytest.raises(DesignError, match=r"4 rows have a perturbation label .*\(\['A\+<NA>'\]\)"):
        _from_frame(_frame(p=np.repeat(["control", "A", "A+<NA>"], 4)))
    with pytest.raises(DesignError, match=r"6 rows have a batch label that reads as a missing value"):
        _from_frame(_frame(b=["b1"] * 6 + ["NaN"] * 6), batch_key="b")
    with pytest.raises(DesignError, match=r"row 's8', column 'd': value 'nan' reads as a missing value turned into "
                                          r"text.*list it in none="):
        sm.Design.from_frame(_frame(d=["none"] * 4 + ["X"] * 4 + ["nan"] * 4), readouts=["g0"], factors={"drug": "d"})
    ok = sm.Design.from_frame(_frame(d=["none"] * 4 + ["X"] * 4 + ["nan"] * 4), readouts=["g0"],
                              factors={"drug": "d"}, none=("none", "nan"))  # negative control: declared as no level
    assert ok.targets == ("X",)
    assert _from_frame(_frame(p=np.repeat(["control", "Nanog", "A+Nanog"], 4))).targets == ("A", "Nanog")


def test_numeric_model_options_are_checked_by_name_before_anything_is_traced(norman_design):
    """Bad-input audit F3: ``effect_prior_scale=-1`` reached NumPyro as "Normal distribution got invalid scale
    parameter" (no option named), ``"0.5"`` a UFuncTypeError, ``interaction_slab=-2`` was accepted. The kind of each
    numeric option is read from its default; the defaults and good values pass (the negative control)."""
    from semimech.infer.fit import check_option_values
    from semimech.models import REGISTRY, additive

    bad = [(additive.SPEC, "effect_prior_scale", -1.0), (additive.SPEC, "effect_prior_scale", 0.0),
           (additive.SPEC, "effect_prior_scale", float("nan")), (additive.SPEC, "effect_prior_scale", "0.5"),
           (additive.SPEC, "interaction_slab", -2.0), (additive.SPEC, "effect_programs", 1.7),
           (additive.SPEC, "effect_programs", True), (REGISTRY["latent_programs"], "n_programs", -3),
           (REGISTRY["signalling_network"], "edge_prior", (0.0, -1.0)),
           (REGISTRY["signalling_network"], "basal_prior", 2.0), (REGISTRY["signalling_network"], "misfit", -1.0)]
    for spec, name, value in bad:
        with pytest.raises(DesignError, match=rf"^{name}('s \w+)? must be"):
            check_option_values(spec, {name: value})
    with pytest.raises(DesignError, match="effect_prior_scale must be a finite number > 0, got -1.0"):
        sm.fit_svi(additive.SPEC, norman_design.pseudobulk(), rng_key=0, num_steps=5, num_samples=5,
                   progress_bar=False, effect_prior_scale=-1.0)
    for spec in REGISTRY.values():  # every registered model's own defaults pass
        check_option_values(spec, dict(spec.default_options))
    check_option_values(additive.SPEC, {"effect_prior_scale": 0.3, "interaction_slab": 4, "effect_programs": 0})
    check_option_values(REGISTRY["signalling_network"], {"misfit": None, "edge_prior": [-0.5, 1.2]})
