"""Held-out evaluation: splits, baselines, metrics, calibration, one scoring table.

Pure numpy/pandas on top of :class:`semimech.Design` and :class:`semimech.Prediction`::

    import pandas as pd
    import semimech as sm
    from semimech import evaluate as ev
    from semimech.datasets import norman19_devel
    from semimech.models import additive

    design = sm.Design.from_anndata(norman19_devel(), perturbation_key="perturbation", control="control")
    train, test = ev.split_combinations(design)          # held-out doubles, both singles seen
    fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=0, num_steps=2000)
    pred = sm.predict(fit, test, rng_key=1, num_cells=ev.cell_counts(test))
    table = pd.concat([ev.score(pred, test, reference=train),
                       ev.score_baselines(train, test, reference=train)])
    print(ev.calibration(pred, test))                   # calibrated / overconfident / underconfident

- splits: :func:`split_combinations` (0/1/2 singles seen), :func:`leave_one_perturbation_out`,
  :func:`leave_one_target_out`, :func:`leave_one_condition_out`, :func:`transfer`,
  :func:`split_rows` (controls go to both sides; none left in training is an error).
- baselines (:data:`BASELINES`): :func:`no_change`, :func:`train_mean`, :func:`additive`,
  :func:`linear` (Ahlmann-Eltze et al. 2025), :func:`min_single`.
- metrics on arrays: :func:`l2`, :func:`rmse`, :func:`pearson_delta`, :func:`mse_top_de`,
  :func:`direction_accuracy`, :func:`centroid_accuracy`, :func:`energy_distance`; from draws:
  :func:`coverage`, :func:`pit`, :func:`pit_histogram`, :func:`crps`,
  :func:`log_predictive_density`, :func:`calibration_report`.
- tables: :func:`score`, :func:`score_baselines`, :func:`score_distribution`, :func:`calibration`.
- comparison of assumptions: :func:`compare` (cross-validated elpd over held-out perturbations,
  combinations or contexts via arviz-stats, ties within 2 SE, calibration and assumption checks
  beside it), :func:`cross_validate` (one model), :func:`loo` (PSIS-LOO over rows),
  :func:`pointwise_log_likelihood`.
"""

from semimech.evaluate._align import (
    PointPrediction,
    cell_counts,
    control_mean,
    perturbation_effects,
    perturbation_means,
)
from semimech.evaluate.baselines import (
    BASELINES,
    DEFAULT_BASELINES,
    additive,
    linear,
    min_single,
    no_change,
    single_effects,
    train_mean,
)
from semimech.evaluate.probabilistic import (
    LEVELS,
    CalibrationReport,
    calibration_report,
    coverage,
    pit_calibration,
    crps,
    log_predictive_density,
    pit,
    pit_histogram,
)
from semimech.evaluate.distribution import cells_of, score_distribution, shifted_control_cells
from semimech.evaluate.metrics import (
    centroid_accuracy,
    direction_accuracy,
    energy_distance,
    l2,
    mse_top_de,
    pearson_delta,
    rmse,
    top_de_genes,
    top_expressed_genes,
)
from semimech.evaluate.compare import compare, loo, pointwise_log_likelihood
from semimech.evaluate.cv import CrossValidation, cross_validate, unit_labels
from semimech.evaluate.score import Aligned, align, calibration, score, score_baselines
from semimech.evaluate.splits import (
    leave_one_condition_out,
    leave_one_perturbation_out,
    leave_one_target_out,
    singles_seen,
    split_combinations,
    split_rows,
    transfer,
)

__all__ = [
    "BASELINES", "DEFAULT_BASELINES", "LEVELS", "Aligned", "CalibrationReport", "CrossValidation", "PointPrediction", "additive", "align", "calibration",
    "calibration_report", "cell_counts", "compare", "cross_validate", "loo", "pointwise_log_likelihood", "cells_of", "centroid_accuracy", "control_mean", "coverage", "crps", "direction_accuracy",
    "energy_distance", "l2", "leave_one_condition_out", "leave_one_perturbation_out", "leave_one_target_out",
    "linear", "log_predictive_density", "min_single", "mse_top_de", "no_change", "pearson_delta", "perturbation_effects", "perturbation_means", "rmse", "pit",
    "pit_calibration", "pit_histogram", "score", "score_baselines", "score_distribution", "shifted_control_cells", "single_effects", "singles_seen", "split_combinations",
    "split_rows", "top_de_genes", "top_expressed_genes", "train_mean", "transfer", "unit_labels",
]
