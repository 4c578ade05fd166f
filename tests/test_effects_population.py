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


def _unseen(shared: bool, *, seed: int = 0, n_targets: int = 16, held: int = 5, steps: int = 800, programs: int = 1):
    """Fit on all but ``held`` targets; effect draws (draws, held, genes) of the held-out ones and their truth."""
    train, held_out, truth = _split(shared, seed=seed, n_targets=n_targets, held=held)
    fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=seed, num_steps=steps, num_samples=300,
                     progress_bar=False, effect_programs=programs)
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


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_unseen_target_coverage_is_nominal_over_replicate_screens(shared):
    """Pooled over 4 simulated screens (4 x 6 held-out targets x 6 genes): 90% coverage 0.8-0.97."""
    inside = []
    for seed in range(4):
        out = _unseen(shared=shared, seed=seed, n_targets=24, held=6, steps=3000)
        draws, true = out["draws"], out["true"]
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        inside.append((true >= lo) & (true <= hi))
    cov = np.mean(np.concatenate(inside))
    assert 0.8 <= cov <= 0.97, cov


@pytest.mark.parametrize("name", ["linear_steady_state", "production_decay", "latent_programs"])
def test_steady_state_models_take_an_effect_population_as_their_residual(name):
    from semimech.models import REGISTRY

    design, _ = simulate_screen(n_targets=5, n_genes=3, cells=10, shared=True, seed=2)
    train = sm.evaluate.split_rows(design, design.perturbation_index == 1)[0]
    fit = sm.fit_svi(REGISTRY[name], train.pseudobulk(), rng_key=0, num_steps=30, num_samples=10,
                     progress_bar=False, residual="population", effect_programs=1)
    assert fit.dims["effect_z"] == ("targets", "genes") and "residual_z" not in fit.samples
    with pytest.warns(PopulationOnlyWarning):
        pred = sm.predict(fit, ["control", "T00", "T01"], rng_key=0, steady_state_draws=0)
    assert list(pred.sources.source) == ["data", "population", "data"]
    with pytest.raises(sm.errors.DesignError, match="residual must be"):
        sm.fit_svi(REGISTRY[name], train.pseudobulk(), rng_key=0, num_steps=1, residual="yes")
