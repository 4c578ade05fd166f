"""Unseen targets and contexts (issue 13): tasks and model configurations of ``benchmarks/heldout.py``.

Tasks
-----
- ``papalexi_loto_all``: as ``papalexi_loto`` (Papalexi 2021 UMI counts, NB, 40 genes), but every
  one of the 25 knockout targets is held out in turn. ``papalexi_loto`` holds out 8 hand-picked
  targets, 5 of them the strongest interferon-pathway knockouts (JAK2, IFNGR1/2, STAT1, IRF1):
  its train-mean Pearson-delta is 0.656, over all 25 targets it is about 0.3. Both are reported.
- ``norman_singles``: Norman 2019 (shipped subset, log1p-normalised, Gaussian), leave one single
  out: each of the 19 singles is held out together with every double that contains it (its
  target is then never perturbed in training); held out: the single and those doubles.
- ``mcfaline_transfer``: McFaline-Figueroa 2023 (9 kinase knockdowns x 3 glioblastoma lines):
  transfer to an unseen cell line (the held-out line's knockdowns; its controls stay in
  training). A negative control: the data hold no transferable signal (shared data README), so
  a model must not beat "no change" and its intervals must cover that.

Model configurations
--------------------
- ``additive/default`` (registered in ``heldout_models.py``) is the additive model as a user gets
  it: its default effect population (shared mean response + 2 programs + per-target
  deviations); an unseen target draws from it.
- ``additive/pca``: the same plus side information, the PCA gene embedding of the training
  pseudobulk (Ahlmann-Eltze et al. 2025: K = 10), for targets that are readout genes (the others
  are answered from the population alone).
- ``additive/strength``: the effect population with a per-target strength in (0, 1)
  (``effect_tails="strength"``, a heavy-tailed scale mixture): wider tails, worse points.
- ``additive/urn``: the same fit as ``additive/default``, unseen targets answered by the
  Polya-urn (Dirichlet-process) predictive: a seen target's departure (jointly across genes) with
  probability n / (n + 1), else a draw from the Gaussian population.
- ``additive/centred``: ``additive/default`` with the targets' deviations centred
  (``effect_deviation="centred"``), the geometry in which mean-field SVI keeps the population's spread.
- ``additive/nuts-short``: ``additive/default`` fitted by NUTS (1 chain, 300 + 200, depth 7);
  ``additive/nuts-short-urn``: the same fit, unseen targets answered by the urn predictive.
- ``additive/contexts`` (``mcfaline_transfer``): the training cells rebuilt with the cell line as a
  context (not a batch): the mean response transfers as far as the training lines agree
  (``effect_transfer="learned"``) and each line scales each gene's noise (``context_noise``);
  ``additive/contexts-full``: the same design with the model before (full transfer, one noise).
- ``additive/horseshoe``: the additive model before issue 13 (horseshoe effects); it cannot
  predict unseen targets (kept to show that).
"""

from __future__ import annotations

import time

import numpy as np

import semimech as sm
from heldout_models import Predicted, predict_labels, register_model
from heldout_tasks import Fold, papalexi_design, label_baseline, make_fold, register_task
from semimech import evaluate as ev

POPULATION_TASKS = ("papalexi_loto", "papalexi_loto_all", "norman_singles", "mcfaline_transfer", "norman_doubles",
                    "sachs_loco")


# ------------------------------------------------------------------------------ tasks
def _linear_pca(fold: Fold) -> np.ndarray:
    """Ahlmann-Eltze et al. (2025) linear baseline (K = 10, ridge 0.1) per context."""
    return label_baseline("linear")(fold)


@register_task("papalexi_loto_all", metric="pearson_delta", higher_is_better=True,
               aggregation="mean_over_conditions",
               gene_set="40 genes: the 9 targets that are readouts + the 31 most expressed others",
               scale="UMI counts per unit size factor (NB likelihood)",
               baselines={"no_change": label_baseline("no_change"), "train_mean": label_baseline("train_mean"),
                          "linear": _linear_pca})
def papalexi_loto_all(*, quick: bool) -> list[Fold]:
    """Papalexi 2021 (UMI counts): leave one knockout target out, all 25 targets in turn."""
    d = papalexi_design()
    folds = []
    for t in (("JAK2", "SMAD4") if quick else d.targets):
        train, test = ev.leave_one_target_out(d, t)
        folds.append(make_fold("papalexi_loto_all", t, train.pseudobulk(), test.pseudobulk()))
    return folds


def _norman_design():
    from semimech.datasets import norman19_devel

    adata = norman19_devel()
    ctrl = (adata.obs["perturbation"] == "control").to_numpy()
    detected = np.asarray((adata.X[ctrl] > 0).mean(axis=0)).ravel() >= 0.005
    genes = [g for g, keep in zip(adata.var_names, detected) if keep]
    return sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control", genes=genes)


@register_task("norman_singles", metric="l2", higher_is_better=False, aggregation="mean_over_conditions",
               gene_set="genes detected in >= 0.5% of control cells",
               scale="log1p-normalised expression",
               baselines={k: label_baseline(k) for k in ("no_change", "train_mean", "linear", "additive")})
def norman_singles(*, quick: bool) -> list[Fold]:
    """Norman 2019 (shipped): hold out each single with every double containing it (19 folds)."""
    d = _norman_design()
    singles = [p for p in d.perturbations if p != d.control and len(d.targets_of(p)) == 1]
    folds = []
    for s in (singles[:2] if quick else singles):
        train, test = ev.leave_one_target_out(d, s)
        folds.append(make_fold("norman_singles", s, train.pseudobulk(), test))
    return folds


@register_task("mcfaline_transfer", metric="l2", higher_is_better=False, aggregation="mean_over_conditions",
               gene_set="the 100 most variable genes of the pseudobulk means (as benchmarks/accuracy.py)",
               scale="log1p-normalised expression",
               baselines={k: label_baseline(k) for k in ("no_change", "train_mean", "additive", "linear")})
def mcfaline_transfer(*, quick: bool) -> list[Fold]:
    """McFaline-Figueroa 2023: transfer 9 knockdowns to a held-out cell line (3 folds; a negative control)."""
    import anndata as ad

    from semimech.datasets import shared_data_dir

    full = ad.read_h5ad(shared_data_dir() / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad")
    mcf = full[full.obs["dataset"] == "mcfaline23"].copy()
    d = sm.Design.from_anndata(mcf, perturbation_key="perturbation", control="control", batch_key="cell_type")
    _, means = ev.perturbation_means(d.pseudobulk())
    order = np.argsort(-means.var(0))[:100]
    genes = [g for i, g in enumerate(d.genes) if i in set(order.tolist())]
    d = sm.Design.from_anndata(mcf, perturbation_key="perturbation", control="control", batch_key="cell_type",
                               genes=genes)
    folds = []
    for line in d.batches[:1] if quick else d.batches:
        train, test = ev.transfer(d, contexts="batches", test_contexts=[line])
        folds.append(make_fold("mcfaline_transfer", f"to {line}", train.pseudobulk(), test, contexts=[line]))
    return folds


# ------------------------------------------------------------------------------ models
def _additive(fold: Fold, *, seed: int, budget, **options) -> Predicted:
    from semimech.models import additive

    t0 = time.perf_counter()
    fit = sm.fit_svi(additive.SPEC, fold.train, rng_key=seed, num_steps=budget.num_steps,
                     num_samples=budget.num_samples, progress_bar=False, **options)
    seconds = time.perf_counter() - t0
    import warnings

    with warnings.catch_warnings():  # population-only answers are this benchmark's point
        warnings.simplefilter("ignore", sm.errors.PopulationOnlyWarning)
        return predict_labels(fit, fold, seed=seed, seconds=seconds)


@register_model("additive/pca", tasks=POPULATION_TASKS)
def additive_pca(fold, *, seed, budget):
    """additive model with side information: PCA gene embedding of the training pseudobulk (K = 10)."""
    from semimech.models import target_embedding

    return _additive(fold, seed=seed, budget=budget, **target_embedding(fold.train, "pca", missing="population"))


@register_model("additive/horseshoe", tasks=POPULATION_TASKS)
def additive_horseshoe(fold, *, seed, budget):
    """additive model with horseshoe effects (before issue 13): cannot predict unseen targets."""
    return _additive(fold, seed=seed, budget=budget, effects="horseshoe")



@register_model("additive/no-knockdown", tasks=POPULATION_TASKS)
def additive_no_knockdown(fold, *, seed, budget):
    """additive model without the knockdown population (a target's own gene is one more population entry)."""
    return _additive(fold, seed=seed, budget=budget, effect_knockdown=False)


@register_model("additive/strength", tasks=POPULATION_TASKS)
def additive_strength(fold, *, seed, budget):
    """additive model with a heavy-tailed effect population: each target's departure times its own
    strength in (0, 1) (``effect_tails="strength"``)."""
    return _additive(fold, seed=seed, budget=budget, effect_tails="strength")


@register_model("additive/urn", tasks=POPULATION_TASKS)
def additive_urn(fold, *, seed, budget):
    """additive model (default fit) answering unseen targets by the Polya-urn predictive
    (``effect_predictive="urn"``: a seen target's departure with probability n / (n + 1), else a
    Gaussian draw)."""
    return _additive(fold, seed=seed, budget=budget, effect_predictive="urn")


@register_model("additive/centred", tasks=POPULATION_TASKS)
def additive_centred(fold, *, seed, budget):
    """additive model (default fit) with the targets' deviations centred (``effect_deviation="centred"``: a
    factorised guide keeps the population's spread; 0.85 against 0.75 on simulated screens)."""
    return _additive(fold, seed=seed, budget=budget, effect_deviation="centred")


@register_model("additive/nuts-short", tasks=POPULATION_TASKS)
def additive_nuts_short(fold, *, seed, budget):
    """additive model (default effect population) fitted by NUTS: 1 chain, 300 warmup + 200 draws,
    max tree depth 7 (the RESULTS_heldout.md check that mean-field SVI makes the intervals narrow)."""
    return _nuts_short(fold, seed=seed, budget=budget)


@register_model("additive/nuts-short-urn", tasks=POPULATION_TASKS)
def additive_nuts_short_urn(fold, *, seed, budget):
    """as ``additive/nuts-short``, unseen targets answered by the Polya-urn predictive
    (``effect_predictive="urn"``): NUTS's wider posterior of the seen targets' effects as the urn's atoms."""
    return _nuts_short(fold, seed=seed, budget=budget, effect_predictive="urn")


def _nuts_short(fold, *, seed, budget, **options):
    from semimech.models import additive

    t0 = time.perf_counter()
    warm, draws = (50, 50) if budget.quick else (300, 200)
    fit = sm.fit_nuts(additive.SPEC, fold.train, rng_key=seed, num_warmup=warm, num_samples=draws, num_chains=1,
                      max_tree_depth=7, progress_bar=False, **options)
    seconds = time.perf_counter() - t0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm.errors.PopulationOnlyWarning)
        return predict_labels(fit, fold, seed=seed, seconds=seconds, info={"method": "nuts", **options})


def _mcfaline_cells():
    import anndata as ad

    from semimech.datasets import shared_data_dir

    full = ad.read_h5ad(shared_data_dir() / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad")
    return full[full.obs["dataset"] == "mcfaline23"].copy()


@register_model("additive/contexts", tasks=("mcfaline_transfer",))
def additive_contexts(fold, *, seed, budget):
    """additive model on the training cells as a design with the cell line as *context* (not batch):
    each knockdown's effect is shared across lines plus a per-line deviation from a learned context
    population, so a line whose knockdowns were never seen draws fresh deviations (wider intervals);
    the mean response transfers as far as the training lines agree (``effect_transfer="learned"``)
    and each line scales each gene's noise (``context_noise``): the defaults."""
    return _contexts(fold, seed=seed, budget=budget)


@register_model("additive/contexts-full", tasks=("mcfaline_transfer",))
def additive_contexts_full(fold, *, seed, budget):
    """as ``additive/contexts`` with the model before: one mean response shared by every line
    (``effect_transfer="full"``) and one noise per gene (``context_noise=False``)."""
    return _contexts(fold, seed=seed, budget=budget, effect_transfer="full", context_noise=False)


def _contexts(fold, *, seed, budget, **options):
    adata = _mcfaline_cells()
    held_lines = set(fold.contexts)
    keep = ~adata.obs["cell_type"].isin(held_lines).to_numpy() | (adata.obs["perturbation"] == "control").to_numpy()
    train = sm.Design.from_anndata(adata[keep].copy(), perturbation_key="perturbation", control="control",
                                   context_key="cell_type", genes=list(fold.readouts)).pseudobulk()
    t0 = time.perf_counter()
    from semimech.models import additive

    fit = sm.fit_svi(additive.SPEC, train, rng_key=seed,
                     num_steps=budget.num_steps, num_samples=budget.num_samples, progress_bar=False, **options)
    seconds = time.perf_counter() - t0
    table = [{"perturbation": lab, "context": ctx} for lab, ctx in zip(fold.labels, fold.contexts)]
    p = sm.predict(fit, table, rng_key=seed + 1000, num_cells=fold.n_obs, new_contexts="population")
    if len(p.perturbations) != len(table):
        raise ValueError(f"{len(p.perturbations)} predicted conditions for {len(table)} held-out ones.")
    cols = [p.genes.index(g) for g in fold.readouts]
    return Predicted(observed=p.draws["observed_mean"][:, :, cols], mean=p.draws["mean"][:, :, cols],
                     seconds=seconds, info={"method": "svi", "design": "contexts", **options})
