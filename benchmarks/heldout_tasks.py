"""The held-out tasks of ``benchmarks/heldout.py``: one registered builder per task.

A task states, once, everything its number depends on: the metric, whether higher is better,
the **aggregation** (``"pooled"``: over every held-out condition x readout entry; or
``"mean_over_conditions"``: the metric per held-out condition, then the mean), the **gene set**
(readouts scored and fitted) and the data scale. Its builder returns :class:`Fold` s; its
baselines are point predictors ``fold -> (conditions, readouts)``.

Add a task (no edit of ``heldout.py`` needed)::

    @register_task("my_task", metric="rmse", higher_is_better=False, aggregation="pooled",
                   gene_set="the 18 readouts", scale="log10(x + 1)",
                   baselines={"no_change": label_baseline("no_change")})
    def my_task(*, quick: bool) -> list[Fold]:
        ...  # build train / held-out designs, return folds (use make_fold for label designs)

Data come from ``../shared/data`` (see its README); only ``norman_doubles`` runs on the data
shipped with the package. A missing dataset raises ``DatasetNotFoundError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import pandas as pd

import semimech as sm
from semimech import evaluate as ev

AGGREGATIONS = ("pooled", "mean_over_conditions")
METRICS = ("rmse", "l2", "pearson_delta")


@dataclasses.dataclass(frozen=True, eq=False)
class Fold:
    """One train / held-out split of a task.

    Attributes
    ----------
    task, name
        Task and fold names.
    train
        The design a model fits (pseudobulk where that is exact).
    labels
        Each held-out condition's label in ``train``'s encoding (for :func:`semimech.predict`).
    contexts
        Each held-out condition's context: a batch of ``train`` to predict in, or ``None``.
    truth
        Observed mean of each held-out condition, ``(conditions, readouts)``.
    n_obs
        Observations (cells or replicate rows) behind each ``truth`` row: predictive draws
        for an observation are draws of the mean of that many new observations.
    reference
        The observed training control of each condition's context, ``(conditions, readouts)``
        (the reference of delta metrics, and of the ``no_change`` baseline).
    readouts
        Readout (gene) names, the columns of ``truth``.
    frame
        Optional tidy table of the rows (factor columns, readouts, ``split`` = train/test) for
        models that build their own design (e.g. a signalling network with a PKN).
    meta
        Optional task facts (``pkn`` path, ``scale``, ...).
    """

    task: str
    name: str
    train: sm.Design
    labels: tuple[str, ...]
    contexts: tuple
    truth: np.ndarray
    n_obs: np.ndarray
    reference: np.ndarray
    readouts: tuple[str, ...]
    frame: pd.DataFrame | None = None
    meta: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = len(self.labels)
        if len(self.contexts) != n or self.truth.shape != (n, len(self.readouts)) or self.reference.shape != self.truth.shape:
            raise ValueError(f"fold {self.task}/{self.name}: labels, contexts, truth and reference disagree in shape.")
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@dataclasses.dataclass(frozen=True)
class Task:
    """A registered task: what is measured and how it is aggregated (see the module docstring)."""

    name: str
    build: Callable[..., list[Fold]]
    metric: str
    higher_is_better: bool
    aggregation: str
    gene_set: str
    scale: str
    baselines: Mapping[str, Callable[[Fold], np.ndarray]]
    description: str = ""


TASKS: dict[str, Task] = {}


def register_task(name: str, *, metric: str, higher_is_better: bool, aggregation: str, gene_set: str, scale: str,
                  baselines: Mapping[str, Callable[[Fold], np.ndarray]]):
    """Decorator registering ``build(*, quick) -> list[Fold]`` as task ``name``."""
    if aggregation not in AGGREGATIONS or metric not in METRICS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS} and metric one of {METRICS}.")

    def wrap(build):
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered.")
        TASKS[name] = Task(name, build, metric, higher_is_better, aggregation, gene_set, scale, dict(baselines),
                           (build.__doc__ or "").strip().splitlines()[0])
        return build

    return wrap


def make_fold(task: str, name: str, train: sm.Design, test: sm.Design, *, contexts: Sequence | None = None,
              frame: pd.DataFrame | None = None, meta: Mapping | None = None) -> Fold:
    """A fold of a label design: every held-out (non-control) condition of ``test`` in each context.

    ``contexts``: the batches to score separately (``None``: the design has no contexts).
    """
    labels, ctxs, truth, n_obs, ref = [], [], [], [], []
    for ctx in contexts or [None]:
        held = ev._align.held_out_labels(test, None, batch=ctx) if _has_rows(test, ctx) else ()
        if not held:
            continue
        _, means = ev.perturbation_means(test, held, batch=ctx)
        rows = ev._align.batch_rows(test, ctx)
        code = {p: i for i, p in enumerate(test.perturbations)}
        counts = [test.n_cells[(test.perturbation_index == code[lab]) & rows].sum() for lab in held]
        control = ev.control_mean(train, batch=ctx)
        labels += held
        ctxs += [ctx] * len(held)
        truth.append(means)
        n_obs += counts
        ref.append(np.tile(control, (len(held), 1)))
    return Fold(task, name, train, tuple(labels), tuple(ctxs), np.concatenate(truth), np.asarray(n_obs, float),
                np.concatenate(ref), tuple(train.genes), frame, meta or {})


def _has_rows(test: sm.Design, ctx) -> bool:
    rows = ev._align.batch_rows(test, ctx)
    return bool(np.any(rows & (test.perturbation_index != 0)))


def label_baseline(name: str) -> Callable[[Fold], np.ndarray]:
    """A :data:`semimech.evaluate.BASELINES` rule applied per context of a label design."""
    fn = ev.BASELINES[name]

    def baseline(fold: Fold) -> np.ndarray:
        out = np.empty_like(fold.truth)
        for ctx in dict.fromkeys(fold.contexts):
            idx = [i for i, c in enumerate(fold.contexts) if c == ctx]
            out[idx] = fn(fold.train, [fold.labels[i] for i in idx], batch=ctx).values
        return out

    baseline.__name__ = name
    return baseline


# ------------------------------------------------------------------------------------ tasks
def norman_genes(adata, train_mask) -> list[str]:
    """The demo's gene set: genes detected in >= 0.5% of the training cells (105 of 500)."""
    x = adata.X[np.asarray(train_mask)]
    detected = np.asarray((x > 0).mean(axis=0)).ravel() >= 0.005
    return [g for g, keep in zip(adata.var_names, detected) if keep]


@register_task("norman_doubles", metric="l2", higher_is_better=False, aggregation="mean_over_conditions",
               gene_set="the 105 genes detected in >= 0.5% of training cells (as `semimech demo`)",
               scale="log1p-normalised expression",
               baselines={k: label_baseline(k) for k in ("no_change", "train_mean", "additive")})
def norman_doubles(*, quick: bool) -> list[Fold]:
    """Norman 2019 (shipped): train on control, 19 singles, 9 doubles; predict the 5 combinable doubles."""
    from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel

    adata = norman19_devel()
    test_mask = adata.obs["perturbation"].isin(NORMAN19_COMBINABLE_DOUBLES).to_numpy()
    genes = norman_genes(adata, ~test_mask)
    d = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control", genes=genes)
    train, test = ev.split_combinations(d, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    return [make_fold("norman_doubles", "5 doubles", train.pseudobulk(), test)]


def _hepg2_frame() -> pd.DataFrame:
    from semimech.datasets import read_midas, shared_data_dir

    path = shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv"
    long = read_midas(path).query("time == 30")
    wide = np.log10(long.pivot_table(index=["cell_line", "stimuli", "inhibitors"], columns="readout",
                                     values="value", aggfunc="mean") + 1).reset_index()
    wide.columns.name = None
    return wide


def _context_labels(wide: pd.DataFrame, factor: str, ctx: pd.Series) -> pd.Series:
    """Label design of a factorial table: each level of ``factor`` is a target specific to its context."""
    def label(level, c):
        if level == "none":
            return "none"
        return "+".join(f"{t}@{c.replace('+', '&')}" for t in level.split("+"))

    return pd.Series([label(lv, c) for lv, c in zip(wide[factor], ctx)], index=wide.index)


@register_task("hepg2_combinations", metric="rmse", higher_is_better=False, aggregation="pooled",
               gene_set="all 18 phospho readouts", scale="log10(x + 1) of raw xMAP values, t = 30 min",
               baselines={k: label_baseline(k) for k in ("no_change", "additive", "min_single")})
def hepg2_combinations(*, quick: bool) -> list[Fold]:
    """HepG2CancerRes2011: per cell line x stimulus, train on no/single inhibitors, predict doubles and triples.

    Label design (until factorial designs land): a context is a cell line x stimulus setting
    (50), the batch; each inhibitor's target is specific to its context (``"PI3Ki@HepG2|IGF1"``).
    200 held-out rows, one measurement per condition (no replicates).
    """
    wide = _hepg2_frame()
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors")]
    wide["context"] = wide.cell_line + "|" + wide.stimuli
    wide["label"] = _context_labels(wide, "inhibitors", wide.context)
    wide.index = wide.context + "|" + wide.inhibitors
    d = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none", batch_key="context")
    train, test = ev.split_combinations(d)
    contexts = list(d.batches)[:5] if quick else list(d.batches)
    frame = wide.assign(split=np.where(wide.inhibitors.str.count(r"\+") >= 1, "test", "train"))
    return [make_fold("hepg2_combinations", "doubles+triples", train, test, contexts=contexts, frame=frame,
                      meta={"pkn": "cellnopt_liver_phospho/HepG2CancerRes2011/PKN-HepG2CancerRes2011.sif",
                            "noise": hepg2_replicate_noise()})]


def hepg2_replicate_noise(*, per_cell_line: bool = False):
    """A prior on each readout's noise sd from the t = 0 rows: every cell line x inhibitor set is
    measured twice before stimulation (40 pairs, 40 degrees of freedom per readout; pooled sd
    0.06-0.19 in log10 units). Not used by the baselines; the "+noise" model configurations use it.
    ``per_cell_line``: also one prior per cell line (8 pairs each; attach with ``by_batch``)."""
    from semimech import measurement as me
    from semimech.datasets import read_midas, shared_data_dir

    path = shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv"
    long = read_midas(path).query("time == 0")
    w = np.log10(long.pivot_table(index=["cell_line", "inhibitors", "row"], columns="readout", values="value") + 1)
    w = w.reset_index()
    w.columns.name = None
    w["condition"] = w.cell_line + "|" + w.inhibitors.str.replace("+", "&")
    w.index = "t0_row" + w.row.astype(str)
    readouts = [c for c in w.columns if c not in ("cell_line", "inhibitors", "row", "condition")]
    control = str(w.condition.iloc[0])
    reps = sm.Design.from_frame(w, readouts=readouts, perturbation_key="condition", control=control)
    return me.from_replicates(reps, groups=w.cell_line if per_cell_line else None)


#: Sachs 2005 conditions relabelled by the protein each reagent acts on.
SACHS_LABELS = {"cd3_cd28": "cd3_cd28", "cd3_cd28+aktinhib": "akt", "cd3_cd28+g0076": "pkc",
                "cd3_cd28+psitect": "pip2", "cd3_cd28+u0126": "mek", "cd3_cd28+ly": "pip3",
                "cd3_cd28+icam2": "icam2", "pma": "pma", "b2camp": "pka"}


@register_task("sachs_loco", metric="rmse", higher_is_better=False, aggregation="pooled",
               gene_set="all 11 phospho-proteins", scale="natural log of raw flow-cytometry values",
               baselines={k: label_baseline(k) for k in ("no_change", "train_mean")})
def sachs_loco(*, quick: bool) -> list[Fold]:
    """Sachs 2005: leave one condition out (8 folds); labels name the targeted protein."""
    import anndata as ad

    from semimech.datasets import read_sachs2005

    raw = read_sachs2005()
    obs = raw.obs.assign(target=[SACHS_LABELS[c] for c in raw.obs.condition])
    logged = ad.AnnData(X=np.log(raw.X), obs=obs, var=raw.var.copy())
    d = sm.Design.from_anndata(logged, perturbation_key="target", control="cd3_cd28")
    folds = []
    for lab in (["akt", "mek"] if quick else list(d.perturbations[1:])):
        train, test = ev.leave_one_condition_out(d, lab)
        folds.append(make_fold("sachs_loco", lab, train.pseudobulk(), test))
    return folds


PAPALEXI_TARGETS_IN_GENES = ("STAT1", "JAK2", "STAT2", "STAT3", "UBE2L6", "IFNGR2", "CMTM6", "NFKBIA", "TNFRSF14")
PAPALEXI_HELD_OUT = ("JAK2", "IFNGR2", "STAT1", "IFNGR1", "IRF1", "STAT2", "CMTM6", "SMAD4")


def papalexi_design() -> sm.Design:
    """Papalexi 2021 cells (UMI counts, batch = replicate) on the task's 40 genes: the targets that are
    readouts plus the most expressed others."""
    from semimech.datasets import read_papalexi2021

    adata = read_papalexi2021()
    mean = np.asarray(adata.X.mean(0)).ravel()
    keep = set(PAPALEXI_TARGETS_IN_GENES)
    order = [adata.var_names[i] for i in np.argsort(-mean) if adata.var_names[i] not in keep]
    chosen = keep | set(order[: 40 - len(keep)])
    genes = [g for g in adata.var_names if g in chosen]
    return sm.Design.from_anndata(adata, perturbation_key="target", control="non-targeting", batch_key="bio_rep",
                                  genes=genes, counts=True)


@register_task("papalexi_loto", metric="pearson_delta", higher_is_better=True, aggregation="mean_over_conditions",
               gene_set="40 genes: the 9 targets that are readouts + the 31 most expressed others",
               scale="UMI counts per unit size factor (NB likelihood)",
               baselines={k: label_baseline(k) for k in ("no_change", "train_mean", "linear")})
def papalexi_loto(*, quick: bool) -> list[Fold]:
    """Papalexi 2021 (UMI counts): leave one knockout target out (8 folds), pseudobulk per target x replicate."""
    d = papalexi_design()
    folds = []
    for t in (PAPALEXI_HELD_OUT[:2] if quick else PAPALEXI_HELD_OUT):
        train, test = ev.leave_one_target_out(d, t)
        folds.append(make_fold("papalexi_loto", t, train.pseudobulk(), test.pseudobulk()))
    return folds


def _loclo_rule(rule: str) -> Callable[[Fold], np.ndarray]:
    """Rules for an unseen cell line: the same condition's mean over the training lines
    (``other_lines``), or the training lines' mean untreated row (``other_lines_control``)."""
    def baseline(fold: Fold) -> np.ndarray:
        tr = fold.frame[fold.frame.split == "train"]
        by = tr.groupby(["stimuli", "inhibitors"])[list(fold.readouts)].mean()
        held = fold.frame.set_index(["label", "context"])
        keys = [tuple(held.loc[(lab, ctx), ["stimuli", "inhibitors"]]) for lab, ctx in zip(fold.labels, fold.contexts)]
        if rule == "other_lines_control":
            keys = [("none", "none")] * len(keys)
        return np.stack([by.loc[k].to_numpy(float) for k in keys])

    baseline.__name__ = rule
    return baseline


@register_task("hepg2_loclo", metric="rmse", higher_is_better=False, aggregation="pooled",
               gene_set="all 18 phospho readouts", scale="log10(x + 1) of raw xMAP values, t = 30 min",
               baselines={"other_lines": _loclo_rule("other_lines"),
                          "other_lines_control": _loclo_rule("other_lines_control")})
def hepg2_loclo(*, quick: bool) -> list[Fold]:
    """HepG2CancerRes2011: leave one cell line out (5 folds); predict all 80 of its rows from the other 4 lines.

    Blind: no row of the held-out line (not even its untreated one) is seen. A model answers from
    its population of cell lines (``sm.predict(..., new_contexts="population")``). Rules: the same
    stimulus x inhibitor condition averaged over the 4 training lines, or their untreated mean
    (``fold.reference``). One measurement per condition (no replicates).
    """
    wide = _hepg2_frame()
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors")]
    wide["context"] = wide.cell_line
    wide["label"] = [_label_of(s, i) for s, i in zip(wide.stimuli, wide.inhibitors)]
    wide.index = wide.cell_line + "|" + wide.stimuli + "|" + wide.inhibitors
    folds = []
    for line in (["HepG2"] if quick else sorted(wide.cell_line.unique())):
        frame = wide.assign(split=np.where(wide.cell_line == line, "test", "train"))
        tr = frame[frame.split == "train"]
        train = sm.Design.from_frame(tr, readouts=readouts, perturbation_key="label", control="none",
                                     batch_key="cell_line")
        te = frame[frame.split == "test"]
        control = tr[tr.label == "none"][readouts].to_numpy(float).mean(axis=0)
        folds.append(Fold("hepg2_loclo", line, train, tuple(te.label), tuple(te.context),
                          te[readouts].to_numpy(float), np.ones(len(te)), np.tile(control, (len(te), 1)),
                          tuple(readouts), frame, {"noise": hepg2_replicate_noise()}))
    return folds


def _label_of(stimuli: str, inhibitors: str) -> str:
    parts = [p for p in stimuli.split("+") + inhibitors.split("+") if p != "none"]
    return "+".join(parts) if parts else "none"


# the factorial MIDAS tasks (LiverDREAM, EGFR-ErbB) live in heldout_midas.py
import heldout_midas  # noqa: E402,F401
