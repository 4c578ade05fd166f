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
# # Comparing assumptions: additive effects vs steady states of a network
#
# Each model in `semimech.models` states one assumption about how perturbations act
# (`spec.assumes`). Here every registered model is fitted to the same training data (Norman
# 2019 doubles task, shipped copy), and `semimech.evaluate.compare` puts two kinds of evidence
# side by side:
#
# - **PSIS-LOO** on the training rows (elpd; higher is better; differences are meaningful only
#   relative to their standard error `dse`; Pareto k-hat flags rows where the estimate is
#   unreliable);
# - **held-out metrics** on doubles never seen in training (L2, Pearson-delta, 90% coverage, CRPS).
#
# The shared data README warns that non-additivity is not detectable on this split: expect the
# models to be close on held-out L2, and read the calibration columns as the real test.
# `SEMIMECH_SMOKE=1` runs a few steps only (numbers meaningless).

# %%
import os

import numpy as np
import pandas as pd

import semimech as sm
from semimech import evaluate as ev
from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel
from semimech.errors import SemimechError
from semimech.evaluate.compare import reading
from semimech.models import REGISTRY

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
STEPS, DRAWS, N_GENES = (30, 50, 30) if SMOKE else (3000, 400, 100)
pd.set_option("display.width", 200)
pd.set_option("display.max_colwidth", 80)

# %% [markdown]
# ## Data: the genes that respond
# Network models learn a gene x gene matrix, so we model the `N_GENES` genes whose perturbation
# means vary most (and keep TMSB4X, the one target that is also a readout).

# %%
adata = norman19_devel()
full = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
_, means = ev.perturbation_means(full.pseudobulk())
top = set(np.asarray(full.genes)[np.argsort(-means.var(0))[: N_GENES - 1]]) | {"TMSB4X"}
genes = [g for g in full.genes if g in top]
design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control", genes=genes)
train, test = ev.split_combinations(design, test_labels=NORMAN19_COMBINABLE_DOUBLES)
print(design)

# %% [markdown]
# ## Fit every registered model on the same rows
# Same training pseudobulk, same Gaussian likelihood: that is what makes their LOO comparable
# (`compare` refuses anything else).

# %%
rows = train.pseudobulk()
fits = {}
for name, spec in REGISTRY.items():
    try:
        fits[name] = sm.fit_svi(spec, rows, rng_key=0, num_steps=STEPS, num_samples=DRAWS, progress_bar=False)
    except SemimechError as err:  # a model that does not apply to this design (e.g. needs guide counts)
        print(f"skipped {name}: {err}")
for name, fit in fits.items():
    print(f"{name:>22}: {fit.spec.assumes}")

# %% [markdown]
# ## One table: LOO next to held-out accuracy

# %%
table = ev.compare(fits, test=test, reference=train)
cols = ["model", "rank", "elpd_loo", "se", "elpd_diff", "dse", "p_loo", "khat_max", "n_khat_bad",
        "test_l2", "test_pearson_delta", "test_coverage_90", "test_crps"]
print(table[cols].to_string(index=False, float_format="%.3f"))
print()
print(reading(table))

# %% [markdown]
# With 29 pseudobulk rows, each row is a whole perturbation: leaving one out removes
# everything the model knows about that perturbation, so k-hat is often high. Read the
# `n_khat_bad` column before the elpd.

# %% [markdown]
# ## Baselines on the same genes
# Any model should at least match the additive baseline (sum of observed single effects).

# %%
base = ev.score_baselines(train, test, reference=train).query("perturbation == 'mean'")
print(base[["model", "l2", "pearson_delta", "mse_top_de", "direction"]].to_string(index=False, float_format="%.3f"))

# %% [markdown]
# ## Calibration of each model's predictive intervals on the held-out doubles

# %%
preds = {name: sm.predict(fit, test, rng_key=1, num_cells=ev.cell_counts(test)) for name, fit in fits.items()}
for name, pred in preds.items():
    print(f"{name}: {ev.calibration(pred, test).verdict}")
fig = sm.plots.calibration_curve(preds, test)
sm.plots.show(fig, "calibration.png")
