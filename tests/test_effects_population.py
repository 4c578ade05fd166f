"""Effect populations: an unseen target's effect is a draw from the learned population.

Known answer: a simulated screen whose target effects share a mean response (plus small
target-specific deviations) — held-out targets are predicted at the shared mean, and their
intervals cover the true effects at about the nominal rate. Negative control: a screen whose
effects share nothing (independent, wide) — the learned population is wide, so intervals widen
and still cover; the narrow intervals of the structured screen would not.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import PopulationOnlyWarning
from semimech.models import additive


def simulate_screen(*, n_targets: int, n_genes: int, cells: int, shared: bool, seed: int, dev_sd: float = 0.15):
    """Cell-level Gaussian readouts (cell sd 1): control plus one single per target.

    ``shared``: effects = a shared mean response (|m| 0.6-1.2 per gene) + N(0, dev_sd) deviations.
    Otherwise effects are independent N(0, 1): no population structure to learn.
    """
    rng = np.random.default_rng(seed)
    if shared:
        m = rng.uniform(0.6, 1.2, n_genes) * rng.choice([-1, 1], n_genes)
        effects = m + dev_sd * rng.normal(size=(n_targets, n_genes))
    else:
        effects = rng.normal(size=(n_targets, n_genes))
    targets = [f"T{i:02d}" for i in range(n_targets)]
    labels = np.repeat(["control"] + targets, [2 * cells] + [cells] * n_targets)
    mean = np.vstack([np.zeros((2 * cells, n_genes))] + [np.tile(e, (cells, 1)) for e in effects])
    y = mean + rng.normal(size=mean.shape)
    genes = [f"g{j}" for j in range(n_genes)]
    frame = pd.DataFrame(y, columns=genes).assign(label=labels)
    design = sm.Design.from_frame(frame, readouts=genes, perturbation_key="label", control="control")
    return design, dict(zip(targets, effects))


def _split(shared: bool, *, seed: int, n_targets: int, held: int):
    design, truth = simulate_screen(n_targets=n_targets, n_genes=6, cells=40, shared=shared, seed=seed)
    held_out = list(design.targets[:held])
    rows = np.isin(np.asarray(design.perturbations)[design.perturbation_index], held_out)
    return sm.evaluate.split_rows(design, rows)[0], held_out, truth


def _unseen(shared: bool, *, seed: int = 0, n_targets: int = 16, held: int = 5, steps: int = 800, programs: int = 1,
            nuts: bool = False, **options):
    """Fit on all but ``held`` targets (SVI, or NUTS: 1 chain, 500 warm-up + 500 draws); effect draws (draws,
    held, genes) of the held-out ones and their truth."""
    train, held_out, truth = _split(shared, seed=seed, n_targets=n_targets, held=held)
    if nuts:
        fit = sm.fit_nuts(additive.SPEC, train.pseudobulk(), rng_key=seed, num_warmup=500, num_samples=500,
                          num_chains=1, progress_bar=False, effect_programs=programs, **options)
    else:
        fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=seed, num_steps=steps, num_samples=300,
                         progress_bar=False, effect_programs=programs, **options)
    with pytest.warns(PopulationOnlyWarning, match="population"):
        pred = sm.predict(fit, ["control"] + held_out, rng_key=seed + 1)
    draws = pred.draws["mean"][:, 1:] - pred.draws["mean"][:, :1]  # effect draws of the unseen targets
    return {"fit": fit, "train": train, "pred": pred, "draws": draws, "truth": truth,
            "true": np.array([truth[t] for t in held_out])}


@pytest.fixture(scope="module")
def structured():
    return _unseen(shared=True)


@pytest.fixture(scope="module")
def unstructured():
    return _unseen(shared=False)


def test_unseen_target_follows_the_population(structured):
    draws, true, train = structured["draws"], structured["true"], structured["train"]
    # recovered: every unseen target is predicted at the shared mean response, i.e. the mean of
    # the seen targets' observed effects (the train-mean rule; the truth is known only up to the
    # noise of the control mean, sd 1/sqrt(80) per gene, which the intervals carry)
    observed = sm.evaluate.train_mean(train, ["T00"]).values[0] - sm.evaluate.control_mean(train)
    point = draws.mean(0)
    np.testing.assert_allclose(point, np.broadcast_to(observed, point.shape), atol=0.1)
    assert np.max(np.abs(point - np.mean(list(structured["truth"].values()), axis=0))) < 0.45
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    assert np.mean((true >= lo) & (true <= hi)) >= 0.75
    assert np.median(hi - lo) < 1.2  # narrow: the population is tight (deviation sd 0.15)
    pred = structured["pred"]
    assert list(pred.sources.source) == ["data"] + ["population"] * 5
    assert pred.sources.population_only.tolist() == [False] + [True] * 5
    assert set(pred.to_frame(kind="mean").source) == {"data", "population"}


def test_unseen_target_without_population_structure_gets_wide_honest_intervals(structured, unstructured):
    draws_b, true_b = unstructured["draws"], unstructured["true"]
    lo, hi = np.quantile(draws_b, [0.05, 0.95], axis=0)
    assert np.mean((true_b >= lo) & (true_b <= hi)) >= 0.75
    lo_a, hi_a = np.quantile(structured["draws"], [0.05, 0.95], axis=0)
    assert np.median(hi - lo) > 2.5 * np.median(hi_a - lo_a)  # intervals widen with the population
    # negative control: intervals as narrow as the structured screen's, around the same centres, miss
    half = 0.5 * np.median(hi_a - lo_a)
    assert np.mean(np.abs(true_b - draws_b.mean(0)) <= half) < 0.5


def test_seen_targets_keep_their_data_and_the_warning_is_silent(structured):
    fit, truth = structured["fit"], structured["truth"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PopulationOnlyWarning)
        pred = sm.predict(fit, ["control", "T07", "T08+T09"], rng_key=1)
    assert list(pred.sources.source) == ["data", "data", "data"]
    eff = pred.draws["mean"][:, 1].mean(0) - pred.draws["mean"][:, 0].mean(0)
    np.testing.assert_allclose(eff, truth["T07"], atol=0.5)
    assert fit.dims["program_z"] == ("targets", "effect_scores")
    assert fit.dims["program_loadings"] == ("effect_programs", "genes")


def test_the_population_warning_is_emitted_once_per_call(structured):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pred = sm.predict(structured["fit"], ["T00", "T01", "T00+T07", "T07"], rng_key=1)
    assert sum(issubclass(w.category, PopulationOnlyWarning) for w in rec) == 1
    assert "T00" in str(rec[0].message) and "T01" in str(rec[0].message)
    assert list(pred.sources.source) == ["population", "population", "data+population", "data"]
    assert pred.sources.parts.iloc[2] == "T00: population; T07: data"


def _pooled_coverage(method: str, shared: bool, screens: int = 8, **options) -> float:
    inside = []
    for seed in range(screens):
        out = _unseen(shared=shared, seed=seed, n_targets=24, held=6, steps=3000, nuts=method == "nuts", **options)
        lo, hi = np.quantile(out["draws"], [0.05, 0.95], axis=0)
        inside.append((out["true"] >= lo) & (out["true"] <= hi))
    return float(np.mean(np.concatenate(inside)))


def _exact_coverage(shared: bool, screens: int = 8) -> float:
    """90% coverage of the held-out targets by the exact posterior of the simulation's own model (NUTS on a
    hand-written NumPyro model of the pseudobulk means: control, shared mean, per-gene deviation sd with this
    package's priors, the known noise sd 1): the best any posterior of this kind can do on these screens."""
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    inside = []
    for seed in range(screens):
        train, held_out, truth = _split(shared, seed=seed, n_targets=24, held=6)
        labels = np.asarray(train.perturbations)[train.perturbation_index]
        y = np.asarray(train.y, dtype=float)
        ctrl, seen = y[labels == "control"].mean(0), y[labels != "control"]
        seen_labels = labels[labels != "control"]
        names = sorted(set(seen_labels))
        means = np.stack([seen[seen_labels == v].mean(0) for v in names])
        counts = np.array([np.sum(seen_labels == v) for v in names])[:, None]
        n_ctrl = np.sum(labels == "control")

        def model():
            c = numpyro.sample("c", dist.Normal(0.0, 2.0).expand([6]))
            m = numpyro.sample("m", dist.Normal(0.0, 2.0).expand([6]))
            dev = numpyro.sample("s", dist.HalfNormal(0.5)) * numpyro.sample("sd", dist.HalfNormal(1.0).expand([6]))
            numpyro.deterministic("dev", dev)
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand(list(means.shape)))
            numpyro.sample("yc", dist.Normal(c, 1.0 / np.sqrt(n_ctrl)), obs=ctrl)
            numpyro.sample("y", dist.Normal(c + m + dev * z, 1.0 / np.sqrt(counts)), obs=means)

        mcmc = MCMC(NUTS(model), num_warmup=500, num_samples=1000, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(seed))
        post = mcmc.get_samples()
        z_new = np.random.default_rng(seed).normal(size=(post["m"].shape[0], len(held_out), 6))
        draws = np.asarray(post["m"])[:, None, :] + np.asarray(post["dev"])[:, None, :] * z_new
        true = np.array([truth[t] for t in held_out])
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        inside.append((true >= lo) & (true <= hi))
    return float(np.mean(np.concatenate(inside)))


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_unseen_target_coverage_is_nominal_over_replicate_screens(shared):
    """Pooled over 8 simulated screens (8 x 6 held-out targets x 6 genes), the model's posterior (NUTS): 90%
    coverage 0.8-0.97.

    Why 8 screens and what the known answer is: with 40 cells per pseudobulk the deviations (sd 0.15) are no
    larger than a target's noise (0.16), so one screen's 18 seen targets leave their spread uncertain and a
    screen's 36 held-out entries miss together. The exact posterior of the simulation's own model
    (:func:`_exact_coverage`) covers 0.69 / 0.72 / 0.78 / 0.83 / 0.89 / 0.86 / 0.86 / 0.89 on screens 0-7
    (session 18): 0.76 over the first 4, the old form of this test, which no posterior could pass; 0.81 over
    8 (0.88 without population structure). This model by NUTS: 0.82 and 0.89, and must stay within 0.05 of the
    exact posterior. Negative control (in
    ``test_unseen_target_without_population_structure_gets_wide_honest_intervals``): the structured screen's
    interval widths around the same centres miss most of an unstructured screen; and mean-field SVI's 0.75 in the
    non-centred geometry (``test_noncentred_svi_under_covers_unseen_targets_over_replicate_screens``) fails the
    same bounds.
    """
    cov = _pooled_coverage("nuts", shared)
    assert 0.8 <= cov <= 0.97, cov
    exact = _exact_coverage(shared)
    assert abs(cov - exact) <= 0.05, (cov, exact)  # as calibrated as the exact posterior on the same screens


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_unseen_target_coverage_by_svi_is_nominal_over_replicate_screens(shared):
    """The same 8 screens fitted by ``fit_svi`` (AutoNormal, 3000 steps) as a user gets it: ``effect_deviation="auto"``,
    which SVI settles to the centred geometry. 90% coverage 0.8-0.97 and within 0.05 of the exact posterior.
    Measured session 18 (``"centred"`` given): 0.69 / 0.81 / 0.83 / 0.83 / 0.92 / 0.92 / 0.86 / 0.92, pooled 0.85
    (exact 0.81). The negative control is the non-centred geometry below, which fails."""
    cov = _pooled_coverage("svi", shared)
    assert 0.8 <= cov <= 0.97, cov
    exact = _exact_coverage(shared)
    assert abs(cov - exact) <= 0.05, (cov, exact)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="mean-field SVI over the standardised deviations (non-centred; SVI's default "
                                       "until session 19) under-covers unseen targets: 0.75 over the 8 screens where "
                                       "NUTS on the same model covers 0.82 and centred SVI 0.85 (issue 13); strict, so "
                                       "a change shows up")
def test_noncentred_svi_under_covers_unseen_targets_over_replicate_screens():
    """The same 8 structured screens fitted by ``fit_svi`` (AutoNormal, 3000 steps), non-centred geometry. Measured
    session 18: 0.58 / 0.67 / 0.75 / 0.75 / 0.83 / 0.83 / 0.81 / 0.81, pooled 0.75; ``guide="lowrank"`` 0.76; the
    deviation sd pooled across genes 0.78 (0.785 with lowrank). Its posterior deviation sd is 0.6x NUTS's: mean-field
    SVI shrinks the population's spread when the scale and the standardised deviations must move together."""
    cov = _pooled_coverage("svi", True, effect_deviation="noncentred")
    assert 0.8 <= cov <= 0.97, cov


def test_centred_deviations_predict_unseen_targets_from_the_population_spread():
    """``effect_deviation="centred"``: the fit has ``effect_dev_z`` instead of ``effect_z``; a seen target keeps its
    data; an unseen target's effect draws spread like the population (their sd across draws is the posterior deviation
    sd, not the unit scale of predict's fresh N(0, 1) draws; negative control: unscaled, they would be ~1 wide);
    an unknown geometry is a clear error."""
    train, held_out, truth = _split(True, seed=0, n_targets=16, held=5)
    fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=0, num_steps=800, num_samples=300, progress_bar=False,
                     effect_programs=0, effect_deviation="centred")
    assert fit.dims["effect_dev_z"] == ("targets", "genes") and "effect_z" not in fit.samples
    with pytest.warns(PopulationOnlyWarning):
        pred = sm.predict(fit, ["control", held_out[0], "T07"], rng_key=1)
    assert list(pred.sources.source) == ["data", "population", "data"]
    eff = pred.draws["mean"][:, 1:] - pred.draws["mean"][:, :1]
    np.testing.assert_allclose(eff[:, 1].mean(0), truth["T07"], atol=0.5)
    dev_sd = np.median(np.asarray(fit.samples["effect_scale"]).reshape(-1, 1)
                       * np.asarray(fit.samples["effect_sd"]).reshape(-1, 6), axis=0)
    spread = eff[:, 0].std(0)
    assert np.all(spread < 0.5), spread            # not the unit-scale fresh draws
    assert np.all(spread > 0.8 * dev_sd), (spread, dev_sd)   # at least the population's spread
    with pytest.raises(sm.errors.DesignError, match="effect_deviation must be one of"):
        sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=0, num_steps=1, effect_deviation="centered")


@pytest.mark.parametrize("name", ["linear_steady_state", "production_decay", "latent_programs"])
@pytest.mark.heavy
def test_steady_state_models_take_an_effect_population_as_their_residual(name):
    from semimech.models import REGISTRY

    design, _ = simulate_screen(n_targets=5, n_genes=3, cells=10, shared=True, seed=2)
    train = sm.evaluate.split_rows(design, design.perturbation_index == 1)[0]
    fit = sm.fit_svi(REGISTRY[name], train.pseudobulk(), rng_key=0, num_steps=30, num_samples=10,
                     progress_bar=False, residual="population", effect_programs=1)
    # SVI settles effect_deviation="auto" to the centred geometry (test_the_geometry_is_settled_by_the_inference)
    assert fit.dims["effect_dev_z"] == ("targets", "genes") and "residual_z" not in fit.samples
    with pytest.warns(PopulationOnlyWarning):
        pred = sm.predict(fit, ["control", "T00", "T01"], rng_key=0, steady_state_draws=0)
    assert list(pred.sources.source) == ["data", "population", "data"]
    with pytest.raises(sm.errors.DesignError, match="residual must be"):
        sm.fit_svi(REGISTRY[name], train.pseudobulk(), rng_key=0, num_steps=1, residual="yes")


@pytest.mark.parametrize("name", ["linear_steady_state", "production_decay"])
def test_the_centred_geometry_needs_a_population_misfit(name):
    """With a misfit that has no population (``residual=True`` or ``False``) ``effect_deviation="centred"`` is a
    clear error, not silently ignored. (The centred wiring of the population misfit is fitted in
    ``test_steady_state_models_take_an_effect_population_as_their_residual``, where SVI takes it by default; its
    predictive spread against the non-centred geometry in the slow test below.)"""
    from semimech.models import REGISTRY

    design, _ = simulate_screen(n_targets=4, n_genes=3, cells=5, shared=True, seed=2)
    for mode in (True, False):
        with pytest.raises(sm.errors.DesignError, match="effect_deviation='centred' shapes the effect population"):
            sm.fit_svi(REGISTRY[name], design.pseudobulk(), rng_key=0, num_steps=1, residual=mode,
                       effect_deviation="centred")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_steady_state", "production_decay"])
def test_steady_state_population_misfit_takes_the_centred_geometry(name):
    """``effect_deviation="centred"`` reaches the steady-state models' population misfit: the fit has
    ``effect_dev_z`` (not ``effect_z``), and an unseen target's prediction spreads as under the non-centred
    geometry (its fresh edit plus the population's misfit; the model scales predict's unit fresh draws: unscaled,
    they would add ~1 latent unit and triple the spread, the negative control). Slow: two fits per model (~50 s);
    the default run fits the centred wiring once per model (the residual test above)."""
    from semimech.models import REGISTRY

    design, _ = simulate_screen(n_targets=8, n_genes=3, cells=20, shared=True, seed=2)
    train = sm.evaluate.split_rows(design, design.perturbation_index == 1)[0].pseudobulk()
    spread = {}
    for geometry in ("noncentred", "centred"):
        fit = sm.fit_svi(REGISTRY[name], train, rng_key=0, num_steps=300, num_samples=200, progress_bar=False,
                         effect_programs=0, effect_deviation=geometry)
        with pytest.warns(PopulationOnlyWarning):
            pred = sm.predict(fit, ["control", "T00", "T01"], rng_key=0, steady_state_draws=0)
        assert list(pred.sources.source) == ["data", "population", "data"]
        spread[geometry] = pred.draws["mean"][:, 1].std(0)
    assert fit.dims["effect_dev_z"] == ("targets", "genes") and "effect_z" not in fit.samples
    ratio = spread["centred"] / spread["noncentred"]
    assert np.all((ratio > 0.6) & (ratio < 1.6)), (ratio, spread)


@pytest.mark.heavy
def test_the_geometry_is_settled_by_the_inference(structured):
    """``effect_deviation="auto"`` (the default) is settled by the fit and recorded in ``fit.options``: centred under
    SVI with a distribution as guide, non-centred under NUTS and for a MAP point estimate (whose centred mode is
    degenerate), and for a steady-state model whose misfit has no population; a value the user gives is kept.
    ``predict`` then builds the model the fit used (a mismatch would ask for a site the fit does not have).

    Every case goes through the resolution the fits use (``resolved_options`` with the method a fit tells it);
    four of them are fitted (SVI, MAP, NUTS; a misfit without a population), each a fit's own wiring (SVI's default:
    the module's ``structured`` fit)."""
    import inspect

    from semimech.infer.fit import resolved_options, svi_method
    from semimech.models import REGISTRY, additive, linear_steady_state

    cases = [  # (spec, method, options, expected, fitted)
        (additive.SPEC, "svi", {}, "centred", True),
        (additive.SPEC, "svi", {"guide": "map"}, "noncentred", True),
        (additive.SPEC, "svi", {"effect_deviation": "noncentred"}, "noncentred", False),
        (additive.SPEC, "nuts", {}, "noncentred", True),
        (additive.SPEC, "nuts", {"effect_deviation": "centred"}, "centred", False),
        (linear_steady_state.SPEC, "svi", {}, "centred", False),
        (linear_steady_state.SPEC, "svi", {"residual": True}, "noncentred", True),
    ]
    default_guide = inspect.signature(sm.fit_svi).parameters["guide"].default
    for spec, method, options, expected, _ in cases:
        told = svi_method(options.get("guide", default_guide)) if method == "svi" else method
        model_options = {k: v for k, v in options.items() if k != "guide"}
        got = resolved_options(spec, model_options, told)["effect_deviation"]
        assert got == expected, (spec.name, method, options, got)

    train, held_out, _ = _split(True, seed=0, n_targets=8, held=2)
    pb = train.pseudobulk()
    for spec, method, options, expected, fitted in cases:
        if not fitted:
            continue
        if (spec, method, options) == (additive.SPEC, "svi", {}):
            fit = structured["fit"]  # a default SVI fit (800 steps) of the same simulated screen
        elif method == "svi":
            fit = sm.fit_svi(spec, pb, rng_key=0, num_steps=20, num_samples=5, progress_bar=False,
                             effect_programs=0, **options)
        else:
            fit = sm.fit_nuts(spec, pb, rng_key=0, num_warmup=10, num_samples=5, num_chains=1, progress_bar=False,
                              effect_programs=0, **options)
        assert fit.options["effect_deviation"] == expected, (spec.name, method, options)
        population = options.get("residual", "population") == "population"
        if population:
            site = "effect_dev_z" if expected == "centred" else "effect_z"
            assert site in fit.samples, (spec.name, method, options, sorted(fit.samples))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = sm.predict(fit, ["control", held_out[0]], rng_key=1, steady_state_draws=0)
        assert np.all(np.isfinite(pred.draws["mean"]))
    # outside a fit (a model traced directly) "auto" is the non-centred geometry
    assert REGISTRY["additive"].resolve_options({}, None)["effect_deviation"] == "noncentred"
