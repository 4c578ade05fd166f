"""compare(): PSIS-LOO of fits on the same rows next to held-out metrics.

Known answer: on data with strong perturbation effects the additive model must win LOO by
several standard errors of the difference over a model whose effects are forced to zero (the
negative control, which must lose), and predict the held-out combination better. The row
log-likelihood is checked against a hand computation, and a pseudobulk row against its cells.
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


@pytest.fixture(scope="module")
def split():
    """Cells: control, A, B, A+B (additive truth) over 4 genes, 15 cells each; A+B held out."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "A+B"], 15)
    e_a, e_b = np.array([1.0, 0.5, 0.0, 0.0]), np.array([0.0, 0.0, -0.5, -1.0])
    has_a = np.array(["A" in x for x in labels], float)[:, None]
    has_b = np.array(["B" in x for x in labels], float)[:, None]
    y = 2.0 + has_a * e_a + has_b * e_b + 0.4 * rng.normal(size=(60, 4))
    frame = pd.DataFrame(y, columns=[f"g{i}" for i in range(4)], index=[f"c{i}" for i in range(60)]).assign(p=labels)
    d = sm.Design.from_frame(frame, readouts=[f"g{i}" for i in range(4)], perturbation_key="p", control="control")
    return split_combinations(d)


@pytest.fixture(scope="module")
def fits(split):
    train, _ = split
    opts = dict(rng_key=0, num_steps=400, num_samples=200, progress_bar=False)
    return {"additive": sm.fit_svi(additive.SPEC, train, **opts), "null": sm.fit_svi(NULL, train, **opts)}


def test_row_log_likelihood_is_the_hand_computed_gaussian_density(fits):
    fit = fits["additive"]
    ll = pointwise_log_likelihood(fit)
    d = fit.design
    assert ll.shape == (1, 200, d.n_obs)
    data = d.model_data()
    mean = fit.flat("mean")[:, d.perturbation_index]                      # draws x rows x genes
    sd = np.sqrt(fit.flat("noise_sd") ** 2 + data["noise_floor"] ** 2)[:, None, :]
    hand = norm.logpdf(d.dense_y()[None], mean, sd).sum(-1)
    np.testing.assert_allclose(ll[0], hand, rtol=2e-4, atol=2e-3)


def test_pseudobulk_row_log_likelihood_is_its_cells_joint_density(fits):
    fit = fits["additive"]
    pb = fit.design.pseudobulk()
    fit_pb = dataclasses.replace(fit, design=pb, idata=None)   # same draws, the pseudobulk rows
    cells, rows = pointwise_log_likelihood(fit), pointwise_log_likelihood(fit_pb)
    summed = np.stack([cells[..., fit.design.perturbation_index == p].sum(-1) for p in pb.perturbation_index], -1)
    np.testing.assert_allclose(rows, summed, rtol=1e-4, atol=1e-2)
    # without the within-group term a pseudobulk row would be far from its cells' density
    assert np.abs(rows - summed).max() < 1e-2 * np.abs(summed).max()


def test_true_model_wins_loo_and_the_null_model_loses(split, fits):
    train, test = split
    table = compare(fits, test=test, reference=train)
    assert list(table.model) == ["additive", "null"]                    # best first
    best, null = table.iloc[0], table.iloc[1]
    assert best["rank"] == 0 and best.elpd_diff == 0.0
    # negative control: effects forced to zero must lose by several se of the difference
    assert null.elpd_diff > 4 * null.dse > 0
    assert null.elpd_loo < best.elpd_loo
    assert best.test_l2 < null.test_l2                                  # and predicts A+B better
    assert set(table.columns) >= {"elpd_loo", "se", "p_loo", "khat_max", "n_khat_bad", "loo", "assumes",
                                  "test_l2", "test_coverage_90", "weight"}
    assert table.n_rows.tolist() == [train.n_obs] * 2 and (table.loo == "psis").all()
    assert table.assumes.iloc[1] == NULL.assumes
    text = reading(table)
    assert "best by LOO" in text and "worse than 'additive'" in text


def test_subsampled_loo_agrees_with_full_loo(fits):
    full = compare({"additive": fits["additive"]}, subsample=None).iloc[0]
    sub = compare({"additive": fits["additive"]}, subsample=30, rng_key=1).iloc[0]
    assert sub.loo == "psis-subsample(30)"
    assert sub.elpd_loo == pytest.approx(full.elpd_loo, abs=3 * max(sub.se, 1.0))
    assert np.isnan(full.test_l2)                                       # no test design: no held-out columns


def test_loo_of_different_rows_or_likelihoods_is_refused(split, fits):
    train, _ = split
    other = dataclasses.replace(fits["null"], design=train.pseudobulk(), idata=None)
    with pytest.raises(DesignError, match="same rows|different rows|cells per row"):
        compare({"additive": fits["additive"], "pseudobulk": other})
    fewer = dataclasses.replace(fits["null"], design=train.subset(np.arange(train.n_obs - 1)), idata=None)
    with pytest.raises(DesignError, match="different rows"):
        compare({"additive": fits["additive"], "fewer": fewer})
    nb = dataclasses.replace(fits["null"], options={**fits["null"].options, "likelihood": "negbin"})
    with pytest.raises(DesignError, match="likelihood"):
        compare({"additive": fits["additive"], "nb": nb})
    with pytest.raises(DesignError, match="non-empty"):
        compare({})
    with pytest.raises(DesignError, match="not a semimech Fit"):
        compare({"x": object()})


def test_a_failed_psis_estimate_is_ranked_last_and_said_so(split, fits, monkeypatch):
    import importlib

    cmp = importlib.import_module("semimech.evaluate.compare")  # the module (the package re-exports the function)

    real = cmp.loo

    def fake(fit, **kw):
        res, s = real(fit, **kw)
        if fit.spec.name == "additive":
            s = {**s, "elpd_loo": float("nan"), "se": float("nan")}
        return res, s

    monkeypatch.setattr(cmp, "loo", fake)
    table = cmp.compare(fits)
    assert list(table.model) == ["null", "additive"]
    assert "PSIS failed" in table.note.iloc[1] and np.isnan(table.dse).all()
    assert "no LOO estimate" in reading(table)
