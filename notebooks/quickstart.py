# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: fit, predict held-out doubles, score, check calibration
#
# Norman et al. (2019) K562 CRISPRa screen, the small copy shipped with semimech (3,375 cells x
# 500 genes, log1p-normalised; BSD-3 via PerturBench). We hold out five double perturbations
# whose singles were both seen, fit the additive model on the training pseudobulk, predict the
# doubles with uncertainty, and compare with the simple baselines that every model must beat.
#
# Run it as a script (`python notebooks/quickstart.py`) or open it with jupytext; in Jupyter the
# figures show inline. `SEMIMECH_SMOKE=1` runs a few optimisation steps only: the code path, not
# the numbers.

# %%
import os

import arviz_plots as azp
import arviz_stats
import pandas as pd

import semimech as sm
from semimech import evaluate as ev
from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel
from semimech.models import additive

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
STEPS, DRAWS = (30, 50) if SMOKE else (3000, 400)
pd.set_option("display.width", 160)

# %% [markdown]
# ## A design, and a split
# `Design` is the only object that reads AnnData. The split keeps the controls on both sides
# (training needs them; the test side uses them as the reference for changes).

# %%
design = sm.Design.from_anndata(norman19_devel(), perturbation_key="perturbation", control="control")
train, test = ev.split_combinations(design, test_labels=NORMAN19_COMBINABLE_DOUBLES)
print(design)
print("held out:", ev.singles_seen(train, NORMAN19_COMBINABLE_DOUBLES))

# %% [markdown]
# ## Before fitting: a prior predictive check
# Do the priors produce readouts on the scale of the data? `sample_prior` draws the model's
# priors (centred on the controls' scale, as fitting does) and replicated readouts; ArviZ's
# `plot_ppc_dist` overlays them on the observed distribution of all readouts.

# %%
prior = sm.sample_prior(additive.SPEC, train.pseudobulk(), rng_key=2, num_samples=50)
azp.plot_ppc_dist(prior, group="prior_predictive", num_samples=20, backend="matplotlib");

# %% [markdown]
# ## Fit the additive model
# The pseudobulk (one row per perturbation) carries each group's within-group sum of squares,
# so fitting it gives the same posterior as fitting every cell, much faster.

# %%
fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=0, num_steps=STEPS, num_samples=DRAWS,
                 progress_bar=False)
print(fit)
print(additive.SPEC.assumes)

# %% [markdown]
# ## The fit as ArviZ sees it
# `fit.idata` is an ArviZ DataTree whose dims and coordinates come from the design (genes,
# targets, perturbations, the training rows as `cells`); it holds the posterior, the SVI loss
# trace in `sample_stats`, the observed and constant data and each training row's
# log-likelihood, so ArviZ's own functions apply directly. A trace plot of the two global
# shrinkage scales (SVI draws are independent: one chain, no mixing to check), then PSIS-LOO,
# leaving one pseudobulk row out. Read its Pareto k-hat first: in our full run (seed 0) every
# row had k-hat above 1, because a row here is ~100 cells and leaving it out moves the
# posterior too far for importance sampling. The LOO numbers are then unreliable; the held-out
# scores below are the honest test.

# %%
print(sorted(fit.idata.children))
azp.plot_trace(fit.idata, var_names=["effect_scale", "interaction_scale"], backend="matplotlib");
print(arviz_stats.loo(fit.idata))

# %% [markdown]
# ## Posterior predictive check and LOO-PIT
# Replicated training readouts from the posterior (one per draw, in the group
# `posterior_predictive`), against the observed ones, for the most variable gene across the
# training pseudobulk rows (pooling all 500 genes mostly shows the spike of unexpressed genes at
# zero). Then the LOO-PIT (ArviZ pairs each readout with its own log-likelihood, so we add them
# per readout): for a calibrated model the PIT values are uniform and the curve stays inside the
# band; a curve below the band on the left and above it on the right means too many PIT values in
# the middle, i.e. predictive distributions wider than the data need.

# %%
sm.add_posterior_predictive(fit, rng_key=3)
gene = fit.design.genes[int(fit.design.dense_y().var(0).argmax())]
print("gene:", gene)
azp.plot_ppc_dist(fit.idata, coords={"genes": [gene]}, num_samples=20, backend="matplotlib");

# %%
sm.add_log_likelihood(fit, unit="entries")
azp.plot_loo_pit(fit.idata, backend="matplotlib");

# %% [markdown]
# ## Predict the held-out doubles
# `num_cells` asks for the mean of as many new cells as the test pseudobulk has, so the
# predictive intervals include the sampling noise of the observed means.

# %%
pred = sm.predict(fit, test, rng_key=1, num_cells=ev.cell_counts(test))
print(pred.to_frame().query("perturbation == 'KLF1+MAP2K6'").head())

# %% [markdown]
# ## Score against the baselines
# L2 on the top-1000 expressed genes (all 500 here), Pearson-delta, MSE on the top-20 DE genes,
# direction accuracy; the probabilistic columns (coverage, CRPS, lpd) exist only for the model.
# The shared data README: no change 1.374, additive baseline 0.446; a perfect predictor still
# scores ~0.26 from sampling noise alone, and non-additivity is not detectable on this split.

# %%
model = ev.score(pred, test, reference=train).assign(model="additive model")
table = pd.concat([model, ev.score_baselines(train, test, reference=train).assign(model=lambda t: t.model + " baseline")])
cols = ["model", "l2", "pearson_delta", "mse_top_de", "direction", "coverage_90", "crps"]
print(table.query("perturbation == 'mean'")[cols].to_string(index=False, float_format="%.3f"))

# %% [markdown]
# ## Are the intervals honest?
# Coverage of central intervals at 50/80/90/95%; a verdict flags over- or under-confidence
# beyond Monte Carlo error.

# %%
report = ev.calibration(pred, test)
print(report)
sm.plots.calibration_curve(pred, test);

# %%
sm.plots.predicted_vs_observed(pred, test, reference=train);
