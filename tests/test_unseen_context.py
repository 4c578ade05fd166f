"""Unseen contexts: a cell line never seen in training is a draw from the learned population of contexts.

Known answer: a simulated stimulus x cell-line screen whose lines share each stimulus's effect
(plus small line-specific deviations, sd 0.15): the effects in two held-out lines are predicted
at the shared effects, and their 90% intervals cover the true line-specific effects. Negative
control: lines whose deviations are large (sd 1.0) — the learned context population is wide, so
intervals widen and still cover, while intervals as narrow as the structured screen's would miss.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import PopulationOnlyWarning, PredictionError
from semimech.models import additive

LEVELS = ("A", "B", "C", "D")
HELD = ("L5", "L6")
GENES = [f"g{j}" for j in range(5)]


def simulate(*, ctx_sd: float, n_ctx: int = 7, reps: int = 3, seed: int = 0):
    """Rows: per line, the untreated condition and each single stimulus, ``reps`` replicates, noise sd 0.3."""
    rng = np.random.default_rng(seed)
    shared = {lv: rng.uniform(0.5, 1.5, len(GENES)) * rng.choice([-1, 1], len(GENES)) for lv in LEVELS}
    rows, truth = [], {}
    for c in range(n_ctx):
        line = f"L{c}"
        base = rng.normal(0.0, 1.0, len(GENES))
        truth[line] = {lv: shared[lv] + ctx_sd * rng.normal(size=len(GENES)) for lv in LEVELS}
        for cond in [[]] + [[lv] for lv in LEVELS]:
            mu = base + sum((truth[line][lv] for lv in cond), np.zeros(len(GENES)))
            for _ in range(reps):
                rows.append({"stim": cond, "line": line, **dict(zip(GENES, mu + 0.3 * rng.normal(size=len(GENES))))})
    return pd.DataFrame(rows), truth


def _held_out_effects(ctx_sd: float):
    frame, truth = simulate(ctx_sd=ctx_sd)
    train = sm.Design.from_frame(frame[~frame.line.isin(HELD)], readouts=GENES, factors={"stimulus": "stim"},
                                 context_key="line")
    fit = sm.fit_svi(additive.SPEC, train, rng_key=0, num_steps=1000, num_samples=300, progress_bar=False)
    labels = [f"{lv}@{c}" for c in HELD for lv in ("control",) + LEVELS]
    with pytest.warns(PopulationOnlyWarning, match="context never seen"):
        pred = sm.predict(fit, labels, rng_key=1, new_contexts="population")
    m = pred.draws["mean"].reshape(pred.draws["mean"].shape[0], len(HELD), 1 + len(LEVELS), len(GENES))
    draws = m[:, :, 1:] - m[:, :, :1]  # effects relative to each held-out line's own untreated state
    true = np.array([[truth[c][lv] for lv in LEVELS] for c in HELD])
    return {"fit": fit, "pred": pred, "draws": draws, "true": true}


@pytest.fixture(scope="module")
def structured():
    return _held_out_effects(0.15)


@pytest.fixture(scope="module")
def unstructured():
    return _held_out_effects(1.0)


def _covered(out, half=None):
    lo, hi = np.quantile(out["draws"], [0.05, 0.95], axis=0)
    if half is not None:  # intervals of a given half-width around the same centres
        centre = out["draws"].mean(0)
        lo, hi = centre - half, centre + half
    return np.mean((out["true"] >= lo) & (out["true"] <= hi)), np.median(hi - lo)


def test_an_unseen_line_gets_the_shared_effects_with_covering_intervals(structured):
    cov, width = _covered(structured)
    assert cov >= 0.75, cov
    assert width < 1.5
    pred = structured["pred"]
    src = pred.sources.set_index("perturbation")
    assert src.loc["control@L5", "population_only"] and src.loc["control@L5", "source"] == "population"
    assert src.loc["A@L5", "source"] == "data+population" and not src.loc["A@L5", "population_only"]
    assert src.loc["A@L5", "parts"] == "A: data; context L5: population"
    assert set(pred.to_frame(kind="mean").source) == {"population", "data+population"}


def test_a_population_of_dissimilar_lines_widens_the_intervals(structured, unstructured):
    cov, width = _covered(unstructured)
    assert cov >= 0.75, cov
    narrow = _covered(structured)[1]
    assert width > 2.0 * narrow
    # negative control: intervals as narrow as the structured screen's, around the same centres, miss
    assert _covered(unstructured, half=narrow / 2)[0] < 0.5


def test_seen_lines_are_unchanged_by_asking_for_an_unseen_one(structured):
    fit = structured["fit"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PopulationOnlyWarning)
        alone = sm.predict(fit, ["A@L1", "control@L1"], rng_key=3)
    assert list(alone.sources.source) == ["data", "data"]
    with pytest.warns(PopulationOnlyWarning):
        mixed = sm.predict(fit, ["A@L1", "control@L1", "A@L9", "control@L9"], rng_key=3, new_contexts="population")
    np.testing.assert_allclose(mixed.draws["mean"][:, :2], alone.draws["mean"], rtol=1e-5, atol=1e-5)


def test_an_unseen_context_is_refused_unless_the_population_answer_is_asked_for(structured):
    """A misspelt cell line must not silently become a new one: the default names it and the fix."""
    fit = structured["fit"]
    with pytest.raises(PredictionError, match=r"\['L9'\] were never seen in training \(asked for by \['A@L9'\]\).*"
                                              r"new_contexts='population'"):
        sm.predict(fit, ["A@L1", "A@L9"], rng_key=3)
    with pytest.raises(PredictionError, match="new_contexts must be 'error' or 'population'"):
        sm.predict(fit, ["A@L1"], rng_key=3, new_contexts="draw")
    # negative control: seen contexts pass with the default
    assert sm.predict(fit, ["A@L1"], rng_key=3).draws["mean"].shape[1] == 1
