"""The real-data held-out tasks of ``benchmarks/accuracy.py`` (one function per dataset).

Each task returns a list of :class:`Fold`: the design a model is fitted on, the held-out test
design, and the contexts (batches) in which held-out perturbations are scored. Data come from
``../shared/data`` (see its README for what each task can and cannot show).
"""

from __future__ import annotations

import dataclasses

import numpy as np

import semimech as sm
from semimech import evaluate as ev
from semimech.datasets import shared_data_dir


@dataclasses.dataclass(frozen=True)
class Fold:
    """One train/test split of a task.

    ``contexts``: batches scored separately (each with its own training control as the
    reference), or ``(None,)`` for a design without contexts. ``baselines``: which
    :data:`semimech.evaluate.BASELINES` to score. ``fit_design``: what models are fitted on
    (the training pseudobulk).
    """

    task: str
    name: str
    train: sm.Design
    test: sm.Design
    fit_design: sm.Design
    contexts: tuple
    baselines: tuple[str, ...]
    metric: str


def _top_variable(design: sm.Design, n: int | None, keep=()) -> list[str] | None:
    """The ``n`` genes whose perturbation means vary most (plus ``keep``), in design order."""
    if n is None or n >= design.n_genes:
        return None
    _, means = ev.perturbation_means(design)
    order = np.argsort(-means.var(0))
    chosen = set(design.genes[i] for i in order[: max(0, n - len(keep))]) | set(keep)
    return [g for g in design.genes if g in chosen]


def norman_doubles(*, max_genes: int | None, quick: bool) -> list[Fold]:
    """Norman 2019: train on control, singles and 9 doubles; predict the 5 combinable doubles."""
    from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel

    adata = norman19_devel()
    full = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    genes = _top_variable(full.pseudobulk(), max_genes, keep=[t for t in full.targets if t in full.genes])
    d = full if genes is None else sm.Design.from_anndata(adata, perturbation_key="perturbation",
                                                           control="control", genes=genes)
    train, test = ev.split_combinations(d, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    return [Fold("norman_doubles", "5 doubles", train, test, train.pseudobulk(), (None,),
                 ("no_change", "train_mean", "additive", "linear"), "l2")]


def mcfaline_transfer(*, max_genes: int | None, quick: bool) -> list[Fold]:
    """McFaline-Figueroa 2023: 9 kinase knockdowns; transfer effects to a held-out cell line."""
    import anndata as ad

    path = shared_data_dir() / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
    full = ad.read_h5ad(path)
    mcf = full[full.obs["dataset"] == "mcfaline23"].copy()
    d = sm.Design.from_anndata(mcf, perturbation_key="perturbation", control="control", batch_key="cell_type")
    genes = _top_variable(d.pseudobulk(), max_genes)
    if genes is not None:
        d = sm.Design.from_anndata(mcf, perturbation_key="perturbation", control="control", batch_key="cell_type",
                                   genes=genes)
    folds = []
    for line in d.batches[:1] if quick else d.batches:
        train, test = ev.transfer(d, contexts="batches", test_contexts=[line])
        folds.append(Fold("mcfaline_transfer", f"to {line}", train, test, train.pseudobulk(), (line,),
                          ("no_change", "train_mean", "additive", "linear"), "l2"))
    return folds


def hepg2_combinations(*, max_genes: int | None, quick: bool) -> list[Fold]:
    """HepG2CancerRes2011 (t = 30 min, log10(x+1)): predict double/triple inhibitor combinations.

    One design for every cell line x stimulus context: the context is the batch and each
    inhibitor's effect is specific to its context (target ``"PI3K@HepG2|IGF1"``), so a model sees
    the same information as the per-context baselines, with priors shared across contexts.
    """
    from semimech.datasets import read_midas

    path = shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv"
    long = read_midas(path).query("time == 30")
    wide = np.log10(long.pivot_table(index=["cell_line", "stimuli", "inhibitors"], columns="readout",
                                     values="value", aggfunc="mean") + 1).reset_index()
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors")]
    wide["context"] = wide.cell_line + "|" + wide.stimuli

    def label(row):
        if row.inhibitors == "none":
            return "none"
        ctx = row.context.replace("+", "&")  # stimuli combine with "+", the target separator
        return "+".join(f"{i}@{ctx}" for i in row.inhibitors.split("+"))

    wide["label"] = wide.apply(label, axis=1)
    wide.index = wide.context + "|" + wide.inhibitors
    d = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none", batch_key="context")
    train, test = ev.split_combinations(d)
    return [Fold("hepg2_combinations", "doubles+triples", train, test, train, tuple(d.batches),
                 ("no_change", "additive", "min_single"), "rmse")]


#: Sachs 2005 conditions relabelled by the protein each reagent acts on (activators of a
#: protein that is also inhibited keep the reagent's name, so labels stay distinct).
SACHS_LABELS = {"cd3_cd28": "cd3_cd28", "cd3_cd28+aktinhib": "akt", "cd3_cd28+g0076": "pkc",
                "cd3_cd28+psitect": "pip2", "cd3_cd28+u0126": "mek", "cd3_cd28+ly": "pip3",
                "cd3_cd28+icam2": "icam2", "pma": "pma", "b2camp": "pka"}


def sachs_loco(*, max_genes: int | None, quick: bool) -> list[Fold]:
    """Sachs 2005 (natural log): leave one condition out; labels name the targeted protein."""
    import anndata as ad

    from semimech.datasets import read_sachs2005

    raw = read_sachs2005()
    obs = raw.obs.assign(target=[SACHS_LABELS[c] for c in raw.obs.condition])
    logged = ad.AnnData(X=np.log(raw.X), obs=obs, var=raw.var.copy())
    d = sm.Design.from_anndata(logged, perturbation_key="target", control="cd3_cd28")
    labels = ["akt", "mek"] if quick else list(d.perturbations[1:])
    folds = []
    for lab in labels:
        train, test = ev.leave_one_condition_out(d, lab)
        folds.append(Fold("sachs_loco", lab, train, test, train.pseudobulk(), (None,),
                          ("no_change", "train_mean"), "rmse"))
    return folds


PAPALEXI_TARGETS_IN_GENES = ("STAT1", "JAK2", "STAT2", "STAT3", "UBE2L6", "IFNGR2", "CMTM6", "NFKBIA", "TNFRSF14")


def papalexi_loto(*, max_genes: int | None, quick: bool) -> list[Fold]:
    """Papalexi 2021 (UMI counts, NB): leave one target out; pseudobulk per target x replicate.

    Genes: the targets that are readouts plus the most expressed genes (``max_genes`` in all,
    40 by default), to keep the fits fast.
    """
    from semimech.datasets import read_papalexi2021

    adata = read_papalexi2021()
    n = 40 if max_genes is None else max_genes
    mean = np.asarray(adata.X.mean(0)).ravel()
    keep = set(PAPALEXI_TARGETS_IN_GENES)
    order = [adata.var_names[i] for i in np.argsort(-mean) if adata.var_names[i] not in keep]
    chosen = keep | set(order[: max(0, n - len(keep))])
    genes = [g for g in adata.var_names if g in chosen]
    d = sm.Design.from_anndata(adata, perturbation_key="target", control="non-targeting", batch_key="bio_rep",
                               genes=genes, counts=True)
    targets = ["JAK2", "IFNGR2"] if quick else ["JAK2", "IFNGR2", "STAT1", "IFNGR1", "IRF1", "STAT2", "CMTM6",
                                                "SMAD4"]
    folds = []
    for t in targets:
        train, test = ev.leave_one_target_out(d, t)
        folds.append(Fold("papalexi_loto", t, train, test.pseudobulk(), train.pseudobulk(), (None,),
                          ("no_change", "train_mean"), "pearson_delta"))
    return folds


TASKS = {"norman_doubles": norman_doubles, "mcfaline_transfer": mcfaline_transfer,
         "hepg2_combinations": hepg2_combinations, "sachs_loco": sachs_loco, "papalexi_loto": papalexi_loto}
