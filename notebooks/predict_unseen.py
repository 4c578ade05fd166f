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
# # Predicting unseen perturbations, with uncertainty
#
# Two kinds of "unseen" (Norman 2019 CRISPRa, shipped copy):
#
# 1. **An unseen combination of seen targets.** The additive model sums the targets' effects
#    and adds an interaction drawn from the scale it learned on the training doubles, so its
#    interval says how far from additive the training doubles were.
# 2. **An unseen single target.** Nothing about the target's own effect is in the data; only a
#    model that propagates an edit through a gene network (`spec.predicts_unseen_targets`) can
#    say more than its prior. TMSB4X is the one Norman target that is also a readout gene.
#
# `SEMIMECH_SMOKE=1` runs a few steps only (numbers meaningless).

# %%
import os

import numpy as np
import pandas as pd

import semimech as sm
from semimech import evaluate as ev
from semimech.datasets import norman19_devel
from semimech.models import REGISTRY, additive

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
STEPS, DRAWS, N_GENES = (30, 50, 30) if SMOKE else (3000, 400, 100)
pd.set_option("display.width", 160)

adata = norman19_devel()
design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")

# %% [markdown]
# ## 1. An unseen combination
# Hold out KLF1+MAP2K6 (both singles stay in training), fit the additive model on the rest.

# %%
train, test = ev.split_combinations(design, test_labels=["KLF1+MAP2K6"])
fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=0, num_steps=STEPS, num_samples=DRAWS,
                 progress_bar=False)
pred = sm.predict(fit, ["control", "KLF1", "MAP2K6", "KLF1+MAP2K6"], rng_key=1,
                  num_cells=ev.cell_counts(design, ["control", "KLF1", "MAP2K6", "KLF1+MAP2K6"]))
print(ev.score(pred, test, reference=train).iloc[:1][["perturbation", "l2", "pearson_delta", "coverage_90", "crps"]])

# %% [markdown]
# The width of the 90% interval of the change, per gene: the unseen double is less certain than
# its seen singles, by the learned interaction scale.

# %%
lo, hi = pred.interval(0.9, kind="mean")
width = pd.Series(np.median(hi - lo, axis=1), index=pred.perturbations, name="median 90% width")
print(width.round(4))
print("interaction scale (posterior mean):", float(fit.flat("interaction_scale").mean()))
fig = sm.plots.predicted_vs_observed(pred, test, labels=["KLF1+MAP2K6"], reference=train)
sm.plots.show(fig, "unseen_double.png")

# %% [markdown]
# A combination never measured at all can be predicted the same way; there is no truth to
# score it against, only its interval.

# %%
never = sm.predict(fit, ["KLF1+SLC38A2"], rng_key=2)
print(never.to_frame(kind="mean").sort_values("sd", ascending=False).head(5).round(3))

# %% [markdown]
# ## 2. An unseen single target
# Hold out every condition that edits TMSB4X. We model the most variable genes (network
# models learn a gene x gene matrix) and keep TMSB4X among them.

# %%
_, means = ev.perturbation_means(design.pseudobulk())
top = set(np.asarray(design.genes)[np.argsort(-means.var(0))[: N_GENES - 1]]) | {"TMSB4X"}
small = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control",
                               genes=[g for g in design.genes if g in top])
train2, test2 = ev.leave_one_target_out(small, "TMSB4X")
network = [s for s in REGISTRY.values() if s.predicts_unseen_targets]
specs = [additive.SPEC] + network[:1]
if not network:
    print("no network model is registered: only the additive model's prior answer is shown")
rows = []
preds = {}
for spec in specs:
    f = sm.fit_svi(spec, train2.pseudobulk(), rng_key=0, num_steps=STEPS, num_samples=DRAWS, progress_bar=False)
    try:
        preds[spec.name] = sm.predict(f, test2, rng_key=1, num_cells=ev.cell_counts(test2))
    except sm.errors.PredictionError as err:  # the additive model refuses an unseen target
        print(f"{spec.name}: {err}")
        continue
    rows.append(ev.score(preds[spec.name], test2, reference=train2).iloc[:1].assign(model=spec.name))
print(pd.concat(rows)[["model", "perturbation", "l2", "pearson_delta", "coverage_90", "crps"]].to_string(index=False))
print(ev.score_baselines(train2, test2, reference=train2).query("perturbation == 'TMSB4X'")[
    ["model", "l2", "pearson_delta"]].to_string(index=False))

# %% [markdown]
# The additive model has no information about TMSB4X, so `predict` refuses rather than answer
# from its prior (it says which model to use instead). A network model ties the
# target's own change to the genes downstream of it; whether that helps here is what the
# table says (on a real screen it often does not: compare with the no-change baseline).

# %%
fig = sm.plots.calibration_curve(preds, test2) if preds else None
if fig is not None:
    sm.plots.show(fig, "unseen_single_calibration.png")
