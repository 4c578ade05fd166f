"""The factorial MIDAS tasks of ``benchmarks/heldout.py``: LiverDREAM and EGFR-ErbB.

Both are stimulus x inhibitor designs with one measurement per condition. Until factorial
designs (issue 11 items 1-2) land, they are label designs: a condition's label lists its
treatment levels (``"tgfa+pi3ki"``), specific to a context where the design has several.
Each fold's ``frame`` keeps the factor columns (``stimuli``, ``inhibitors``, ``context``,
``label``, ``split``) so that a model can build its own design, and so that the factorial
baselines below can find a condition's parts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import semimech as sm
from heldout_tasks import Fold, label_baseline, make_fold, register_task
from semimech import evaluate as ev

CNO = "cellnopt_liver_phospho"


def _read(rel: str, time: float) -> pd.DataFrame:
    from semimech.datasets import read_midas, shared_data_dir

    long = read_midas(shared_data_dir() / CNO / rel).query("time == @time")
    wide = long.pivot_table(index=["cell_line", "stimuli", "inhibitors"], columns="readout", values="value",
                            aggfunc="mean", dropna=False).reset_index()
    wide.columns.name = None
    return wide


def _row(fold: Fold, label: str, ctx) -> pd.Series:
    f = fold.frame
    hit = f[(f.label == label) & (f.context == (ctx if ctx is not None else "all"))]
    return hit.iloc[0]


def _values(fold: Fold, **levels) -> np.ndarray | None:
    """Training readouts of the condition with these factor levels (None if not in training)."""
    f = fold.frame[fold.frame.split == "train"]
    for k, v in levels.items():
        f = f[f[k] == v]
    return None if f.empty else f[list(fold.readouts)].to_numpy(float).mean(0)


# ------------------------------------------------------------------------------ LiverDREAM
def _liver_stimulus_only(fold: Fold) -> np.ndarray:
    """The inhibitor does nothing: the stimulus' own row without inhibitor."""
    out = []
    for lab, ctx in zip(fold.labels, fold.contexts):
        r = _row(fold, lab, ctx)
        out.append(_values(fold, stimuli=r.stimuli, inhibitors="none"))
    return np.asarray(out)


def _liver_inhibitor_transfer(fold: Fold) -> np.ndarray:
    """Two-way additive: the stimulus row plus the inhibitor's mean effect under the other stimuli."""
    out = []
    for lab, ctx in zip(fold.labels, fold.contexts):
        r = _row(fold, lab, ctx)
        base = _values(fold, stimuli=r.stimuli, inhibitors="none")
        effects = []
        for s in sorted(set(fold.frame.stimuli) - {r.stimuli}):
            with_i, without = _values(fold, stimuli=s, inhibitors=r.inhibitors), _values(fold, stimuli=s,
                                                                                        inhibitors="none")
            if with_i is not None and without is not None:
                effects.append(with_i - without)
        out.append(base + (np.mean(effects, 0) if effects else 0.0))
    return np.asarray(out)


@register_task("liverdream_loco", metric="rmse", higher_is_better=False, aggregation="pooled",
               gene_set="the 5 readouts measured in every condition (akt, erk12, hsp27, ikb, jnk12; "
                        "mek12 is not measured under mek12i, p38 not under p38i)",
               scale="normalised 0-1 values as distributed (DREAM4), t = 30 min",
               baselines={"no_change": label_baseline("no_change"), "stimulus_only": _liver_stimulus_only,
                          "additive": label_baseline("additive"), "inhibitor_transfer": _liver_inhibitor_transfer})
def liverdream_loco(*, quick: bool) -> list[Fold]:
    """LiverDREAM (HepG2, 4 stimuli x 4 inhibitors): hold out one stimulus x inhibitor condition at a time.

    Predicted from that stimulus' other rows and that inhibitor under the other stimuli; 20 folds
    (stimulus "none" included: an inhibitor alone). Labels name the stimulus and inhibitor
    (``"tgfa+pi3ki"``); control ``"none"``.
    """
    wide = _read("LiverDREAM/MD-LiverDREAM.csv", 30.0)
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors") and wide[c].notna().all()]
    parts = [[p for p in (s, i) if p != "none"] for s, i in zip(wide.stimuli, wide.inhibitors)]
    wide["label"] = ["+".join(p) if p else "none" for p in parts]
    wide["context"] = "all"
    wide.index = wide.label
    d = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none")
    held = [(s, i) for s in sorted(set(wide.stimuli)) for i in sorted(set(wide.inhibitors) - {"none"})]
    if quick:
        held = [("tgfa", "pi3ki"), ("il1a", "p38i")]
    folds = []
    for s, i in held:
        mask = ((wide.stimuli == s) & (wide.inhibitors == i)).to_numpy()
        train, test = ev.split_rows(d, mask)
        frame = wide.assign(split=np.where(mask, "test", "train")).reset_index(drop=True)
        folds.append(make_fold("liverdream_loco", f"{s}+{i}", train, test, frame=frame,
                               meta={"pkn": f"{CNO}/LiverDREAM/PKN-LiverDREAM.sif"}))
    return folds


# ------------------------------------------------------------------------------ EGFR-ErbB
def _egfr_rule(rule: str):
    def baseline(fold: Fold) -> np.ndarray:
        out = []
        for lab, ctx in zip(fold.labels, fold.contexts):
            r = _row(fold, lab, ctx)
            base = _values(fold, stimuli="none", inhibitors=r.inhibitors, context=ctx)
            singles = np.asarray([_values(fold, stimuli=s, inhibitors=r.inhibitors, context=ctx)
                                  for s in r.stimuli.split("+")])
            if rule == "additive":
                out.append(base + (singles - base).sum(0))
            elif rule == "max_single":
                out.append(singles.max(0))
            else:
                out.append(singles.mean(0))
        return np.asarray(out)

    baseline.__name__ = rule
    return baseline


@register_task("egfr_erbb_combinations", metric="rmse", higher_is_better=False, aggregation="pooled",
               gene_set="all 11 phospho readouts",
               scale="log10(x + 1) of raw xMAP values; contexts t = 30 and 180 min",
               baselines={"no_change": label_baseline("no_change"), "additive": _egfr_rule("additive"),
                          "max_single": _egfr_rule("max_single"), "mean_single": _egfr_rule("mean_single")})
def egfr_erbb_combinations(*, quick: bool) -> list[Fold]:
    """EGFR-ErbB (HepG2, experiment 2): predict ligand combinations from single ligands, +/- PI3Ki.

    Rows: 12 ligand settings (none, 5 single EGF-family ligands, 6 combinations) x (no inhibitor,
    PI3Ki) at t = 30 and 180 min (t = 0 is one shared control copied into every row, unused).
    Train: no ligand and single ligands, with and without PI3Ki (12 rows per time point); test:
    the 6 combinations with and without PI3Ki (12 per time point, 24 in all). Label design: the
    time point is the context (batch) and every ligand and PI3Ki is a target specific to it
    (``"EGF@30+TGFa@30+PI3Ki@30"``).
    """
    wide = _egfr_frame()
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors", "context", "label")]
    combos = (wide.stimuli.str.count(r"\+") >= 1).to_numpy()
    wide["split"] = np.where(combos, "test", "train")
    d = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none", batch_key="context")
    train, test = ev.split_rows(d, combos)
    contexts = ["30"] if quick else ["30", "180"]
    return [make_fold("egfr_erbb_combinations", "ligand combinations", train, test, contexts=contexts,
                      frame=wide.reset_index(drop=True),
                      meta={"pkn": f"{CNO}/EGFR-ErbB_PCB2009/PKN-EGFR-ErbB_PCB2009.sif"})]


def _egfr_frame() -> pd.DataFrame:
    frames = []
    for t in (30.0, 180.0):
        w = _read("EGFR-ErbB_PCB2009/data/RawData-Exp2.csv", t)
        w["context"] = f"{int(t)}"
        frames.append(w)
    wide = pd.concat(frames, ignore_index=True)
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors", "context")]
    wide[readouts] = np.log10(wide[readouts].astype(float) + 1)
    parts = [[p for p in s.split("+") + [i] if p != "none"] for s, i in zip(wide.stimuli, wide.inhibitors)]
    wide["label"] = ["+".join(f"{p}@{c}" for p in ps) if ps else "none" for ps, c in zip(parts, wide.context)]
    wide.index = wide.context + "|" + wide.label
    return wide


def _carry_forward(shift: bool):
    def baseline(fold: Fold) -> np.ndarray:
        out = []
        for lab, ctx in zip(fold.labels, fold.contexts):
            r = _row(fold, lab, ctx)
            early = _values(fold, stimuli=r.stimuli, inhibitors=r.inhibitors, context="30")
            if shift:
                early = early + (_values(fold, stimuli="none", inhibitors=r.inhibitors, context="180")
                                 - _values(fold, stimuli="none", inhibitors=r.inhibitors, context="30"))
            out.append(early)
        return np.asarray(out)

    baseline.__name__ = "carry_forward_shift" if shift else "carry_forward"
    return baseline


@register_task("egfr_erbb_late", metric="rmse", higher_is_better=False, aggregation="pooled",
               gene_set="all 11 phospho readouts",
               scale="log10(x + 1) of raw xMAP values; predict t = 180 min from t = 30 min",
               baselines={"no_change": label_baseline("no_change"), "carry_forward": _carry_forward(False),
                          "carry_forward_shift": _carry_forward(True)})
def egfr_erbb_late(*, quick: bool) -> list[Fold]:
    """EGFR-ErbB (HepG2, experiment 2): predict the late time point from the early one.

    Train: every row at t = 30 min (no ligand, 5 single ligands, 6 combinations, each +/- PI3Ki)
    and the no-ligand rows at t = 180 (+/- PI3Ki); test: the 22 ligand rows at t = 180. Label design
    as ``egfr_erbb_combinations`` (time point = context). Rules: ``carry_forward`` (the same
    condition's t = 30 value), ``carry_forward_shift`` (plus the no-ligand rows' change from 30 to
    180 under the same inhibitor), ``no_change`` (the t = 180 control).
    """
    wide = _egfr_frame()
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors", "context", "label")]
    late = ((wide.context == "180") & (wide.stimuli != "none")).to_numpy()
    wide["split"] = np.where(late, "test", "train")
    d = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none", batch_key="context")
    train, test = ev.split_rows(d, late)
    return [make_fold("egfr_erbb_late", "t = 180 from t = 30", train, test, contexts=["180"],
                      frame=wide.reset_index(drop=True),
                      meta={"pkn": f"{CNO}/EGFR-ErbB_PCB2009/PKN-EGFR-ErbB_PCB2009.sif"})]
