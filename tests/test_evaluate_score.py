"""The score table: alignment by label and gene, clear errors, and the shared README numbers."""

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES
from semimech.errors import PredictionError
from semimech.evaluate import (
    PointPrediction,
    additive,
    calibration,
    perturbation_means,
    score,
    score_baselines,
    split_combinations,
    split_rows,
)


@pytest.fixture(scope="module")
def cells():
    """Single cells: control, A, B, A+B over 5 genes, 40 cells each; A+B held out."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "A+B"], 40)
    shift = {"control": 0.0, "A": 1.0, "B": -1.0, "A+B": 0.5}
    base = np.linspace(1, 5, 5)
    y = base + np.array([shift[x] for x in labels])[:, None] * np.array([1, 0.5, 0, -0.5, -1]) \
        + rng.normal(size=(160, 5))
    frame = pd.DataFrame(y, columns=[f"g{i}" for i in range(5)], index=[f"c{i}" for i in range(160)]).assign(p=labels)
    d = sm.Design.from_frame(frame, readouts=[f"g{i}" for i in range(5)], perturbation_key="p", control="control")
    return split_rows(d, labels == "A+B")


def _prediction(labels, genes, draws, model="hand"):
    return sm.Prediction(perturbations=tuple(labels), genes=tuple(genes),
                         draws={"mean": draws, "observed_mean": draws}, control="control", model=model)


def test_truth_is_the_cell_mean_per_perturbation(cells):
    train, test = cells
    labels, truth = perturbation_means(test)
    assert labels == ("control", "A+B")
    y = test.dense_y()
    np.testing.assert_allclose(truth[1], y[test.perturbation_index == test.perturbations.index("A+B")].mean(0))
    # a pseudobulk design gives the same truth
    np.testing.assert_allclose(perturbation_means(test.pseudobulk())[1], truth)


def test_perfect_prediction_scores_perfectly(cells):
    train, test = cells
    _, truth = perturbation_means(test, ["A+B"])
    table = score(PointPrediction(("A+B",), test.genes, truth, "oracle"), test)
    row = table.iloc[0]
    assert row.l2 == pytest.approx(0) and row.pearson_delta == pytest.approx(1) and row.mse_top_de == 0
    assert row.direction == 1 and np.isnan(row.coverage_90) and np.isnan(row.crps)
    assert list(table.perturbation) == ["A+B", "mean"]


def test_score_aligns_by_label_and_gene(cells):
    train, test = cells
    _, truth = perturbation_means(test, ["A+B"])
    rng = np.random.default_rng(1)
    draws = truth[None] + 0.3 * rng.normal(size=(200, 1, 5))
    ref = score(_prediction(["A+B"], test.genes, draws), test)
    order = [3, 0, 4, 1, 2]
    shuffled = np.concatenate([draws[:, :, order], draws[:, :, order] + 7.0], axis=1)
    genes = [test.genes[i] for i in order]
    got = score(_prediction(["B+A", "control"], genes, shuffled), test)  # combination written the other way
    pd.testing.assert_frame_equal(ref, got)
    assert 0 <= ref.loc[0, "coverage_90"] <= 1 and ref.loc[0, "crps"] > 0 and np.isfinite(ref.loc[0, "lpd"])


def test_probabilistic_columns_follow_hand_computation(cells):
    train, test = cells
    _, truth = perturbation_means(test, ["A+B"])
    draws = np.broadcast_to(np.arange(101.0)[:, None, None] / 100 - 0.5, (101, 1, 5)) + truth
    draws = draws.copy()
    draws[:, 0, :2] += 10.0  # two genes far off: outside every interval
    row = score(_prediction(["A+B"], test.genes, draws), test).iloc[0]
    assert row.coverage_50 == pytest.approx(0.6) and row.coverage_95 == pytest.approx(0.6)


def test_mismatched_perturbations_or_genes_are_clear_errors(cells):
    train, test = cells
    draws = np.zeros((10, 1, 5))
    with pytest.raises(PredictionError, match=r"no rows for perturbations \['A\+B'\]"):
        score(_prediction(["A"], test.genes, draws), test)
    with pytest.raises(PredictionError, match="different genes"):
        score(_prediction(["A+B"], ["g0", "g1", "g2", "g3", "x"], draws), test)
    with pytest.raises(PredictionError, match="different genes"):
        score(PointPrediction(("A+B",), test.genes[:4], np.zeros((1, 4)), "short"), test)
    only_mean = sm.Prediction(("A+B",), test.genes, {"mean": draws}, "control", "m")
    with pytest.raises(PredictionError, match="num_cells"):
        score(only_mean, test)
    assert np.isfinite(score(only_mean, test, kind="mean").loc[0, "l2"])
    with pytest.raises(PredictionError, match="cannot score"):
        score(np.zeros((1, 5)), test)


def test_calibration_of_a_prediction(cells):
    train, test = cells
    rng = np.random.default_rng(2)
    genes = [f"g{i}" for i in range(200)]
    y = rng.normal(size=(60, 200))
    labels = np.repeat(["control", "A"], 30)
    frame = pd.DataFrame(y, columns=genes, index=[f"c{i}" for i in range(60)]).assign(p=labels)
    big = sm.Design.from_frame(frame, readouts=genes, perturbation_key="p", control="control")
    _, truth = perturbation_means(big, ["A"])
    sd = 1 / np.sqrt(30)  # the sd of a mean of 30 standard-normal cells
    right = _prediction(["A"], genes, rng.normal(size=(1000, 1, 200)) * sd)
    assert calibration(right, big).verdict == "calibrated"
    wide = _prediction(["A"], genes, rng.normal(size=(1000, 1, 200)) * 5 * sd)
    assert calibration(wide, big).verdict == "underconfident"
    narrow = _prediction(["A"], genes, rng.normal(size=(1000, 1, 200)) * 0.3 * sd)
    assert calibration(narrow, big).verdict == "overconfident"
    with pytest.raises(PredictionError, match="point prediction"):
        calibration(additive(train, test), test)


def test_score_baselines_reproduces_shared_readme_numbers_on_norman(norman_design):
    # ../shared/data/README.md: no change L2 1.374; additive L2 0.446, Pearson-delta 0.870,
    # MSE top-20 DE 0.007, direction 0.91; train mean L2 1.388
    train, test = split_combinations(norman_design, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    table = score_baselines(train, test, baselines=("no_change", "train_mean", "additive"))
    mean = table[table.perturbation == "mean"].set_index("model")
    assert mean.loc["no_change", "l2"] == pytest.approx(1.374, abs=5e-4)
    assert mean.loc["additive", "l2"] == pytest.approx(0.446, abs=5e-4)
    assert mean.loc["additive", "pearson_delta"] == pytest.approx(0.870, abs=5e-4)
    assert mean.loc["additive", "mse_top_de"] == pytest.approx(0.007, abs=5e-4)
    assert mean.loc["additive", "direction"] == pytest.approx(0.91, abs=5e-3)
    assert mean.loc["train_mean", "l2"] == pytest.approx(1.388, abs=5e-4)
    assert set(table.perturbation) == set(NORMAN19_COMBINABLE_DOUBLES) | {"mean"}
    # pseudobulk first: identical numbers
    tr_pb, te_pb = split_combinations(norman_design.pseudobulk(), test_labels=NORMAN19_COMBINABLE_DOUBLES)
    pb = score_baselines(tr_pb, te_pb, baselines=("additive",))
    assert pb.iloc[-1].l2 == pytest.approx(mean.loc["additive", "l2"], rel=1e-9)


def test_leave_one_condition_out_reproduces_shared_readme_numbers_on_sachs(shared_data):
    # ../shared/data/README.md: Sachs leave-one-condition-out on the natural log of raw values,
    # per-protein means, 8 conditions: no change RMSE 0.915, train mean 1.07
    import anndata as ad

    from semimech.datasets import read_sachs2005
    from semimech.evaluate import leave_one_condition_out

    raw = read_sachs2005(shared_data / "sachs2005")
    logged = ad.AnnData(X=np.log(raw.X), obs=raw.obs.copy(), var=raw.var.copy())
    d = sm.Design.from_anndata(logged, perturbation_key="condition", control="cd3_cd28")
    rows = []
    for label in d.perturbations[1:]:
        train, test = leave_one_condition_out(d, label)
        rows.append(score_baselines(train, test, baselines=("no_change", "train_mean")).query("perturbation != 'mean'"))
    table = pd.concat(rows).groupby("model").rmse.mean()
    assert len(rows) == 8
    assert table["no_change"] == pytest.approx(0.915, abs=5e-4)
    assert table["train_mean"] == pytest.approx(1.07, abs=5e-4)


def test_transfer_to_an_unseen_cell_line_reproduces_shared_readme_on_mcfaline(shared_data):
    # ../shared/data/README.md: McFaline-Figueroa cell-line transfer has essentially no signal;
    # no change (L2 2.08, each line's own control) beats every transfer baseline.
    import anndata as ad

    from semimech.evaluate import transfer

    full = ad.read_h5ad(shared_data / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad")
    mcf = full[full.obs["dataset"] == "mcfaline23"].copy()
    d = sm.Design.from_anndata(mcf, perturbation_key="perturbation", control="control", batch_key="cell_type")
    tables = []
    for line in d.batches:
        train, test = transfer(d, contexts="batches", test_contexts=[line])
        t = score_baselines(train, test, batch=line, reference=train)
        tables.append(t[t.perturbation != "mean"])
    table = pd.concat(tables)
    assert len(table) == 4 * 27
    mean_l2 = table.groupby("model").l2.mean()
    assert mean_l2["no_change"] == pytest.approx(2.08, abs=5e-3)
    assert mean_l2["train_mean"] > mean_l2["no_change"] and mean_l2["additive"] > mean_l2["no_change"]
    # no knocked-down kinase is among the 500 readout genes: the linear model has no embedding
    # for any target and reduces exactly to no change (its documented fallback)
    assert mean_l2["linear"] == pytest.approx(mean_l2["no_change"], rel=1e-12)
    # a baseline that ignored the line's own control would be far worse: the lines differ a lot
    pooled_control = score(sm.evaluate.no_change(train, test), test, batch=d.batches[-1]).iloc[-1].l2
    assert pooled_control > 2 * mean_l2["no_change"]


def test_inhibitor_combinations_reproduce_shared_readme_on_hepg2(shared_data):
    # ../shared/data/README.md: HepG2CancerRes2011 at t = 30 min, per cell line and stimulus,
    # train on no/single inhibitor, predict doubles/triple; RMSE on log10(x+1) over 18 readouts and
    # 200 held-out rows: no change 0.427, additive 0.284, strongest single ("min") 0.194.
    from semimech.datasets import read_midas

    path = shared_data / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv"
    long = read_midas(path).query("time == 30")
    wide = np.log10(long.pivot_table(index=["cell_line", "stimuli", "inhibitors"], columns="readout",
                                     values="value", aggfunc="mean") + 1).reset_index()
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors")]
    wide["context"] = wide.cell_line + "|" + wide.stimuli
    wide.index = wide.context + "|" + wide.inhibitors
    d = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="inhibitors", control="none",
                             batch_key="context")
    tables = []
    for ctx in d.batches:
        sub = d.subset(d.batch_index == d.batches.index(ctx))
        train, test = split_combinations(sub)
        t = score_baselines(train, test, baselines=("no_change", "additive", "min_single"))
        tables.append(t[t.perturbation != "mean"])
    table = pd.concat(tables)
    pooled = table.groupby("model").rmse.apply(lambda r: np.sqrt(np.mean(r**2)))
    assert len(table) == 3 * 200
    assert pooled["no_change"] == pytest.approx(0.427, abs=5e-4)
    assert pooled["additive"] == pytest.approx(0.284, abs=5e-4)
    assert pooled["min_single"] == pytest.approx(0.194, abs=5e-4)


def test_counts_truth_is_per_unit_size_factor(small_counts_adata):
    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control")
    assert d.is_counts
    labels, means = perturbation_means(d, ["A"])
    rows = d.perturbation_index == d.perturbations.index("A")
    y = d.dense_y()
    np.testing.assert_allclose(means[0], y[rows].sum(0) / d.size_factors[rows].sum())
    np.testing.assert_allclose(perturbation_means(d.pseudobulk(), ["A"])[1], means)  # sums of counts and factors
    from semimech.evaluate import leave_one_target_out

    train, test = leave_one_target_out(d, "B")
    table = score_baselines(train, test, baselines=("no_change", "additive"))
    assert set(table.perturbation) == {"B", "A+B", "mean"} and np.isfinite(table.l2).all()


def test_systema_columns_use_training_centroids(cells):
    from semimech.evaluate import centroid_accuracy, pearson_delta

    train, test = cells
    _, truth = perturbation_means(test, ["A+B"])
    pred = PointPrediction(("A+B",), test.genes, truth + 0.05, "near")
    row = score(pred, test, reference=train).iloc[0]
    _, tm = perturbation_means(train, ["A", "B"])
    assert row.pearson_delta_pert == pytest.approx(pearson_delta(truth, pred.values, tm.mean(0))[0])
    centroids = np.concatenate([truth, tm])
    assert row.centroid_accuracy == pytest.approx(centroid_accuracy(pred.values, centroids, [0])[0])
    assert np.isnan(score(pred, test).iloc[0].centroid_accuracy)  # one test centroid: nothing to compare
