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
# # Comparing assumptions: which one predicts combinations we have not measured?
#
# Each model in `semimech.models` states one assumption about how perturbations act
# (`spec.assumes`). The question here is the one of the Norman 2019 doubles task: **which
# assumption best predicts a double perturbation whose two singles were measured?**
#
# `semimech.evaluate.compare` answers it by cross-validation over held-out *units* (here the
# doubles): every model is refitted without them (from scratch: a warm start leaked the left-out
# data), and each unit's observed mean profile is scored under the refit's predictive. Here all 5
# doubles are left out at once (`k=1`): the refit trains on the singles and the other doubles, the
# held-out task's own training rows; leaving one double out at a time would keep the other four in
# training, an easier question. Each refit is made 3 times with independent keys and their draws
# pooled (`refits=3`): a model whose fits land in different optima is scored on all of them. The rank is on the **CRPS** of those held-out means (a proper score of the whole
# predictive distribution, in expression units, about the absolute error where the error is
# large); the elpd (log score) is reported beside it. Models closer than two standard errors of
# their paired per-unit difference share a rank: a tie means "the evidence cannot separate them".
# Rank 1 also needs the point predictions: a model tied first by CRPS whose held-out L2 is worse
# than another first-ranked model's by more than two standard errors ranks below it.
#
# Two things decide whether such a comparison can be trusted, and this notebook shows both:
# 1. **The left-out unit must be the question.** Cross-validation can only ask about doubles of
#    seen singles if the data hold such doubles (`unit="combinable"`). The task's training split
#    holds none, so the comparison is run on all the rows a user of this screen has.
# 2. **Its ranking should agree with held-out evidence.** Beside it: the same models fitted on the
#    training split only and scored on the 5 held-out doubles (the task of `benchmarks/heldout.py`).
#
# `SEMIMECH_SMOKE=1` runs a tiny version (two models, few steps; numbers meaningless).

# %%
import os

import numpy as np
import pandas as pd
from scipy import stats

import semimech as sm
from semimech import evaluate as ev
from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel
from semimech.errors import DesignError, SemimechError
from semimech.evaluate.compare import reading
from semimech.models import REGISTRY

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
STEPS, DRAWS = (30, 40) if SMOKE else (2000, 200)
MODELS = ["additive", "linear_steady_state"] if SMOKE else list(REGISTRY)
pd.set_option("display.width", 200)
pd.set_option("display.max_colwidth", 60)

# %% [markdown]
# ## Data
# The shipped Norman subset: control, 18 singles, 15 doubles. Genes: those detected in at least
# 0.5% of the training split's cells (105), as the benchmark. Training split: everything but the 5
# doubles whose singles are both measured; those 5 are the held-out test.

# %%
adata = norman19_devel()
test_mask = adata.obs["perturbation"].isin(NORMAN19_COMBINABLE_DOUBLES).to_numpy()
x = adata.X[~test_mask]
detected = np.asarray((x > 0).mean(axis=0)).ravel() >= 0.005
genes = [g for g, keep in zip(adata.var_names, detected) if keep]
if SMOKE:
    genes = genes[:30]
design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control", genes=genes)
train, test = ev.split_combinations(design, test_labels=NORMAN19_COMBINABLE_DOUBLES)
rows_all, rows_train = design.pseudobulk(), train.pseudobulk()
print(design)

# %% [markdown]
# ## Which data can ask the question?
# On the training split no double has both singles measured: `unit="combinable"` is refused, and
# `unit="combination"` would leave out doubles with a target seen nowhere else (the table says how
# many: `n_units_unseen`), a different question. On all rows the 5 test doubles are combinable.

# %%
try:
    ev.unit_labels(rows_train, "combinable")
except DesignError as err:
    print("training split, unit='combinable':", err)
units = ev.unit_labels(rows_all, "combinable")
print("all rows, unit='combinable':", sorted({u for u in units if u is not None}))

# %% [markdown]
# ## The comparison: every model on all rows, the combinable doubles left out at once, 3 refits pooled

# %%
fits = {}
for name in MODELS:
    try:
        fits[name] = sm.fit_svi(REGISTRY[name], rows_all, rng_key=0, num_steps=STEPS, num_samples=DRAWS,
                                progress_bar=False)
    except SemimechError as err:  # a model that does not apply to this design
        print(f"skipped {name}: {err}")
table = ev.compare(fits, unit="combinable", k=1, refits=2 if SMOKE else 3, num_steps=20 if SMOKE else None,
                   checks=not SMOKE)
cols = ["model", "rank", "tied_with", "cv_crps", "cv_l2", "elpd_cv", "se", "dse", "n_units_unseen",
        "cv_coverage_90", "steady_state"]
print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
print()
print(reading(table))
# each refit's own held-out L2: refits that differ a lot landed in different optima (the table notes it)
for name, cv in table.attrs["cross_validations"].items():
    if cv is not None and cv.refit_l2:
        print(f"{name}: held-out L2 of each refit", ", ".join(f"{x:.3f}" for x in cv.refit_l2[0]))

# %% [markdown]
# ## The held-out evidence beside it
# The same models fitted on the training split only, predicting the 5 doubles they never saw
# (L2 over genes per double, averaged; lower is better), with the simple rules of the benchmark.

# %%
held = {}
for name in fits:
    fit = sm.fit_svi(REGISTRY[name], rows_train, rng_key=0, num_steps=STEPS, num_samples=DRAWS, progress_bar=False)
    pred = sm.predict(fit, test, rng_key=1, num_cells=ev.cell_counts(test))
    row = ev.score(pred, test, reference=train).iloc[-1]
    held[name] = {"model": name, "l2": float(row["l2"]), "pearson_delta": float(row["pearson_delta"]),
                  "coverage_90": float(row["coverage_90"])}
base = ev.score_baselines(train, test, reference=train).query("perturbation == 'mean'")
rules = base[["model", "l2", "pearson_delta"]].assign(model=lambda d: "rule: " + d.model)
held_table = pd.concat([pd.DataFrame(held.values()), rules], ignore_index=True)
print(held_table.sort_values("l2").to_string(index=False, float_format=lambda v: f"{v:.3f}"))

# %% [markdown]
# ## Does the comparison agree with the held-out ranking?
# The test: Spearman(score, -held-out L2) >= 0.8 across models, and every model ranked
# first within 10% of the best held-out L2 — or, where it cannot separate them, it says so.

# %%
ranked = table[table["rank"].notna()].set_index("model")
names = [n for n in ranked.index if n in held]
if len(names) >= 3:
    l2 = np.array([held[n]["l2"] for n in names])
    for col, sign in (("cv_crps", -1), ("cv_l2", -1), ("elpd_cv", 1)):
        rho = stats.spearmanr(sign * ranked.loc[names, col].astype(float), -l2).statistic
        print(f"Spearman({'-' if sign < 0 else ''}{col}, -held-out L2) over {len(names)} models: {rho:.2f}")
first = [n for n in names if ranked.loc[n, "rank"] == 1]
if names:
    best = min(held[n]["l2"] for n in names)
    print(f"ranked first (tied): {first}; their held-out L2 {[round(held[n]['l2'], 3) for n in first]}, "
          f"best {best:.3f}; all within 10%: {all(held[n]['l2'] <= 1.1 * best for n in first)}")

# %% [markdown]
# ## Reading (the full run, seed 0, 2026-12-06 session 19, after SVI's default geometry for the effect population became the centred one; `benchmarks/RESULTS_compare.md`)
# - Held out (one fit each, seed 0), four models are within 3% of each other: linear_steady_state 0.348, the
#   additive model and production_decay 0.350, latent_programs 0.357 (the additive rule 0.444); then
#   signalling_network 0.479. Over 6 seeds with the best of 3 runs per fit (RESULTS_compare.md session 19): additive
#   0.351, production_decay 0.355, latent_programs 0.356, linear_steady_state 0.369, signalling_network 0.496. By the
#   comparison's own 2-SE rule over the 5 doubles, that held-out evidence separates none of the five: 5 doubles are
#   too few. (Before session 19, SVI's non-centred geometry left production_decay and linear_steady_state at
#   0.39-0.42.)
# - The comparison here (all 5 doubles out at once, 3 refits pooled) ties all five at rank 1. "Tied" is the
#   answer: the evidence cannot separate them, so it ranks none above another. Read the order inside the tie as
#   noise, not a ranking: the CRPS order agrees with this run's one-fit held-out L2 only loosely (Spearman 0.40;
#   the four best are within 0.009 of each other held out), and the additive model's CRPS lead over
#   production_decay (1.405 vs 1.425) is inside two standard errors of their paired difference.
# - signalling_network's line carries a note: tied first by CRPS, but its cross-validated L2 is 1.35x the
#   best's (0.473 against 0.351): its intervals, not its point predictions, earn the tie; held out it is
#   the worst of the five by point (0.479), which the held out's own 2-SE rule cannot separate either.
#   Its point gap is within two standard errors over 5 doubles, so it keeps rank 1 (the rank-1 point
#   rule demotes a model only where the evidence separates its points: on Sachs it demotes
#   production_decay, `RESULTS_compare.md` session 18).
# - Each model's 3 refits agree (their held-out L2 within 1.16x), so no refit note fires. Until
#   2026-12-06 the steady-state models' misfit was a fresh draw per condition, and fits that let it
#   explain every single on its own predicted each unseen double as the control (production_decay
#   in 3 of 6 fits, latent_programs in all: held-out L2 0.8-1.4); their misfit is now a per-target
#   population (`residual="population"`), which a double inherits from its singles.
# - On the training split the comparison cannot ask this question; left-out training doubles
#   hold targets seen nowhere else and there the log score is one gene of one double (z > 100
#   under every model), so it ties everything.
# - `cv_coverage_90` says whether held-out intervals are honest (0.9 expected); `steady_state`
#   whether a steady-state model keeps its own assumption (a stable, unique steady state).
# - Compare any model with the simple rules before crediting it: here every model beats the
#   additive rule (0.444) held out, and none is separable from the additive model.
