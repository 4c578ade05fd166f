"""Plots run on the Agg backend and draw axes."""

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech import plots
from semimech.errors import PredictionError
from semimech.evaluate import additive, perturbation_means, split_rows


@pytest.fixture(scope="module")
def agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "A+B", "C"], 20)
    genes = [f"g{i}" for i in range(6)]
    frame = pd.DataFrame(rng.normal(size=(100, 6)), columns=genes, index=[f"c{i}" for i in range(100)]).assign(p=labels)
    d = sm.Design.from_frame(frame, readouts=genes, perturbation_key="p", control="control")
    train, test = split_rows(d, np.isin(labels, ["A+B", "C"]))
    lab, truth = perturbation_means(d)
    draws = truth[None] + 0.2 * rng.normal(size=(100, len(lab), 6))
    pred = sm.Prediction(lab, d.genes, {"mean": draws, "observed_mean": draws}, "control", "hand")
    return d, train, test, pred


def test_predicted_vs_observed(agg, setup):
    d, train, test, pred = setup
    fig = plots.predicted_vs_observed(pred, test)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    fig = plots.predicted_vs_observed(pred, test, pooled=True)
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is not None
    fig = plots.predicted_vs_observed(additive(train, test), test)  # point prediction: no bars
    assert fig.axes[0].get_xlabel() == "observed change"


def test_calibration_curve(agg, setup):
    d, train, test, pred = setup
    fig = plots.calibration_curve({"hand": pred, "again": pred}, test)
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) >= 3
    with pytest.raises(PredictionError, match="point prediction"):
        plots.calibration_curve({"additive": additive(train, test)}, test)


def test_posterior_predictive_check(agg, setup):
    d, train, test, pred = setup
    fig = plots.posterior_predictive_check(pred, d)
    assert len(fig.axes) == 2


def test_forest_plot_from_a_fit(agg, setup):
    from semimech.models import additive as additive_model

    d, *_ = setup
    rng = np.random.default_rng(1)
    effect = rng.normal(size=(1, 50, len(d.targets), d.n_genes))
    fit = sm.Fit(spec=additive_model.SPEC, design=d, samples={"effect": effect},
                 dims={"effect": ("targets", "genes")}, method="svi", options={})
    fig = plots.forest(fit, genes=["g0", "g3"])
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(d.targets)
    with pytest.raises(PredictionError, match="unknown"):
        plots.forest(fit, genes=["nope"])
    with pytest.raises(PredictionError, match="no site"):
        plots.forest(fit, genes=["g0"], site="interaction_z")
