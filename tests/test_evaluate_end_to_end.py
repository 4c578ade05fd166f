"""One short real fit: split -> fit -> predict -> score and calibration (slow)."""

import numpy as np
import pytest

import semimech as sm
from semimech.evaluate import calibration, cell_counts, score, score_baselines, split_combinations


@pytest.mark.slow
def test_additive_model_on_norman_doubles_end_to_end(norman_design):
    from semimech.models import additive

    train, test = split_combinations(norman_design)
    fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=0, num_steps=500, num_samples=200,
                     progress_bar=False)
    pred = sm.predict(fit, test, rng_key=1, num_cells=cell_counts(test))
    model = score(pred, test, reference=train)
    base = score_baselines(train, test, reference=train).set_index(["model", "perturbation"])
    mean = model.iloc[-1]
    cols = ["l2", "pearson_delta", "mse_top_de", "direction", "coverage_50", "coverage_90", "crps", "lpd"]
    assert np.all(np.isfinite(mean[cols].to_numpy(float)))
    # the model learns the single effects: far better than no change, in the range of additive
    assert mean.l2 < 0.7 * base.loc[("no_change", "mean"), "l2"]
    assert mean.pearson_delta > 0.7
    report = calibration(pred, test)
    assert report.verdict in {"calibrated", "overconfident", "underconfident", "miscalibrated"}
    assert len(report.table) == 4
