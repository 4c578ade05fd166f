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
# # Which experiment next?
#
# A posterior says where the model is unsure; `semimech.design.recommend` turns that into the
# next batch: it ranks candidate conditions by what measuring them would teach, and returns the
# best `budget` of them, chosen greedily (each pick given the earlier ones, so near-duplicates do
# not fill a batch), with the controls every batch needs.
#
# Here, on the shipped Norman 2019 subset: a pilot screen measures every condition with only 10
# cells (control 30). We care about the 15 doubles. Which 4 conditions should get 20 more cells?
# We "run" the chosen experiment from the held-back cells, refit, and check that the uncertainty
# about the doubles shrank where and as much as predicted — against a random choice of 4.
#
# `SEMIMECH_SMOKE=1` runs a few steps only (numbers meaningless).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import semimech as sm
from semimech.datasets import norman19_devel
from semimech.design import recommend
from semimech.models import additive

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
STEPS, DRAWS = (30, 50) if SMOKE else (1500, 256)
PILOT, MORE = 10, 20
pd.set_option("display.width", 160)

adata = norman19_devel()
detected = np.asarray((adata.X > 0).mean(axis=0)).ravel() >= 0.005
adata = adata[:, detected].copy()
full = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
labels = adata.obs["perturbation"].astype(str).to_numpy()
rng = np.random.default_rng(0)
cells = {lab: rng.permutation(np.flatnonzero(labels == lab)) for lab in np.unique(labels)}
doubles = sorted(lab for lab in cells if "+" in lab)


def screen(extra: dict) -> sm.Design:
    """The pilot (10 cells per condition, 30 controls) plus 20 more cells of each label in ``extra``."""
    rows = [cells["control"][:3 * PILOT]]
    rows += [idx[:PILOT + MORE * extra.get(lab, 0)] for lab, idx in cells.items() if lab != "control"]
    return full.subset(np.concatenate(rows)).pseudobulk(by_batch=False)


def fit_on(design):
    return sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=STEPS, num_samples=DRAWS, progress_bar=False)


def sd_of_doubles(fit):
    """Posterior sd of each double's population mean, averaged over genes."""
    return sm.predict(fit, doubles, rng_key=1).draws["mean"].std(0).mean(1)


pilot = fit_on(screen({}))
print(f"{len(doubles)} doubles, {full.n_genes} genes; pilot fit on {screen({}).n_obs} pseudobulk rows")

# %% [markdown]
# ## Rank the candidates
# Every non-control condition is a candidate ("20 more cells of it"). The objective is the
# expected reduction of the posterior variance of the doubles' means (`targets=doubles`), summed
# over doubles and genes. `expected_gain` is each pick's gain given the picks before it;
# `gain_alone` what it would gain on its own. The last row is the batch's control allocation.

# %%
candidates = [lab for lab in cells if lab != "control"]
rec = recommend(pilot, candidates, budget=4, objective="predictive", targets=doubles, rng_key=2, num_cells=MORE)
print(rec[["condition", "role", "pick", "expected_gain", "gain_alone", "num_cells"]].to_string(index=False))
print("unit:", rec.attrs["unit"], "| before:", round(rec.attrs["total_before"], 4))
ranking = pd.DataFrame(rec.attrs["ranking"])
print(ranking.head(8).to_string(index=False))

# %% [markdown]
# The information objective asks another question: how much would each candidate teach about
# the doubles' *interactions* (nats, with its Monte Carlo standard error)?

# %%
info = recommend(pilot, candidates, budget=4, objective="information", about="interactions", targets=doubles,
                 rng_key=3, num_cells=MORE, num_draws=128 if SMOKE else 256)
print(info[["condition", "role", "expected_gain", "gain_se"]].to_string(index=False))

# %% [markdown]
# ## Run the experiment, refit, compare with a random batch
# The chosen conditions get 20 more cells each (from the cells held back), and so does a random
# batch of 4. Realised reduction = the summed posterior variance of the doubles' means before
# minus after the refit.

# %%
picked = list(rec.loc[rec.role == "candidate", "condition"])
random_pick = list(np.random.default_rng(5).choice(candidates, size=4, replace=False))
after = {"recommended": fit_on(screen({lab: 1 for lab in picked})),
         "random": fit_on(screen({lab: 1 for lab in random_pick}))}


def summed_var(fit):
    return float(sm.predict(fit, doubles, rng_key=1).draws["mean"].var(0, ddof=1).sum())


before = summed_var(pilot)
rows = [{"batch": name, "conditions": ", ".join(picked if name == "recommended" else random_pick),
         "expected reduction": rec.loc[rec.role == "candidate", "expected_gain"].sum() if name == "recommended"
         else np.nan, "realised reduction": before - summed_var(f)} for name, f in after.items()]
print(pd.DataFrame(rows).to_string(index=False))

# %% [markdown]
# Where did the uncertainty shrink? The posterior sd of each double's mean before and after the
# recommended experiment; the doubles it measured (or whose singles it measured) move most.

# %%
sd0, sd1 = sd_of_doubles(pilot), sd_of_doubles(after["recommended"])
touched = [any(set(d.split("+")) & set(p.split("+")) for p in picked) for d in doubles]
fig, ax = plt.subplots(figsize=(7, 3.5))
x = np.arange(len(doubles))
ax.bar(x - 0.2, sd0, 0.4, label="pilot")
ax.bar(x + 0.2, sd1, 0.4, label="after the recommended batch")
ax.set_xticks(x, [d + (" *" if t else "") for d, t in zip(doubles, touched)], rotation=70, fontsize=7)
ax.set_ylabel("posterior sd of the mean (avg over genes)")
ax.set_title("* : shares a target with a recommended condition")
ax.legend()
fig.tight_layout()
sm.plots.show(fig, "next_experiment_sd.png")

# %% [markdown]
# Caveats. The gains are for the fitted model: if the model is wrong (here: the doubles are
# nearly additive, see the data README) a batch that teaches the model most need not be the one
# that teaches you most. The Gaussian update behind `"predictive"` cannot see a hyperparameter
# (the interaction scale) being learned; `estimator="reweight"` can, at a Monte Carlo cost.
# `benchmarks/next_experiment.py` measures whether choosing this way beats random choice over
# several rounds and seeds (`benchmarks/RESULTS_next_experiment.md`).
