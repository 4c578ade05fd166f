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
# # Guides, escapers and replicates in the Papalexi 2021 screen
#
# THP-1 cells, IFN-gamma stimulated, CRISPR knockouts of 26 genes (ECCITE-seq; Papalexi et
# al., Nat Genet 2021; subset shipped with the sceptre R package, GPL-3, read from the shared
# data folder and never copied into semimech). We do not trust the argmax guide label: each
# cell's guide UMIs come from a present-vs-ambient mixture per guide, a present guide edits the
# cell with its efficacy, and a cell whose guide failed (an *escaper*) is modelled as a control.
#
# Needs the Papalexi 2021 subset, which semimech does not ship (GPL-3 data): it is
# `data/lowmoi_example_data.rda` of the sceptre R package at commit 823bcda, converted to the
# `papalexi2021_lowmoi_subset.h5ad` layout that `semimech.datasets.read_papalexi2021` documents;
# pass that file's path to `read_papalexi2021`, or set `SEMIMECH_SHARED_DATA` to a folder holding
# `papalexi2021_sceptre_subset/`. Without it the first data cell stops with an error saying so,
# and the notebook tests skip this notebook.
# requires: shared third-party data
#
# Set `SEMIMECH_SMOKE=1` for a quick run (3,000 cells, 30 SVI steps): the numbers are then
# meaningless, only the code path is exercised.

# %%
import os

import numpy as np
import pandas as pd

import semimech as sm
from semimech.data.guides import GuideDesign
from semimech.datasets import read_papalexi2021
from semimech.models import guide_assignment as ga

SMOKE = os.environ.get("SEMIMECH_SMOKE") == "1"
pd.set_option("display.width", 160)
pd.set_option("display.max_rows", 80)
KNOCKOUTS = ["IFNGR1", "IFNGR2", "JAK2", "STAT1"]
IFN_GENES = ["STAT1", "UBE2L6", "PSMB9", "STAT2", "STAT3", "JAK2", "CMTM6", "IFNGR2", "TNFRSF14", "NFKBIA", "APOBEC3G"]
OTHER_GENES = ["CYBA", "BTG1", "TMA7", "LST1", "FN1", "PSMA7", "MT-ATP8", "CDC37", "KPNB1"]

# %% [markdown]
# ## Data and guide counts
# Size factors come from the genes outside the interferon set: knockouts of the pathway move
# STAT1, PSMB9 and UBE2L6, which would otherwise leak into every cell's library size.

# %%
adata = read_papalexi2021()
if SMOKE:
    adata = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, 3000, replace=False))]
adata = adata.copy()  # we add one obs column; the reader's object stays untouched
other = [i for i, g in enumerate(adata.var_names) if g not in IFN_GENES]
totals = np.asarray(adata.X[:, other].sum(1)).ravel()
adata.obs["size_factor_non_ifn"] = totals / totals.mean()
design = sm.Design.from_anndata(adata, perturbation_key="target", control="non-targeting", batch_key="bio_rep",
                                size_factor_key="size_factor_non_ifn")
guides = GuideDesign.from_anndata(adata, guide_table="grna_targets", batch_key="bio_rep")
print(design)
print(guides)

# %%
top, share = guides.top_guide()
detected = np.diff(guides.counts.indptr)
print(f"guides detected per cell: median {np.median(detected):.0f}, 90th percentile {np.percentile(detected, 90):.0f}")
print(f"top guide's share of guide UMIs: median {np.median(share):.2f}; cells with share < 0.6: {(share < 0.6).mean():.1%}")
# Most detected guides are ambient background: the mixture, not a UMI threshold, decides presence.

# %% [markdown]
# ## Fit
# SVI over minibatches of cells (the count matrices are never densified beyond a minibatch).
# `placebo=True` gives the non-targeting guides a target of their own: a negative control whose
# "efficacy" measures how much of a perturbed-looking subpopulation the mixture finds without
# any editing.

# %%
fit = ga.fit_guides(design, guides, rng_key=0, genes=IFN_GENES + OTHER_GENES,
                    num_steps=30 if SMOKE else 2000, batch_size=256 if SMOKE else 1024, num_samples=200,
                    placebo=True)
print(fit)
print(f"SVI: {fit.options['cells_per_second']:.0f} cells/s; last losses per cell {fit.losses[-3:].round(2)}")

# %% [markdown]
# ## Per-cell posterior probability of being perturbed

# %%
probs = ga.perturbation_probabilities(fit, guides, num_draws=50 if SMOKE else 100)
probs.head()

# %%
ko = probs[probs["top_guide_target"].isin(KNOCKOUTS + ["non-targeting"])]
ko.groupby("top_guide_target").agg(
    cells=("cell", "size"),
    p_guide_present=("p_top_guide_present", "mean"),
    p_perturbed_from_guides=("p_perturbed_from_guides", "mean"),
    p_perturbed=("p_perturbed", "mean"),
    p_escaper=("p_escaper", "mean"),
).round(3)
# Reading: for a knockout target, p_perturbed_from_guides is the prior from guide counts and
# efficacy; p_perturbed adds the cell's expression. Non-targeting cells should stay near zero.

# %% [markdown]
# ## Knockout effects on interferon-response genes (log fold change, 90% intervals)

# %%
effects = ga.effect_table(fit, targets=KNOCKOUTS, genes=IFN_GENES)
effects.pivot(index="gene", columns="target", values="mean").loc[IFN_GENES].round(2)

# %%
effects[effects["gene"] == "STAT1"][["target", "mean", "lo", "hi", "fold_change"]].round(3)

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 3.5))
for j, t in enumerate(KNOCKOUTS):
    e = effects[effects["target"] == t].set_index("gene").loc[IFN_GENES]
    x = np.arange(len(IFN_GENES)) + (j - 1.5) * 0.18
    ax.errorbar(x, e["mean"], yerr=[e["mean"] - e["lo"], e["hi"] - e["mean"]], fmt="o", ms=3, label=t)
ax.axhline(0, color="grey", lw=0.5)
ax.set_xticks(np.arange(len(IFN_GENES)), IFN_GENES, rotation=45)
ax.set_ylabel("log fold change (perturbed vs control)")
ax.legend(ncol=4, fontsize=8)
fig.tight_layout()
sm.plots.show(fig, "ifn_gene_effects.png")

# %% [markdown]
# ## Guide efficacy and escapers
# Efficacy is identified only through expression: for a target without a detectable effect on
# the modelled genes, a cell that escaped and one that was edited look alike. Worse, a mixture
# can always split a group of cells into two, so natural heterogeneity (e.g. cells responding
# less to IFN-gamma) looks like a partly effective knockout. The placebo target is the yardstick:
# only efficacies clearly above the placebo's mean editing. The mean-field variational posterior
# also understates uncertainty.

# %%
guide_eff = ga.efficacy_table(fit)
guide_eff[guide_eff["target"].isin(KNOCKOUTS)].round(3)

# %%
escapers = ga.escaper_table(fit, probs)
placebo = escapers.set_index("target").loc[ga.PLACEBO]
escapers["efficacy_above_placebo"] = (1 - escapers["hi"]) > (1 - placebo["lo"])
escapers.sort_values("mean").round(3)

# %% [markdown]
# ## Replicate (batch) effects

# %%
reps = ga.batch_effect_table(fit, genes=IFN_GENES)
reps.pivot(index="gene", columns="batch", values="mean").loc[IFN_GENES].round(3)

# %% [markdown]
# ## Design advice from the fitted screen
# The replicate-effect sd (tau) and the cell-level noise (sigma, on the log scale, for STAT1)
# feed the design tools: how much a comparison across replicates would cost against one within
# replicates, and how to allocate control cells.

# %%
from semimech.design import cross_batch_error, recommend_control_allocation, within_batch_error  # noqa: E402

tau = float(fit.flat("batch_sd").mean())
g = fit.options["genes"].index("STAT1")
phi = float(fit.flat("concentration")[:, g].mean())
mu = float(np.exp(fit.flat("baseline")[:, g].mean()))
sigma = float(np.sqrt(1 / mu + 1 / phi))  # delta-method sd of log counts under NB
n_b = len(design.batches)
ctrl_per_batch = int(guides.is_control_cell().sum() / n_b)
per_target = int(np.median(probs.groupby("top_guide_target").size()) / n_b)
within = within_batch_error(per_target, ctrl_per_batch, n_batches=n_b, sigma=sigma, tau=tau)
cross = cross_batch_error(per_target, ctrl_per_batch, n_batches=1, n_control_batches=1, sigma=sigma, tau=tau)
print(f"tau = {tau:.3f}, sigma(STAT1) = {sigma:.3f}, {per_target} cells per target per replicate, "
      f"{ctrl_per_batch} controls per replicate")
print(f"sd of an effect: within replicates {np.sqrt(within.variance):.4f}; "
      f"one replicate vs another {np.sqrt(cross.variance):.4f}")
advice = recommend_control_allocation(len(guides.targets), n_batches=n_b, sigma=sigma, tau=tau,
                                      cells_total=design.n_obs)
print(advice.explanation)
