# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Time courses, the steady-state loss, and the assumptions behind steady-state models
#
# 1. simulate knockdown time courses from a known gene-regulatory ODE (non-differentiating:
#    controls sit at a fixed point);
# 2. fit a neural ODE to them, with and without the steady-state loss
#    `lambda * mean ||f(x_ctrl)||^2` (FRAMEWORK.md section 5), and predict held-out pairs;
# 3. check the assumptions steady-state models make, on the fitted dynamics: do controls drift,
#    does each perturbation reach one attractor, are the samples measured after relaxation?
#
# `SEMIMECH_SMOKE=1` runs a tiny version (CI); the full benchmark with 5 seeds on synthetic and
# real CellNOpt data is `benchmarks/steady_state_loss.py` (results in
# `benchmarks/RESULTS_steady_state_loss.md`).

# %%
import os

import numpy as np

from semimech.assumptions import check_assumptions
from semimech.models.neural_ode import baseline_drift, fit_neural_ode, predict_neural_ode
from semimech.simulate_dynamics import simulate_time_course

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
STEPS = 60 if SMOKE else 1000
SEEDS = [0] if SMOKE else [0, 1, 2]

# %% [markdown]
# ## 1. A synthetic time course
# Five genes (three in smoke mode), single and paired 80% knockdowns applied at time 0,
# measured at 0, 0.5, 1, 2 and 4 h with two replicates. Each condition is encoded for the
# learned field by covariates `u` (one indicator per knocked-down gene).

# %%
design, truth = simulate_time_course(rng_key=0, n_genes=3 if SMOKE else 5, n_pairs=2 if SMOKE else 6)
print(design.y.shape, "samples x genes;", len(design.conditions), "conditions:", design.conditions)
held = list(design.conditions[-2:])
test_mask = design.conditions_mask(held)
train, test = design.subset(~test_mask), design.subset(test_mask & (design.time > 0))
print("held out:", held)

# %% [markdown]
# ## 2. Neural ODE with and without the steady-state term
# `steady_state_weight=0` is the vanilla neural ODE; with a weight the control state is pushed
# towards a fixed point of the learned field. (The Bayesian version is
# `semimech.models.neural_ode_bayes.fit_neural_ode_bayes`, where the term is a pseudo-observation
# `0 ~ Normal(f(x_ctrl), tau)`.)

# %%
no_change = float(np.sqrt(np.mean((design.x0[test.condition_index] - test.y) ** 2)))
fits = {}
for w in (0.0, 1.0):
    rmse, drift = [], []
    for seed in SEEDS:
        fit = fit_neural_ode(train, rng_key=seed, steady_state_weight=w, num_steps=STEPS, width=8 if SMOKE else 16)
        mu, ok = predict_neural_ode(fit, test)
        rmse.append(float(np.sqrt(np.mean((mu - test.y) ** 2))))
        drift.append(float(np.mean(baseline_drift(fit.fn, fit.params["field"], design.baseline_x,
                                                  design.baseline_covariates))))
        fits[w] = fit
    print(f"lambda={w:g}: held-out RMSE {np.mean(rmse):.3f} (seeds {np.round(rmse, 3).tolist()}), "
          f"control drift |f(x_ctrl)| {np.mean(drift):.3f}/h, failed steps {fit.n_failed}; no change {no_change:.3f}")

# %% [markdown]
# ## 3. Assumption checks on the fitted dynamics
# Each check returns `passed`, the measured value and a message saying what to do when it fails.

# %%
fit = fits[1.0]
checks = check_assumptions(fit.fn, fit.params["field"], design, rng_key=0, num_starts=4 if SMOKE else 8)
for name, chk in checks.items():
    print(f"[{'ok' if chk.passed else 'FAILED'}] {name}: {chk.message}")

# %% [markdown]
# The relaxation check reports, per condition, the measurement time over the relaxation time
# `1/|Re lambda_max|` at the condition's fixed point: when it is small, the samples are
# transients and a steady-state model would read them as equilibria.

# %%
rel = checks["relaxation"].details
for c, r, tau in zip(design.conditions, rel["ratio"], rel["relaxation_time"]):
    print(f"{c:10s} relaxation time {tau:6.2f} h, latest sample / relaxation time {r:5.2f}")
