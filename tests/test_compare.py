"""compare(): cross-validated elpd over held-out units, ranks only where the evidence separates models.

Known answers on data simulated from the additive model (no interaction): the additive model
predicts left-out combinations of seen singles far better than a model whose effects are
forced to zero (the negative control must lose by more than two standard errors of the paired
difference, and on the held-out test set too); two fits of the additive model that differ only
in their seed are tied (same rank); a degenerate fit (diverged, NaN draws) that gives no finite
log-likelihood gets no rank and a reason. The row log-likelihood is checked against a hand computation, and a
pseudobulk row against its cells.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

import semimech as sm
from semimech.errors import DesignError
from semimech.evaluate import compare, pointwise_log_likelihood, split_combinations
from semimech.evaluate.compare import reading
from semimech.models import additive

NULL = sm.ModelSpec(name="null", model=additive.model, assumes="perturbations change nothing (effects forced to ~0)",
                    default_options={"effect_prior_scale": 1e-3})
HELD_OUT = ("T0+T1", "T2+T3", "T1+T4")


@pytest.fixture(scope="module")
def split(simulate_additive):
    """Additive cells (5 targets, all 10 doubles); three doubles held out, seven left for training."""
    train, test = split_combinations(simulate_additive(pairs_every=1), test_labels=HELD_OUT)
    return train, test


OPTS = dict(num_steps=400, num_samples=100, progress_bar=False)


@pytest.fixture(scope="module")
def pair(split):
    rows = split[0].pseudobulk()
    return {"additive": sm.fit_svi(additive.SPEC, rows, rng_key=0, **OPTS), "null": sm.fit_svi(NULL, rows, rng_key=0, **OPTS)}


@pytest.fixture(scope="module")
def fits(split, pair):
    out = {**pair, "additive_seed1": sm.fit_svi(additive.SPEC, split[0].pseudobulk(), rng_key=1, **OPTS)}
    good = out["additive"]
    broken = {**good.samples, "noise_sd": np.full_like(good.samples["noise_sd"], np.nan)}   # diverged draws
    out["degenerate"] = dataclasses.replace(good, samples=broken, idata=None)
    return out


@pytest.fixture(scope="module")
def table(split, fits):
    train, test = split
    return compare(fits, unit="combinable", k=2, num_steps=120, test=test, reference=train, checks=True)


def test_row_log_likelihood_is_its_cells_hand_computed_gaussian_density(split, pair):
    train, _ = split
    fit = pair["additive"]
    ll = pointwise_log_likelihood(fit)
    d = fit.design                                                        # pseudobulk rows of ``train``'s cells
    assert ll.shape == (1, 100, d.n_obs)
    data = d.model_data()
    mean = fit.flat("mean")[:, train.perturbation_index]                  # draws x cells x genes
    sd = np.sqrt(fit.flat("noise_sd") ** 2 + data["noise_floor"] ** 2)[:, None, :]
    cells = norm.logpdf(train.dense_y()[None], mean, sd).sum(-1)          # draws x cells
    hand = np.stack([cells[:, train.perturbation_index == p].sum(-1) for p in d.perturbation_index], -1)
    np.testing.assert_allclose(ll[0], hand, rtol=1e-4, atol=1e-2)


@pytest.mark.slow  # ~9 fit compilations; default once fit_svi reuses compiled steps
def test_generating_model_beats_the_wrong_one_by_more_than_two_se(table):
    by = table.set_index("model")
    assert by.loc["additive", "rank"] == 1 and by.loc["null", "rank"] > 1
    null = by.loc["null"]
    assert null.elpd_diff > 2 * null.dse > 0                              # negative control loses clearly
    assert by.loc["additive", "test_l2"] < null.test_l2                   # and on the held-out doubles
    assert by.loc["additive", "cv_l2"] < by.loc["null", "cv_l2"]          # and by its cross-validated point error
    assert set(table.attrs["cross_validations"]) >= {"additive", "null"} and table.attrs["score"] == "means"
    assert (by.loc[["additive", "additive_seed1", "null"], "n_refits"] == 2).all()
    assert by.loc["additive", "left_out"].startswith("combinable left out (2-fold over 7 units")
    assert by.loc["additive", "n_units"] == 7


@pytest.mark.slow  # ~9 fit compilations; default once fit_svi reuses compiled steps
def test_two_equally_good_models_tie(table):
    by = table.set_index("model")
    assert by.loc["additive_seed1", "rank"] == 1 == by.loc["additive", "rank"]
    assert "additive" in by.loc["additive_seed1", "tied_with"] and "null" not in by.loc["additive", "tied_with"]
    assert "not separable" in reading(table) or "tied with" in reading(table)


@pytest.mark.slow  # ~9 fit compilations; default once fit_svi reuses compiled steps
def test_a_model_that_cannot_be_scored_gets_no_rank_and_a_reason(table):
    by = table.set_index("model")
    assert pd.isna(by.loc["degenerate", "rank"]) and pd.isna(by.loc["degenerate", "elpd_cv"])
    assert "not ranked" in by.loc["degenerate", "note"] and "not finite" in by.loc["degenerate", "note"]
    assert by.loc["null", "rank"] == 3                                     # 1 + the two models clearly better
    assert table.model.iloc[-1] == "degenerate"                            # unranked last
    assert "no rank" in reading(table)
    # no NaN anywhere: missing numbers are <NA> of nullable dtypes; ranked models have finite scores with se
    for col in table.columns:
        if pd.api.types.is_numeric_dtype(table[col]):
            assert str(table[col].dtype) in ("Float64", "Int64"), col
    ranked = table[table["rank"].notna()]
    assert np.isfinite(ranked[["elpd_cv", "se", "elpd_diff", "dse", "weight"]].to_numpy(float)).all()
    assert (ranked.se > 0).all()


@pytest.mark.slow  # ~9 fit compilations; default once fit_svi reuses compiled steps
def test_calibration_and_assumption_columns(table):
    by = table.set_index("model")
    cov = by.loc["additive", "cv_coverage_90"]
    assert 0.0 <= cov <= 1.0 and by.loc["additive", "cv_calibration"] in (
        "calibrated", "overconfident", "underconfident", "miscalibrated")
    assert "no dynamics" in by.loc["additive", "assumption_checks"] and pd.isna(by.loc["additive", "steady_state"])
    assert by.loc["additive", "loo_rows_status"] != "-"


def test_bad_input_is_refused(split, pair):
    train, test = split
    fits = good = pair
    other = dataclasses.replace(fits["null"], design=train, idata=None)               # cells, not pseudobulk
    with pytest.raises(DesignError, match="different rows|cells per row"):
        compare({"additive": fits["additive"], "cells": other})
    nb = dataclasses.replace(fits["null"], options={**fits["null"].options, "likelihood": "negbin"})
    with pytest.raises(DesignError, match="likelihood"):
        compare({"additive": fits["additive"], "nb": nb})
    with pytest.raises(DesignError, match="two or more"):
        compare({"additive": fits["additive"]})
    with pytest.raises(DesignError, match="non-empty"):
        compare({})
    with pytest.raises(DesignError, match="not a semimech Fit"):
        compare({"x": object(), "y": object()})
    with pytest.raises(DesignError, match="shares perturbations with the training"):
        compare(good, test=train)
    with pytest.raises(DesignError, match="batch_key"):
        compare(good, unit="context")                                     # refused before any refit
    with pytest.raises(DesignError, match="unknown score"):
        compare(good, unit="combinable", score="rows")
    with pytest.raises(DesignError, match="unknown rank_by"):
        compare(good, unit="combinable", rank_by="pearson")
    with pytest.raises(DesignError, match="at least two units"):
        compare(good, unit=["T0"] * fits["null"].design.n_obs)
    # the caller's mistakes in the refits' arguments: refused before any refit, not one "not ranked" note per model
    for kw, match in [({"k": 0}, "k must be between 1"), ({"k": 2.5}, "k must be None or an integer"),
                      ({"num_steps": -5}, "num_steps must be a positive integer"),
                      ({"refit_options": {"learning_rat": 0.01}}, "unknown refit option 'learning_rat'.*learning_rate"),
                      ({"refit_options": {"interactions": "normal"}}, "model option 'interactions'"),
                      ({"refit_options": {"row_mask": None}}, "cannot set 'row_mask'"),
                      ({"tie_se": -1.0}, "tie_se must be a finite number >= 0"),
                      ({"tie_se": float("nan")}, "tie_se must be a finite number")]:
        with pytest.raises(DesignError, match=match):
            compare(good, unit="combinable", **kw)


def test_loo_needs_enough_draws_and_says_so(pair):
    """PSIS-LOO with fewer than 25 draws was arviz-stats' "n_draws_tail must be at least 5"; now a DesignError that
    says what to do, and compare's row LOO notes it instead of failing; 100 draws (the negative control) are scored."""
    from semimech.evaluate import loo

    few = dataclasses.replace(pair["null"], samples={k: v[:, :20] for k, v in pair["null"].samples.items()}, idata=None)
    assert few.num_chains * few.num_draws == 20
    with pytest.raises(DesignError, match="at least 25 posterior draws.*has 20"):
        loo(few)
    _, summary = loo(pair["null"])
    assert np.isfinite(summary["elpd_loo"])


def test_reading_names_the_models_that_separate_a_rank_two_model():
    """Ties are not transitive: C is within 2 SE of the best (A) but B beats it clearly; C's line names B."""
    from semimech.evaluate.compare import _ranks, _tidy

    base = np.linspace(-1.0, 1.0, 10)
    noisy = np.tile([3.5, -2.5], 5)                     # mean 0.5, sd 3: A vs anything is noisy
    pw = {"A": base + noisy, "B": base, "C": base - 1.0}  # B - C = 1 on every unit: separated (SE 0)
    rank, tied, above = _ranks(pw, 2.0)
    assert rank == {"A": 1, "B": 1, "C": 2}
    assert "A" in tied["C"] and [b for b, _, _ in above["C"]] == ["B"]
    assert above["A"] == [] and above["B"] == []
    rows = [{"model": n, "rank": rank[n], "tied_with": ", ".join(tied[n]), "elpd_cv": float(pw[n].sum()), "se": 1.0,
             "elpd_diff": float(pw["A"].sum() - pw[n].sum()), "dse": 1.0, "left_out": "custom left out",
             "below": "; ".join(f"{b} by {d:.1f} (SE {s:.1f})" for b, d, s in above[n]), "note": "",
             "assumes": "x"} for n in pw]
    text = reading(_tidy(pd.DataFrame(rows).set_index("model"), has_test=False))
    line_c = next(ln for ln in text.splitlines() if ln.startswith("C:"))
    assert "rank 2: below B by 10.0 (SE 0.0)" in line_c and "within 2 SE of A" in line_c
    assert "below A" not in line_c and "below 'A'" not in line_c     # the best does not separate it
    # a ranked model's note (e.g. refits that disagree) is part of its line; a model without one gets none
    rows[1]["note"] = "its refits disagree: the held-out L2 of single refits of one fold ranges from 0.4 to 1.3"
    text = reading(_tidy(pd.DataFrame(rows).set_index("model"), has_test=False))
    line_b = next(ln for ln in text.splitlines() if ln.startswith("B:"))
    assert "its refits disagree" in line_b
    assert "disagree" not in next(ln for ln in text.splitlines() if ln.startswith("C:"))


def test_the_paired_se_uses_the_sample_sd_so_five_units_do_not_overclaim():
    """SE of a summed paired difference = sqrt(n) * sd(ddof=1), as loo's se_diff. A gap of 2.15 SE under ddof=0
    is 1.92 SE under ddof=1 with 5 units: tied, not separated (the Norman question has 5 held-out doubles)."""
    from semimech.evaluate.compare import _pairwise_se, _ranks

    d = np.array([1.0, -0.3, 2.0, 0.0, 1.5])
    assert _pairwise_se(d, np.zeros(5)) == pytest.approx(np.sqrt(5) * np.std(d, ddof=1))
    sd0 = np.sqrt(5 * np.var(d))                          # the ddof=0 SE: sum(d) = 4.2 is 2.15 of it
    assert 4.2 > 2.0 * sd0 and 4.2 < 2.0 * _pairwise_se(d, np.zeros(5))
    rank, tied, above = _ranks({"a": d, "b": np.zeros(5)}, 2.0)
    assert rank == {"a": 1, "b": 1} and tied["b"] == ["a"] and above["b"] == []
    # negative control: the same gap on units that agree (small spread) separates them
    rank, _, above = _ranks({"a": np.full(5, 0.8) + [0.01, -0.01, 0.0, 0.02, -0.02], "b": np.zeros(5)}, 2.0)
    assert rank == {"a": 1, "b": 2} and above["b"][0][0] == "a"
    # one unit: no spread to estimate, so no separation whatever the gap
    assert np.isnan(_pairwise_se(np.ones(1), np.zeros(1)))
    assert _ranks({"a": np.array([9.0]), "b": np.array([0.0])}, 2.0)[0] == {"a": 1, "b": 1}


@pytest.mark.slow  # refits of two models
@pytest.mark.parametrize("rank_by", ["l2", "crps"])
def test_rank_by_l2_or_crps_ranks_on_the_cross_validated_error(pair, rank_by):
    table = compare(pair, unit="combinable", k=2, num_steps=120, rank_by=rank_by, row_loo=False, checks=False)
    by = table.set_index("model")
    col = f"cv_{rank_by}"
    assert by.loc["additive", "rank"] == 1 and by.loc["null", "rank"] == 2     # generating model vs forced-zero
    assert by.loc["additive", col] < by.loc["null", col] and by.loc["null", "below"].startswith("additive by ")
    assert table.attrs["rank_by"] == rank_by and f"lowest cross-validated {rank_by.upper()}" in reading(table)
