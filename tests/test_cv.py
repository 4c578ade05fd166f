"""Cross-validation over held-out units: row masks, prior draws for unseen latents, refits.

Known answers: a masked row contributes nothing to the log density (exactly the log density
of the design without it); after a refit the interaction of a held-out combination is drawn
from its prior N(0, 1) whatever the warm start said; on additive data the additive model
predicts held-out combinations of seen singles far better than a model whose effects are
forced to zero (the negative control).
"""

import numpy as np
import pandas as pd
import pytest
from numpyro.infer.util import log_density

import semimech as sm
from semimech.errors import DesignError
from semimech.evaluate import cross_validate, unit_labels
from semimech.evaluate.cv import _unseen
from semimech.models import additive


@pytest.fixture(scope="module")
def design(additive_screen):
    return additive_screen.pseudobulk()


@pytest.fixture(scope="module")
def fit(design):
    return sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=400, num_samples=100, progress_bar=False)


def test_unit_labels(design):
    combos = [p for p in design.perturbations if "+" in p]
    labs = unit_labels(design, "combination")
    assert set(labs[labs != None]) == set(combos)  # noqa: E711
    assert set(unit_labels(design, "combinable")[labs != None]) == set(combos)  # every single observed  # noqa: E711
    pert = unit_labels(design, "perturbation")
    assert pert[design.perturbation_index == 0].tolist() == [None]            # controls never left out
    singles = unit_labels(design, "single")
    assert {u for u in singles if u is not None} == {f"T{i}" for i in range(5)}
    # without its singles no combination is combinable: a clear error, not an empty CV
    no_singles = design.subset(np.array([("+" in p) or p == "control" for p in
                                         np.asarray(design.perturbations)[design.perturbation_index]]))
    with pytest.raises(DesignError, match="at least two units"):
        unit_labels(no_singles, "combinable")
    with pytest.raises(DesignError, match="unknown unit"):
        unit_labels(design, "gene")
    with pytest.raises(DesignError, match="batch_key"):
        unit_labels(design, "context")
    with pytest.raises(DesignError, match="one entry per row"):
        unit_labels(design, ["a", "b"])


def test_a_factor_designs_contexts_are_the_context_units():
    """unit='context' on a factor design built with context_key= (cell lines: issue 12's leave-one-cell-line-out)
    was refused ("needs contexts: build the Design with batch_key="). Known answer: each treated row's unit is its
    context, and every context's untreated rows stay in training (the reference of its changes)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20, 2)), columns=["g0", "g1"])
    frame["drug"] = np.tile(["none", "A", "B", "A+B", "none"], 4)
    frame["line"] = np.repeat(["L1", "L2"], 10)
    d = sm.Design.from_frame(frame, readouts=["g0", "g1"], perturbation_key="drug", control="none", context_key="line")
    labs = unit_labels(d, "context")
    untreated = (frame["drug"] == "none").to_numpy()
    assert labs[untreated].tolist() == [None] * int(untreated.sum())
    assert labs[~untreated].tolist() == frame.loc[~untreated, "line"].tolist()


def test_a_masked_row_adds_exactly_nothing_to_the_log_density(fit, design):
    from semimech.infer.fit import _prepare

    held = design.perturbation_index == design.perturbations.index("T0+T3")
    model, data, y, _ = _prepare(additive.SPEC, design, dict(fit.options), row_mask=~held)
    params = {k: np.asarray(fit.flat(k)[0]) for k in fit.samples if k not in ("effect", "mean")}
    masked, _ = log_density(model, (data,), {"y": y}, params)
    sub = design.subset(~held)
    model_s, data_s, y_s, _ = _prepare(additive.SPEC, sub, dict(fit.options))
    for k in ("baseline_loc", "baseline_scale", "noise_floor"):   # same controls: same data-centred priors
        np.testing.assert_allclose(data_s[k], data[k])
    dropped, _ = log_density(model_s, (data_s,), {"y": y_s}, params)
    np.testing.assert_allclose(float(masked), float(dropped), rtol=1e-5)
    # negative control: moving the held-out row's readouts changes the unmasked density a lot, the masked not at all
    y_moved = np.asarray(y).copy()
    y_moved[held] += 5.0
    full_model = _prepare(additive.SPEC, design, dict(fit.options))[0]
    full, _ = log_density(full_model, (data | {"row_mask": None},), {"y": y}, params)
    full_moved, _ = log_density(full_model, (data | {"row_mask": None},), {"y": y_moved}, params)
    masked_moved, _ = log_density(model, (data,), {"y": y_moved}, params)
    assert abs(float(full_moved) - float(full)) > 10.0                # the row counts when it is not masked
    np.testing.assert_allclose(float(masked_moved), float(masked), rtol=1e-6)


def test_row_mask_input_is_checked(design):
    with pytest.raises(DesignError, match="one entry per row"):
        sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=2, row_mask=np.ones(3, bool), progress_bar=False)
    with pytest.raises(DesignError, match="control"):
        sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=2, row_mask=design.perturbation_index != 0,
                   progress_bar=False)


def test_unseen_entries_of_a_fold(design):
    held = np.isin(design.perturbation_index, [design.perturbations.index("T0+T3")])
    unseen = _unseen(design, design.model_data(), ~held)
    assert np.flatnonzero(unseen["perturbations"]).tolist() == [design.perturbations.index("T0+T3")]
    assert not unseen["targets"].any()                                 # T0 and T3 seen as singles
    pair_of = {tuple(design.targets[i] for i in ij): q for q, ij in enumerate(design.model_data()["pair_index"])}
    assert np.flatnonzero(unseen["target_pairs"]).tolist() == [pair_of[("T0", "T3")]]
    with_t1 = [i for i, p in enumerate(design.perturbations) if "T1" in p.split("+")]
    single = np.isin(design.perturbation_index, with_t1)
    unseen = _unseen(design, design.model_data(), ~single)
    assert design.targets[int(np.flatnonzero(unseen["targets"])[0])] == "T1"


def test_two_fold_cv_scores_every_unit_and_draws_held_out_latents_from_the_prior(fit, design, monkeypatch):
    import functools

    from numpyro.infer import log_likelihood
    from scipy.special import logsumexp

    from semimech.evaluate._pointwise import RowEngine

    captured = []
    real = RowEngine.entry_log_likelihood

    def keep(self, samples, rows, summaries=None):
        if summaries is not None:                                          # a refit's draws (not the full fit's)
            captured.append(({k: np.array(v) for k, v in samples.items()}, np.array(rows), dict(summaries)))
        return real(self, samples, rows, summaries)

    monkeypatch.setattr(RowEngine, "entry_log_likelihood", keep)
    cv = cross_validate(fit, unit="combination", k=2, num_steps=150, rng_key=0)
    # known answer (score="means"): a unit's elpd is the sum over its rows x genes of log E[p(y_rg | draw)]
    # over the draws of the refit that left it out, with y's own density (no within-group term)
    model = functools.partial(fit.spec.model, **fit.options)
    data = {k: v for k, v in design.model_data().items() if k != "row_mask"}
    y = np.asarray(design.dense_y(), dtype=np.float32)
    labels = np.asarray(design.perturbations, dtype=object)[design.perturbation_index]
    by_hand = {}
    for samples, rows, summaries in captured:
        ll = np.asarray(log_likelihood(model, samples, {**data, **summaries}, y=y, parallel=True)["y"])
        ll = ll.reshape(ll.shape[0], design.n_obs, design.n_genes)[:, rows]
        marginal = (logsumexp(ll, axis=0) - np.log(ll.shape[0])).sum(1)
        for r, v in zip(rows, marginal):
            by_hand[labels[r]] = by_hand.get(labels[r], 0.0) + v
    np.testing.assert_allclose(cv.pointwise, [by_hand[u] for u in cv.units], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(cv.elpd.se, np.sqrt(len(cv.units) * np.var(cv.pointwise)), rtol=1e-6)
    captured = [c[0] for c in captured]
    assert cv.scheme == "2-fold" and cv.n_refits == 2 == len(captured)
    assert len(cv.units) == sum("+" in p for p in design.perturbations) and np.all(np.isfinite(cv.pointwise))
    assert np.isfinite(cv.elpd.se) and cv.elpd.se > 0
    assert cv.pit.shape == (len(cv.units), design.n_genes) and ((cv.pit >= 0) & (cv.pit <= 1)).all()
    assert "combination left out (2-fold over" in cv.describe() and "observed mean" in cv.describe()
    # a notebook's last line shows the repr: the headline numbers, not the per-row arrays
    text = repr(cv)
    assert text.startswith(f"CrossValidation(model='additive', unit='combination', 2-fold, {len(cv.units)} units: "
                           f"elpd {float(cv.elpd.elpd):.2f} (se {float(cv.elpd.se):.2f}), 90% intervals cover")
    assert len(text) < 300 and "array(" not in text
    # every combination is held out in one of the two refits: there its interaction is a prior draw,
    # N(0, 1) whatever the warm start (the full fit's median) said; in the other refit it is fitted
    # (doubles: one pair of levels each, plate target_pairs)
    pairs = ["|".join(design.targets[i] for i in ij) for ij in design.model_data()["pair_index"]]
    combos = [pairs.index("|".join(sorted(design.targets_of(u)))) for u in cv.units]
    assert len(set(combos)) == len(combos) == len(pairs)
    held_z = []
    for samples in captured:
        z = samples["pair_z"]
        fresh = [p for p in combos if abs(z[:, p, :].mean()) < 0.25 and 0.8 < z[:, p, :].std() < 1.2]
        held_z.append(set(fresh))
    assert held_z[0] | held_z[1] == set(combos) and not held_z[0] & held_z[1]
    with pytest.raises(DesignError, match="between 1"):
        cross_validate(fit, unit="combination", k=0)


def test_pooled_draws_are_an_equal_mixture_of_the_refits():
    from semimech.evaluate.cv import pooled

    a = {"x": np.zeros((6, 2)), "z": np.zeros(6)}
    b = {"x": np.ones((6, 2)), "z": np.ones(6)}
    out = pooled([a, b])
    assert out["x"].shape == (6, 2) and out["z"].shape == (6,)
    np.testing.assert_array_equal(out["z"], [0, 1, 0, 1, 0, 1])        # dealt in turn: half from each
    np.testing.assert_array_equal(out["x"][:, 0], out["z"])
    three = pooled([a, b, {"x": np.full((6, 2), 2.0), "z": np.full(6, 2.0)}])
    np.testing.assert_array_equal(three["z"], [0, 1, 2, 0, 1, 2])
    assert pooled([a]) is a                                               # one fit: unchanged


def test_every_unit_out_at_once_is_one_refit_and_refits_pool_independent_fits(fit, design):
    """k=1 leaves every unit out in one refit, each unit scored on its own (SE over units);
    refits=2 makes two refits of that fold with different keys and scores their pooled draws."""
    one = cross_validate(fit, unit="combination", k=1, num_steps=150, rng_key=0)
    combos = [p for p in design.perturbations if "+" in p]
    assert one.scheme == "all-out" and one.n_refits == 1 and set(one.units) == set(combos)
    assert np.all(np.isfinite(one.pointwise)) and one.elpd.se > 0
    assert "all-out over" in one.describe() and "independent refits" not in one.describe()
    assert len(one.refit_losses) == 1 and len(one.refit_losses[0]) == 1
    # known answer: with one refit and one row per unit, the refit's L2 is the mean of the units' L2
    np.testing.assert_allclose(one.refit_l2[0][0], np.mean(one.l2), rtol=1e-5)
    two = cross_validate(fit, unit="combination", k=1, num_steps=150, refits=2, rng_key=0)
    assert two.n_refits == 2 and len(two.refit_losses) == 1 and len(two.refit_losses[0]) == 2
    assert np.all(np.isfinite(two.refit_losses[0])) and two.refit_losses[0][0] != two.refit_losses[0][1]
    assert "2 independent refits per fold" in two.describe()
    assert len(two.refit_l2) == 1 and len(two.refit_l2[0]) == 2 and np.all(np.isfinite(two.refit_l2[0]))
    # the pooled predictive is not the first refit's alone
    assert not np.allclose(two.pointwise, one.pointwise)
    with pytest.raises(DesignError, match="refits must be"):
        cross_validate(fit, unit="combination", k=1, refits=0)
    for bad in (1.5, "3", True, float("nan")):
        with pytest.raises(DesignError, match="refits must be"):
            sm.evaluate.compare({"a": fit, "b": fit}, unit="combination", refits=bad)


def test_a_fit_with_every_row_kept_by_a_mask_is_the_fit_compiled_as_the_refits_are(fit, design):
    """row_mask=all True is the same fit (same seed: draws equal to float rounding; the data-centred priors of all
    rows are the design's) in the refits' compiled form, so a fold refit of it reuses its programs (the
    comparison's refits then compile nothing: RESULTS_compare.md, session 9). After the CV test above this
    file's refits are compiled already, so the fit below costs its steps only."""
    keep_all = sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=400, num_samples=100, progress_bar=False,
                          row_mask=np.ones(design.n_obs, bool))
    for k in fit.samples:
        np.testing.assert_allclose(keep_all.samples[k], fit.samples[k], rtol=1e-4, atol=1e-4)
    fold = design.perturbation_index != design.perturbations.index("T0+T3")
    refit = sm.fit_svi(additive.SPEC, design, rng_key=3, num_steps=5, num_samples=100, progress_bar=False, row_mask=fold)
    assert refit.timings["compiled_reused"] == 1.0 and "compile_s" not in refit.timings
    # negative control: the unmasked fit's programs are another form (the fold's priors are data there, constants here)
    from semimech.infer import _svi
    from semimech.infer._compiled import cache_key, signature
    from semimech.infer.fit import DEFAULT_INIT, _prepare

    def key(mask):
        model, data, _, opts = _prepare(additive.SPEC, design, {}, mask, with_y=False, warn=False)
        static, traced = _svi.split_data(data, np.asarray(design.dense_y(), np.float32))
        return cache_key("svi", additive.SPEC.model, opts, "normal", 10, DEFAULT_INIT, static, signature(traced), "cpu")

    assert key(np.ones(design.n_obs, bool)) == key(fold) != key(None)


@pytest.mark.heavy
def test_a_count_fit_refits_with_a_row_mask_after_its_unmasked_fit(small_counts_adata):
    """Counts go to a negative-binomial model as sparse coordinates, and whether a model takes them was memoised per
    model and options, not per masked or unmasked data: after an unmasked count fit every masked refit of the same
    model (each cross-validation fold) took the sparse path, which the row mask's MaskedDistribution could not read
    (a TypeError inside NumPyro). Known answer: the masked fit after the unmasked one is the masked fit alone."""
    from semimech.infer import _observed
    from semimech.infer.fit import _prepare

    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control").pseudobulk()
    fold = np.asarray(d.perturbation_index) != d.perturbations.index("A+B")
    kw = dict(num_steps=5, num_samples=4, progress_bar=False)
    _observed._ACCEPTS.clear()
    full = sm.fit_svi(additive.SPEC, d, rng_key=0, **kw)                   # the unmasked fit: sparse counts
    after = sm.fit_svi(additive.SPEC, d, rng_key=1, row_mask=fold, **kw)   # raised before the memo knew the mask
    _observed._ACCEPTS.clear()
    alone = sm.fit_svi(additive.SPEC, d, rng_key=1, row_mask=fold, **kw)
    for k in alone.samples:
        np.testing.assert_array_equal(after.samples[k], alone.samples[k])
    # a fold's row mask now keeps the sparse likelihood (SparseNegativeBinomial2.mask; NumPyro's MaskedDistribution
    # took no sparse counts, so masked fits went dense): known answer, the masked density is the dense masked one,
    # and a masked row's counts change nothing (negative control: an unmasked row's do)
    ys = _observed.sparse_counts(d.y)
    takes = {}
    for name, mask in (("unmasked", None), ("masked", fold)):
        model, data, _, _ = _prepare(additive.SPEC, d, {}, mask, with_y=False, warn=False)
        takes[name] = _observed.accepts_sparse(model, data, ys)
    assert takes == {"unmasked": True, "masked": True}
    model, data, _, _ = _prepare(additive.SPEC, d, dict(full.options), fold, with_y=False, warn=False)
    params = {k: np.asarray(full.flat(k)[0]) for k in full.samples if k not in ("effect", "effect_mean", "mean")}
    dense = np.asarray(d.dense_y(np.float32))
    lp = {}
    for name, y in (("sparse", ys), ("dense", dense), ("held moved", _observed.sparse_counts(
            np.where(~fold[:, None], dense + 7.0, dense))), ("kept moved", _observed.sparse_counts(
            np.where(fold[:, None], dense + 7.0, dense)))):
        lp[name] = float(log_density(model, (data,), {"y": y}, params)[0])
    np.testing.assert_allclose(lp["sparse"], lp["dense"], rtol=1e-5)
    np.testing.assert_allclose(lp["held moved"], lp["sparse"], rtol=1e-6)
    assert abs(lp["kept moved"] - lp["sparse"]) > 10.0
    # the user's call that failed: K-fold refits of a count fit; and two bad calls that failed deep inside
    res = cross_validate(full, k=2, num_steps=5)
    assert np.isfinite(float(res.elpd.elpd)) and res.n_refits == 2
    with pytest.raises(DesignError, match=r"needs at least 25 posterior draws.*this fit has 4.*pass k < 3"):
        cross_validate(full)  # leave-one-out by PSIS from 4 draws (arviz: "n_draws_tail must be at least 5")
    with pytest.raises(DesignError, match=r"k must be None or an integer number of folds, got 2.5"):
        cross_validate(full, k=2.5, num_steps=5)  # was int(2.5) = 2 folds
    with pytest.raises(DesignError, match=r"cross_validate needs a semimech Fit .*got NoneType"):
        cross_validate(None)  # was AttributeError: 'NoneType' object has no attribute 'design'


@pytest.mark.heavy
def test_replicates_of_some_rows_are_drawn_from_those_rows_alone(small_counts_adata):
    """Held-out rows' replicates (their PIT, CRPS, predictive mean and sd) are drawn from the model given those rows
    alone (their per-row data indexed, padded to a size shared by similar folds) instead of for every row of the
    design and then sliced (~50 s of a 3,000-cell count fold's 57 s). Known answer: the same distribution as the
    rows of a full draw (one latent draw repeated, so each entry is one negative binomial: means within 4.5 standard
    errors); negative control: the same draws against other rows (another perturbation, another batch) are far off."""
    import jax

    from semimech.evaluate._pointwise import RowEngine, flat_latent, subset_size

    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control",
                               batch_key="batch")
    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=30, num_samples=4, progress_bar=False)
    engine = RowEngine(fit)
    assert engine._row_keys == ("perturbation_index", "batch_index", "size_factors", "n_cells")
    one = {k: np.repeat(v[:1], 3000, axis=0) for k, v in flat_latent(fit, engine.latent).items()}
    rows = np.array([50, 3, 17, 34, 18])                 # A+B, control, A (two batches), B: out of order
    assert subset_size(rows.size, d.n_obs) == 16 < d.n_obs
    sub = engine.replicates(jax.random.PRNGKey(1), one, rows=rows)
    full = engine.replicates(jax.random.PRNGKey(2), one)
    assert sub.shape == (3000, rows.size, d.n_genes) and full.shape == (3000, d.n_obs, d.n_genes)

    def z(a, b):
        return (a.mean(0) - b.mean(0)) / np.sqrt((a.var(0) + b.var(0)) / a.shape[0])

    assert np.abs(z(sub, full[:, rows])).max() < 4.5
    assert np.abs(z(sub, full[:, rows[::-1]])).max() > 10.0
    assert subset_size(d.n_obs - 1, d.n_obs) is None     # as many rows as the design: drawn whole, then sliced
    # the draws (on the host) are the model's negative binomial: its mean and variance at that latent draw
    from semimech.evaluate._pointwise import observation_draws

    one_draw = {k: v[:1] for k, v in one.items()} | {"__key": np.asarray(jax.random.split(jax.random.PRNGKey(0), 1))}
    nb = observation_draws(engine.model, one_draw, {**engine.data, **engine.summaries}, (d.n_obs, d.n_genes))
    conc, rate = np.asarray(nb["concentration"][0], float), np.asarray(nb["rate"][0], float)
    mean, var = conc / rate, conc / rate + (conc / rate) ** 2 / conc
    assert np.abs((full.mean(0) - mean) / np.sqrt(var / full.shape[0])).max() < 4.5
    assert 0.9 < np.mean(full.var(0) / var) < 1.1


def test_host_negative_binomial_draws_have_its_mean_and_variance():
    """Count replicates are drawn on the host (gamma then Poisson, numpy): known answer, the negative binomial's
    mean and variance (mean + mean^2 / concentration); negative control, Poisson draws of the same means (what
    leaving out the gamma would give) are far too narrow. The draws repeat for a key and change with it."""
    import jax

    from semimech.evaluate._pointwise import host_draws

    mean = np.linspace(0.5, 40.0, 50)[None, :, None] * np.ones((4000, 1, 3))
    conc = np.full_like(mean, 2.0)
    params = {"concentration": conc, "rate": conc / mean}
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(3), 2))
    y = host_draws(params, keys)
    var = mean[0] + mean[0] ** 2 / conc[0]
    assert np.abs((y.mean(0) - mean[0]) / np.sqrt(var / y.shape[0])).max() < 4.5
    assert 0.93 < np.mean(y.var(0) / var) < 1.07
    poisson = np.random.default_rng(0).poisson(mean)
    assert np.mean(poisson.var(0) / var) < 0.5
    np.testing.assert_array_equal(host_draws(params, keys), y)
    assert not np.array_equal(host_draws(params, keys[::-1]), y)
    assert np.all(host_draws({"concentration": conc, "rate": np.full_like(conc, np.inf)}, keys) == 0)  # mean 0
    bad = host_draws({"concentration": conc, "rate": np.where(mean > 20, np.nan, conc / mean)}, keys)
    assert np.isnan(bad[:, 25:]).all() and np.isfinite(bad[:, :25]).all()  # a NaN draw stays NaN, as in JAX


def _reads_priors_as_constants(data, **kw):
    np.asarray(data["baseline_loc"], float)          # a model building structure from the data-centred priors
    return additive.model(data, **kw)


def test_a_model_reading_its_data_priors_as_constants_is_refused_before_any_refit(fit):
    import dataclasses

    spec = dataclasses.replace(additive.SPEC, name="static_priors", model=_reads_priors_as_constants)
    from semimech.errors import InferenceError
    from semimech.evaluate._pointwise import RowEngine, flat_latent

    with pytest.raises(InferenceError, match="cannot be cross-validated with masked rows"):
        cross_validate(dataclasses.replace(fit, spec=spec, idata=None), unit="combination", k=2, num_steps=5)
    engine = RowEngine(fit)                      # negative control: the additive model takes them as arrays
    assert np.isfinite(engine.log_likelihood(flat_latent(fit, engine.latent), {"baseline_loc": np.zeros(fit.design.n_genes)})).all()


def _cut_fit():
    """signalling_network with a given noise on a tiny chain: sm.fit takes the cut-posterior SVI path."""
    import warnings

    import pandas as pd

    from semimech.models import _pkn
    from semimech.models import signalling_network as sn

    chain = pd.DataFrame([("s", 1, "a"), ("a", 1, "b")], columns=["source", "sign", "target"])
    net = _pkn.compile_network(chain, stimuli={"S": "s"}, inhibitors={"Ai": "a", "Bi": "b"},
                               readouts={"A": "a", "B": "b"}, compress=False)
    rng = np.random.default_rng(0)
    labels = ["none", "S", "S+Ai", "S+Bi", "Ai", "Bi"]
    frame = pd.DataFrame({"label": labels, "A": rng.normal(size=6), "B": rng.normal(size=6)},
                         index=[f"r{i}" for i in range(6)])
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.fit(sn.SPEC, design, rng_key=0, num_steps=20, num_samples=100, progress_bar=False, noise_sd=0.05,
                     network=sn.network_option(net, design=design), off_target=False, readout_block=False)
    assert fit.method == "svi" and "misfit_sd" in fit.samples          # the cut path, as sm.fit chooses
    return fit


def test_a_cut_posterior_is_scored_with_its_predictive_sd():
    """signalling_network with a given noise fits in a cut posterior: its rows are observed with the
    measurement sd only, but it predicts with the total (measurement and structural error, site
    ``noise_sd``). Held-out rows must be scored under that predictive (known answer: Normal(mean,
    noise_sd)); the measurement-only density is the negative control."""
    from scipy import stats

    from semimech.evaluate._pointwise import RowEngine, flat_latent

    fit = _cut_fit()
    engine = RowEngine(fit)
    assert engine.cut == ["misfit_cut"]
    ll = engine.entry_log_likelihood(flat_latent(fit, engine.latent), np.arange(fit.design.n_obs))
    mean = np.asarray(fit.flat("mean"))[:, np.asarray(fit.design.perturbation_index)]
    y = fit.design.dense_y()[None]
    total = stats.norm.logpdf(y, mean, np.asarray(fit.flat("noise_sd"))[:, None])
    assay = stats.norm.logpdf(y, mean, np.asarray(fit.flat("assay_sd"))[:, None])
    np.testing.assert_allclose(ll, total, rtol=1e-3, atol=1e-3)
    assert np.abs(ll - assay).max() > 1.0                            # negative control: the assay sd alone
    assert RowEngine(fit_without_cut := _replace_options(fit, misfit_cut=False)).cut == []   # no cut, no flag effect
    assert fit_without_cut.options["misfit_cut"] is False


def _replace_options(fit, **options):
    import dataclasses

    return dataclasses.replace(fit, options={**fit.options, **options}, idata=None)


@pytest.mark.slow
def test_a_cut_posterior_is_refit_for_every_unit():
    """PSIS weights from the predictive density are not the cut posterior's leave-out weights:
    leave-one-out refits every unit (no PSIS)."""
    import warnings

    fit = _cut_fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = cross_validate(fit, unit="combination", k=2, num_steps=5)   # leave-one-out over the 2 combinations
    assert cv.scheme == "leave-one-out" and cv.n_psis == 0 and cv.n_refits == 2
    assert np.isfinite(cv.pointwise).all() and cv.pit.shape == (2, 2)


def test_refits_start_cold_by_default(fit, monkeypatch):
    """By default a refit gets no init_values (a fresh fit's start) and the full fit's number of
    steps; refit_options={'warm_start': True} starts it at the full fit's posterior medians with a
    third of the steps (the alternative, which leaked the left-out condition on Sachs)."""
    import semimech.infer.fit as fit_module
    from semimech.evaluate._pointwise import RowEngine
    from semimech.evaluate.cv import _Folds, _steps

    seen = []
    monkeypatch.setattr(fit_module, "fit_svi", lambda *a, **kw: seen.append(kw) or "refit")
    engine = RowEngine(fit)
    rows = np.ones(fit.design.n_obs, bool)
    for opts in ({}, {"warm_start": True}):
        folds = _Folds(fit, engine, np.full(fit.design.n_obs, -1), num_steps=5, refit_options=opts, key=0,
                       max_pit_rows=10)
        assert folds._refit(rows, 0) == "refit"
    assert seen[0]["init_values"] is None and "warm_start" not in seen[0]
    assert set(seen[1]["init_values"]) == set(folds.warm) and "warm_start" not in seen[1]
    assert _steps(fit, None) == 400 and _steps(fit, None, warm=True) == 300 and _steps(fit, 7) == 7


def test_a_warm_start_resets_what_only_the_held_out_rows_inform(fit, design):
    """Warm start (opt-in). Known answer: holding out the double T0+T3, the entries of its pair interaction (pair_z,
    pair_local_z at that pair: no other row reads them) start cold (NaN -> the prior median in the
    compiled init) and every other entry at the full fit's median. Negative control: holding out
    the single T1, whose effect the doubles T1+T2 and T1+T4 also inform, resets nothing."""
    import jax
    from numpyro.infer.util import initialize_model

    from semimech.evaluate._pointwise import RowEngine
    from semimech.evaluate.cv import _Folds
    from semimech.infer.fit import _prepare, fold_summaries, warm_init

    engine = RowEngine(fit)
    folds = _Folds(fit, engine, np.full(design.n_obs, -1), num_steps=5, refit_options={"warm_start": True}, key=0,
                   max_pit_rows=10)
    pairs = ["+".join(design.targets[i] for i in ij) for ij in design.model_data()["pair_index"]]
    starts = {}
    for held_label in ("T0+T3", "T1"):
        held = design.perturbation_index == design.perturbations.index(held_label)
        starts[held_label] = folds.start(~held, fold_summaries(design, ~held))
    start = starts["T0+T3"]
    for name, warm in folds.warm.items():
        reset = np.isnan(start[name])
        if name in ("pair_z", "pair_local_z"):
            expected = np.zeros(warm.shape, bool)
            expected[pairs.index("T0+T3")] = True
            np.testing.assert_array_equal(reset, expected, err_msg=name)
        else:
            assert not reset.any(), name
        np.testing.assert_array_equal(start[name][~reset], warm[~reset])
        assert not np.isnan(starts["T1"][name]).any(), name                      # negative control
    assert folds.resets == [{"pair_z": design.n_genes, "pair_local_z": design.n_genes}, {}]
    # the compiled start: NaN entries at the prior median (not the warm value), the rest warm
    held = design.perturbation_index == design.perturbations.index("T0+T3")
    model, data, y, _ = _prepare(fit.spec, design, fit.options, row_mask=~held)
    info = initialize_model(jax.random.PRNGKey(0), model, init_strategy=warm_init(start),
                            model_args=(data,), model_kwargs={"y": y})[0]
    z0 = np.asarray(info.z["pair_z"])        # pair_z ~ Normal(0, 1): unconstrained = constrained
    p = pairs.index("T0+T3")
    assert np.isfinite(z0).all() and np.all(np.abs(z0[p]) < 1.0)
    assert not np.allclose(z0[p], folds.warm["pair_z"][p], atol=1e-3)
    np.testing.assert_allclose(np.delete(z0, p, 0), np.delete(folds.warm["pair_z"], p, 0), rtol=1e-5)


def test_weighted_crps_matches_the_pairwise_definition_and_the_gaussian_closed_form():
    from scipy import stats

    from semimech.evaluate.probabilistic import crps

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.array([0.0, 1.5, -3.0])
    w = rng.dirichlet(np.ones(40))
    pairwise = (w[:, None, None] * w[None, :, None] * np.abs(x[:, None] - x[None, :])).sum((0, 1))
    direct = (w[:, None] * np.abs(x - y)).sum(0) - 0.5 * pairwise
    np.testing.assert_allclose(crps(y, x, weights=w)[0], direct, rtol=1e-10)
    # many draws of N(0, 1): the closed form sigma * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))
    big = rng.normal(size=(20000, 3))
    exact = y * (2 * stats.norm.cdf(y) - 1) + 2 * stats.norm.pdf(y) - 1 / np.sqrt(np.pi)
    np.testing.assert_allclose(crps(y, big, weights=np.full(20000, 1 / 20000))[0], exact, atol=0.02)
    np.testing.assert_allclose(crps(y, big, weights=np.full(20000, 1 / 20000)), crps(y, big), rtol=1e-10)
    assert crps(y, big, weights=np.full(20000, 1 / 20000))[0, 2] > 2.0     # far off: about the absolute error


def test_unseen_targets_of_each_unit(design):
    from semimech.evaluate.cv import unseen_targets

    labs = unit_labels(design, "combination")
    units = list(dict.fromkeys(u for u in labs if u is not None))
    row_unit = np.array([units.index(u) if u is not None else -1 for u in labs])
    assert unseen_targets(design, row_unit) == tuple(() for _ in units)      # every single observed
    labels = np.asarray(design.perturbations)[design.perturbation_index]
    sub = design.subset(~np.isin(labels, ["T1", "T1+T2", "T1+T4"]))         # T1 now only in T0+T1
    labs = unit_labels(sub, "combination")
    units = list(dict.fromkeys(u for u in labs if u is not None))
    row_unit = np.array([units.index(u) if u is not None else -1 for u in labs])
    found = dict(zip(units, unseen_targets(sub, row_unit)))
    assert found == {u: (("T1",) if u == "T0+T1" else ()) for u in units}


def test_a_note_says_when_a_first_ranked_models_point_is_far_worse():
    """Known answer: a model tied first by CRPS whose cross-validated L2 is 1.39x the best's (Sachs, session 17) gets
    a note naming both L2s. Negative controls: within POINT_GAP, a model not ranked first, the best itself."""
    import pandas as pd

    from semimech.evaluate.compare import POINT_GAP, point_gap_notes

    table = pd.DataFrame({"rank": [1, 1, 1, 4], "cv_l2": [3.100, 4.306, 3.119, 9.0]},
                         index=["signalling_network", "production_decay", "linear_steady_state", "additive"])
    notes = point_gap_notes(table, rank_by="crps")
    assert set(notes) == {"production_decay"}
    assert "1.39x" in notes["production_decay"] and "4.306 against 3.100, signalling_network" in notes["production_decay"]
    table.loc["production_decay", "cv_l2"] = 3.100 * POINT_GAP * 0.99
    assert point_gap_notes(table, rank_by="crps") == {}
    assert point_gap_notes(table.iloc[:1], rank_by="crps") == {}


def test_a_note_says_when_a_folds_refits_disagree():
    """Refits whose held-out L2 differ by more than REFIT_DISAGREEMENT get a note; close ones (the negative control),
    a single refit, or no record get none."""
    from types import SimpleNamespace

    from semimech.evaluate.compare import REFIT_DISAGREEMENT, refit_note

    note = refit_note(SimpleNamespace(refit_l2=((0.41, 1.35, 0.42),)))
    assert "refits disagree" in note and "0.410 to 1.350" in note and "refits=" in note
    assert refit_note(SimpleNamespace(refit_l2=((0.41, 0.43, 0.42),))) == ""
    assert refit_note(SimpleNamespace(refit_l2=((0.4, 0.4 * REFIT_DISAGREEMENT * 0.99),))) == ""
    assert refit_note(SimpleNamespace(refit_l2=((0.41,),))) == ""
    assert refit_note(SimpleNamespace(refit_l2=())) == ""
    # the widest fold is the one named
    assert "0.200 to 0.900" in refit_note(SimpleNamespace(refit_l2=((0.4, 0.7), (0.2, 0.9))))


def test_a_first_ranked_model_separated_on_points_ranks_below():
    """Known answer: three models tied first by the score; one's per-unit L2 is worse than the best's on every unit
    by ~0.5 with little spread (Sachs-like: 8 units), so it is separated on points and ranks 2, with the models it is
    below and a note. Negative controls: a model worse on average but within 2 SE of the paired difference (noisy) stays
    first; one unit gives no SE (no separation); a model lacking an L2 for a unit is left as ranked."""
    from semimech.evaluate.compare import below_text, point_separation

    rng = np.random.default_rng(0)
    best = rng.uniform(2.5, 3.5, 8)
    points = {"signalling_network": best, "production_decay": best + 0.5 + 0.05 * rng.normal(size=8),
              "linear_steady_state": best + 0.3 * rng.normal(size=8)}
    out = point_separation(points, 2.0)
    assert set(out) == {"production_decay"}
    below, note = out["production_decay"]
    assert {b for b, _, _ in below} == {"signalling_network", "linear_steady_state"}
    assert "separated on points" in note and ("signalling_network" in note or "linear_steady_state" in note)
    assert "on points (SE" in below_text(below, on=" on points")
    # negative controls
    assert point_separation({"a": best, "b": best + 0.1 + 0.5 * rng.normal(size=8)}, 2.0) == {}
    assert point_separation({"a": best[:1], "b": best[:1] + 5.0}, 2.0) == {}
    assert point_separation({"a": best, "b": np.r_[best[:-1] + 5.0, np.nan]}, 2.0) == {}
    assert point_separation({"a": best}, 2.0) == {}


def test_the_reading_says_when_the_first_model_leads_on_points_only():
    """The first model's line names the models it leads on points only (tied by the score); negative control: without
    a point separation it is "clearly ahead"."""
    import pandas as pd

    from semimech.evaluate.compare import reading

    table = pd.DataFrame({"model": ["signalling_network", "production_decay", "additive"], "rank": [1, 2, 3],
                          "tied_with": ["", "", ""], "below": ["", "signalling_network by 1.205 on points (SE 0.300)",
                                                               "signalling_network by 1.1 (SE 0.4)"],
                          "elpd_diff": [0.0, 1.0, 2.0], "dse": [0.0, 1.0, 1.0], "cv_crps": [7.06, 7.76, 8.22],
                          "cv_l2": [3.10, 4.31, 3.94], "note": ["", "", ""], "assumes": ["a", "b", "c"],
                          "left_out": ["perturbation left out"] * 3})
    table.attrs.update(rank_by="crps", below_on_points={"production_decay": ["signalling_network"]})
    first = reading(table).splitlines()[0]
    assert "ahead of production_decay on points (tied by the score)" in first and "clearly" not in first
    table.attrs["below_on_points"] = {}
    assert "clearly ahead of the others" in reading(table).splitlines()[0]
