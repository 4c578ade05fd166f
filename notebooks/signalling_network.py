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
# # A signalling network on a prior-knowledge graph: HepG2 inhibitor combinations
#
# The `signalling_network` model puts the readouts of a stimulus x inhibitor experiment on the
# nodes of a signed prior-knowledge network (PKN): each node's activity is a normalised-Hill
# combination of its regulators (continuous logic, OR and AND gates), stimuli switch input nodes
# on, and an inhibitor scales the *activity* of its node, so readouts upstream of the block are
# untouched. Edges shrink hard (a spike-and-slab-like prior), so the posterior says which PKN edges
# the data need.
#
# 1. HepG2 cells (one context of `HepG2CancerRes2011`, shipped with the package): train on no and
#    single inhibitors under 10 stimulus settings, hold out the double and triple inhibitions;
# 2. compile the PKN and fit;
# 3. edge posteriors (table, plot) and the pruned network as SIF;
# 4. predict an unseen triple inhibition with intervals;
# 5. compare with the additive model by held-out error and by `compare()`, and with the
#    "strongest single inhibitor" rule.
#
# `SEMIMECH_SMOKE=1` runs a tiny version (CI). The benchmark over all five cell lines is
# `benchmarks/heldout.py hepg2_combinations --models signalling_network/...`.

# %%
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np

import semimech as sm
from semimech import evaluate
from semimech.datasets import HEPG2_NETWORK, hepg2_cancerres2011, hepg2_cancerres2011_pkn
from semimech.models import additive
from semimech.models import signalling_network as sn

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
STEPS = 100 if SMOKE else 3000

# %% [markdown]
# ## 1. Data: HepG2 at 30 min, log10(x + 1)
# One measurement per condition: 10 stimulus settings x 8 inhibitor sets. A condition's label
# lists its stimuli and inhibitors (`"IL1a+INS+PI3Ki"`); `"none"` is the unstimulated,
# uninhibited control.

# %%
tidy = hepg2_cancerres2011()
hep = tidy[tidy.cell_line == "HepG2"]
wide = hep.pivot_table(index=["stimuli", "inhibitors"], columns="readout", values="value").reset_index()
wide.columns.name = None
readouts = [c for c in wide.columns if c not in ("stimuli", "inhibitors")]
wide[readouts] = np.log10(wide[readouts] + 1.0)
wide["label"] = ["+".join(p for p in s.split("+") + i.split("+") if p != "none") or "none"
                 for s, i in zip(wide.stimuli, wide.inhibitors)]
wide.index = wide.label
design = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none")
n_inhibitors = np.where(wide.inhibitors == "none", 0, wide.inhibitors.str.count(r"\+") + 1)
train = design.subset(n_inhibitors <= 1)
held = list(wide.label[n_inhibitors >= 2])
print(design)
print(f"train {train.n_obs} conditions; held out {len(held)} double/triple inhibitions")

# %% [markdown]
# ## 2. The network
# `compile_network` checks the vocabulary against the PKN (a stimulus, inhibitor or readout naming
# a missing node is an error naming it), drops nodes the data cannot inform (with a warning naming
# them), compresses latent single-input/single-output nodes, adds AND pairs and, because the
# closed-form steady state needs a DAG, drops the feedback edges (named in a warning; `cycles="solve"`
# keeps them and solves the fixed point instead). Candidate edges from every stimulus to every
# readout enter at a much smaller prior (routes the PKN lacks). The fit takes the compiled network
# and lines its stimuli, inhibitors and readouts up with the design's by name.

# %%
pkn = hepg2_cancerres2011_pkn()
nodes = set(pkn.source) | set(pkn.target)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    net = sn.compile_network(pkn, stimuli=HEPG2_NETWORK["stimuli"], inhibitors=HEPG2_NETWORK["inhibitors"],
                             readouts=sn.default_readouts(readouts, nodes, HEPG2_NETWORK["readout_aliases"]),
                             readout_signs=HEPG2_NETWORK["readout_signs"], cycles="drop", extra_edges="stimuli")
for w in caught:
    print("warning:", str(w.message)[:300], "...")
print(net)  # nodes, model edges by kind (single PKN edges, AND pairs, non-PKN candidates), what was dropped

# %% [markdown]
# ## 3. Fit and edge posteriors
# The measurement noise cannot be estimated from one measurement per condition alone; its prior is
# centred on 0.12 log10 units, the sd of the duplicated t = 0 samples of the same experiment.

# %%
fit = sm.fit_svi(sn.SPEC, train, rng_key=0, num_steps=STEPS, num_samples=200, progress_bar=False,
                 network=net, noise_sd=(0.12, 0.3))
table = sn.edge_posteriors(fit)
print(table.sort_values("p_active", ascending=False).head(15)[["source", "target", "sign", "gate", "partner",
                                                                  "prior", "via", "p_active", "weight_mean"]])
ax = sn.plot_edge_posteriors(table, max_edges=40)
plt.tight_layout()
plt.show()
print(sn.pruned_sif(fit, min_probability=0.5))

# %% [markdown]
# ## 4. An unseen triple inhibition, with intervals for an observation

# %%
triple = "IL1a+INS+IKKi+MEK12i+PI3Ki"
pred = sm.predict(fit, ["IL1a+INS", triple], rng_key=1, num_cells=1)
lo, hi = pred.interval(0.9, kind="observed_mean")
mid = pred.summary(kind="observed_mean")["mean"]
for j, r in enumerate(readouts[:8]):
    print(f"{r:12s} IL1a+INS {mid[0, j]:.2f}   + all three inhibitors {mid[1, j]:.2f} [{lo[1, j]:.2f}, {hi[1, j]:.2f}]"
          f"   observed {wide.loc[triple, r]:.2f}")

# %% [markdown]
# ## 5. Held-out error: network, additive model, strongest single inhibitor

# %%
obs = wide.loc[held, readouts].to_numpy()
net_pred = sm.predict(fit, held, rng_key=2, num_cells=1)
add_fit = sm.fit_svi(additive.SPEC, train, rng_key=0, num_steps=STEPS, num_samples=200, progress_bar=False)
add_pred = sm.predict(add_fit, held, rng_key=2, num_cells=1)
singles = wide.set_index(["stimuli", "inhibitors"])[readouts]
min_rule = np.array([np.min([singles.loc[(s, i)].to_numpy() for i in inh.split("+")], axis=0)
                     for s, inh in zip(wide.loc[held, "stimuli"], wide.loc[held, "inhibitors"])])


def rmse(p):
    return float(np.sqrt(np.mean((p - obs) ** 2)))


def cov90(p):
    lo, hi = p.interval(0.9, kind="observed_mean")
    return float(np.mean((obs >= lo) & (obs <= hi)))


print(f"signalling_network RMSE {rmse(net_pred.summary()['mean']):.3f}, 90% coverage {cov90(net_pred):.2f}")
print(f"additive model     RMSE {rmse(add_pred.summary()['mean']):.3f}, 90% coverage {cov90(add_pred):.2f}")
print(f"strongest single   RMSE {rmse(min_rule):.3f}")
print(f"no change          RMSE {rmse(np.tile(wide.loc['none', readouts].to_numpy(float), (len(held), 1))):.3f}")

# %% [markdown]
# `compare` cross-validates both models over left-out training conditions (K folds, each model
# refitted without them: `elpd_cv` with its standard error, ties within two standard errors of the
# paired difference), and scores the held-out combinations beside it (`test_*` columns). The two
# ask different questions: the first about the training conditions, the second about unseen
# combinations; read the ranking only where the standard errors separate the models.

# %%
test = design.select_perturbations(held)
table = evaluate.compare({"signalling_network": fit, "additive": add_fit}, test=test, reference=train,
                         k=3 if SMOKE else 5, num_steps=STEPS)
print(table[["model", "rank", "tied_with", "elpd_cv", "se", "elpd_diff", "dse", "left_out", "cv_coverage_90",
             "test_coverage_90", "note"]].to_string())
