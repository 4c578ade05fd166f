"""Accuracy benchmark: every registered model and every baseline on every real dataset.

Tasks (``benchmarks/accuracy_tasks.py``; data in ``../shared/data``, see its README):

- ``norman_doubles``: Norman 2019, predict 5 held-out doubles from singles (L2).
- ``mcfaline_transfer``: McFaline-Figueroa 2023, transfer knockdown effects to a held-out cell
  line (L2; a negative control: the data hold essentially no transferable signal).
- ``hepg2_combinations``: HepG2CancerRes2011, predict double/triple inhibitor combinations
  from singles per cell line x stimulus (RMSE, pooled as in the README).
- ``sachs_loco``: Sachs 2005, leave one condition out (RMSE).
- ``papalexi_loto``: Papalexi 2021 counts (NB), leave one target out (Pearson-delta).

Models are fitted by SVI on the training pseudobulk (exact for Gaussian rows; sums of counts for
NB), several seeds. Predictions for a context (a cell line, a stimulus, a replicate mix) are
anchored to that context's observed training control, as the baselines are: the model's predicted
change (difference, or ratio for counts) from its own control is added to the observed control.
A model that cannot predict a fold (e.g. the additive model for a target never seen in training)
is reported as such, never silently dropped.

    python benchmarks/accuracy.py --quick                 # 1 seed, few steps, subsets
    python benchmarks/accuracy.py --models additive --tasks norman_doubles
    python benchmarks/accuracy.py                         # 3 seeds, 3000 steps

Writes ``benchmarks/results/accuracy.json`` (per-perturbation rows and the summary table).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time
import traceback

import numpy as np
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import semimech as sm  # noqa: E402
from accuracy_tasks import TASKS  # noqa: E402
from semimech import evaluate as ev  # noqa: E402
from semimech.errors import SemimechError  # noqa: E402
from semimech.models import REGISTRY  # noqa: E402

COLUMNS = ["l2", "rmse", "pearson_delta", "mse_top_de", "direction", "coverage_50", "coverage_90", "crps"]


def anchored(pred: sm.Prediction, train: sm.Design, *, batch, likelihood: str) -> sm.Prediction:
    """Shift a model's draws so its control equals the observed training control of ``batch``."""
    ctrl_obs = ev.control_mean(train, batch=batch)
    c = pred.perturbations.index(pred.control)
    ctrl_model = pred.draws["mean"][:, c:c + 1, :]
    if likelihood == "negbin":
        draws = {k: v / np.maximum(ctrl_model, 1e-12) * ctrl_obs for k, v in pred.draws.items()}
    else:
        draws = {k: v - ctrl_model + ctrl_obs for k, v in pred.draws.items()}
    return sm.Prediction(perturbations=pred.perturbations, genes=pred.genes, draws=draws, control=pred.control,
                         model=pred.model)


def contexts(fold) -> list:
    """The fold's contexts that hold perturbed test rows."""
    out = []
    for ctx in fold.contexts:
        rows = np.ones(fold.test.n_obs, bool) if ctx is None else fold.test.batch_index == fold.test.batches.index(ctx)
        if np.any(rows & (fold.test.perturbation_index != 0)):
            out.append(ctx)
    return out


def score_model(fit, fold, *, seed: int) -> tuple[list[pd.DataFrame], str]:
    """Per-context score tables of one fit on one fold, or a note on why it cannot predict."""
    labels = [lab for ctx in contexts(fold) for lab in ev._align.held_out_labels(fold.test, None, batch=ctx)]
    try:
        want = [fold.train.control] + list(dict.fromkeys(labels))
        counts = ev.cell_counts(fold.test, want[1:])
        pred = sm.predict(fit, want, rng_key=seed + 1000, num_cells=np.concatenate([[counts.mean()], counts]))
    except SemimechError as err:
        return [], f"cannot predict: {str(err).splitlines()[0][:160]}"
    tables = []
    for ctx in contexts(fold):
        p = anchored(pred, fold.train, batch=ctx, likelihood=fit.likelihood) if fold.train.batches else pred
        t = ev.score(p, fold.test, batch=ctx, reference=fold.train)
        tables.append(t[t.perturbation != "mean"].assign(context=str(ctx)))
    return tables, ""


def run(tasks, models, *, seeds, num_steps, num_samples, max_genes, quick, max_folds=None, folds=None, log=print):
    rows, notes, timings = [], [], []
    for task in tasks:
        t0 = time.time()
        try:
            task_folds = TASKS[task](max_genes=max_genes, quick=quick)[:max_folds]
            if folds:
                task_folds = [f for f in task_folds if f.name in folds]
        except Exception as err:  # a missing dataset must not stop the other tasks
            notes.append({"task": task, "model": "*", "note": f"task skipped: {type(err).__name__}: {err}"})
            log(f"[{task}] skipped: {err}")
            continue
        if not task_folds:
            log(f"[{task}] no fold selected")
            continue
        log(f"[{task}] {len(task_folds)} fold(s), {task_folds[0].fit_design!r}")
        for fold in task_folds:
            for ctx in contexts(fold):
                t = ev.score_baselines(fold.train, fold.test, baselines=fold.baselines, batch=ctx, reference=fold.train)
                t = t[t.perturbation != "mean"].assign(task=task, fold=fold.name, seed=-1, context=str(ctx))
                rows.append(t.assign(model="baseline:" + t.model))
            for name in models:
                for seed in seeds:
                    ts = time.time()
                    try:
                        fit = sm.fit_svi(REGISTRY[name], fold.fit_design, rng_key=seed, num_steps=num_steps,
                                         num_samples=num_samples, progress_bar=False)
                        tables, note = score_model(fit, fold, seed=seed)
                    except Exception as err:  # report, keep going
                        tables, note = [], f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
                        traceback.print_exc(limit=2)
                    dt = time.time() - ts
                    timings.append({"task": task, "fold": fold.name, "model": name, "seed": seed, "seconds": dt})
                    if note:
                        notes.append({"task": task, "fold": fold.name, "model": name, "seed": seed, "note": note})
                    for t in tables:
                        rows.append(t.assign(task=task, fold=fold.name, seed=seed, model=name))
                    log(f"  {task}/{fold.name} {name} seed {seed}: {dt:.0f}s {note}")
        log(f"[{task}] done in {time.time() - t0:.0f}s")
    per = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return per, notes, timings


def summarise(per: pd.DataFrame) -> pd.DataFrame:
    """Task x model: metrics averaged over held-out perturbations, then mean and sd over seeds.

    ``rmse`` is pooled (root of the mean squared per-perturbation RMSE, as the shared README does
    for HepG2); other metrics are plain means. ``n`` counts scored perturbations per seed.
    """
    if per.empty:
        return per
    agg = {c: "mean" for c in COLUMNS}
    agg["rmse"] = lambda r: float(np.sqrt(np.mean(np.square(r))))
    by_seed = per.groupby(["task", "model", "seed"]).agg({**agg, "perturbation": "count"}).rename(
        columns={"perturbation": "n"})
    mean = by_seed.groupby(["task", "model"]).mean()
    sd = by_seed.groupby(["task", "model"])[["l2", "rmse", "pearson_delta"]].std().add_suffix("_sd")
    seeds = by_seed.groupby(["task", "model"]).size().rename("seeds")
    return pd.concat([mean, sd, seeds], axis=1).reset_index()


SHOW = ["task", "model", "n", "seeds", "l2", "rmse", "pearson_delta", "coverage_90", "crps"]


def _print(table: pd.DataFrame, notes) -> None:
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    print(table[SHOW].to_string(index=False, float_format=lambda x: f"{x:.3f}") if not table.empty else "no rows")
    for n in notes:
        print("note:", n)


def merge(paths, out) -> int:
    """Combine runs over different tasks (e.g. run in parallel) into one JSON and table."""
    parts = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    per = pd.DataFrame([r for p in parts for r in p["per_perturbation"]])
    # runs split by model repeat the baselines: keep one copy of each row
    per = per.drop_duplicates(subset=["task", "fold", "model", "seed", "context", "perturbation"])
    notes = [n for p in parts for n in p["notes"]]
    config = dict(parts[0]["config"])
    for key in ("models", "tasks", "folds"):  # union over parts, in first-seen order
        config[key] = list(dict.fromkeys(v for p in parts for v in (p["config"].get(key) or [])))
    config["machines"] = sorted({f'{p["config"].get("machine")} / python {p["config"].get("python")}' for p in parts})
    config["total_seconds"] = sum(p["config"]["total_seconds"] for p in parts)
    config["merged_from"] = [str(p) for p in paths]
    table = summarise(per)
    _print(table, notes)
    payload = {"config": config, "summary": json.loads(table.to_json(orient="records")), "notes": notes,
               "timings": [t for p in parts for t in p["timings"]],
               "per_perturbation": json.loads(per.to_json(orient="records"))}
    pathlib.Path(out).write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 300 steps, fewer folds and genes")
    ap.add_argument("--models", nargs="*", default=None, help=f"registered models (default all: {sorted(REGISTRY)})")
    ap.add_argument("--tasks", nargs="*", default=None, help=f"tasks (default all: {list(TASKS)})")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="SVI steps (default 3000; 300 with --quick)")
    ap.add_argument("--max-genes", type=int, default=None, help="genes per task (default all; 100 with --quick)")
    ap.add_argument("--max-folds", type=int, default=None, help="at most this many folds per task")
    ap.add_argument("--folds", nargs="*", default=None, help="only the folds with these names (e.g. akt 'to A172')")
    ap.add_argument("--merge", nargs="*", default=None,
                    help="merge JSON outputs of runs over different tasks into --out (runs nothing)")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results" / "accuracy.json"))
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    models = args.models if args.models is not None else [n for n in REGISTRY if n != "guide_assignment"]
    unknown = [m for m in models if m not in REGISTRY]
    if unknown:
        ap.error(f"unknown models {unknown}; registered: {sorted(REGISTRY)}")
    tasks = args.tasks or list(TASKS)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    steps = args.steps or (300 if args.quick else 3000)
    samples = 100 if args.quick else 400
    max_genes = args.max_genes or (100 if args.quick else None)
    t0 = time.time()
    per, notes, timings = run(tasks, models, seeds=seeds, num_steps=steps, num_samples=samples,
                              max_genes=max_genes, quick=args.quick, max_folds=args.max_folds, folds=args.folds)
    table = summarise(per)
    _print(table, notes)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {"quick": args.quick, "models": models, "tasks": tasks, "seeds": seeds, "steps": steps,
                   "num_samples": samples, "max_genes": max_genes, "max_folds": args.max_folds, "folds": args.folds, "semimech": sm.__version__,
                   "python": platform.python_version(), "machine": platform.machine(),
                   "total_seconds": round(time.time() - t0, 1)},
        "summary": json.loads(table.to_json(orient="records")),
        "notes": notes, "timings": timings,
        "per_perturbation": json.loads(per.to_json(orient="records")) if not per.empty else [],
    }
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
