"""Held-out benchmark: one task, every model configuration and baseline, one number each.

    python benchmarks/heldout.py TASK --json PATH [--models NAME ...] [--seeds 3] [--steps 3000] [--quick]
    python benchmarks/heldout.py --list                      # tasks (with metric, aggregation, gene set) and models

Tasks: ``norman_doubles`` (shipped data), ``hepg2_combinations``, ``sachs_loco``, ``papalexi_loto``,
``liverdream_loco``, ``egfr_erbb_combinations``, ``egfr_erbb_late``, ``hepg2_loclo`` (``../shared/data``). Writes::

    {"task", "metric", "higher_is_better", "aggregation", "gene_set", "scale", "n_conditions", "n_folds",
     "models": {NAME: {"value", "sd_over_seeds", "coverage_50", "coverage_90", "seeds", "fit_seconds",
                       "per_seed", "crps", "notes"}},
     "baselines": {NAME: value}, "config": {...}, "notes": [...]}

Conventions (the same for every model and baseline of a task, and in the README):

- **One aggregation per task**, stated by the task: ``"pooled"`` (the metric over every held-out
  condition x readout entry: RMSE = root of the mean squared error over all entries) or
  ``"mean_over_conditions"`` (the metric per held-out condition, then the plain mean).
- **One gene set per task**, stated (``gene_set``): models and baselines see the same readouts.
- **Intervals for an observation**: coverage scores the predictive draws of the mean of
  ``n_obs`` new observations (``"observed_mean"``), never of the population mean; pooled
  over entries. ``value`` scores the posterior mean of the population mean (the point).
- **No anchoring** to observed controls: a model's prediction is scored as it comes.
- **Seeds**: ``value`` is the mean over seeds (3 by default), ``sd_over_seeds`` their sd (ddof 1),
  ``per_seed`` the values; coverage and ``fit_seconds`` (summed over folds) are means over seeds.
  A configuration that cannot predict every fold gets ``value = null`` and a note saying why.

Extend it without editing this file: tasks in ``heldout_tasks.py`` / ``heldout_midas.py``
(``register_task``), model configurations in ``heldout_models.py`` (``register_model``); see
their docstrings. ``--quick``: 1 seed, 300 steps, fewer folds (a smoke run, not a result).
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import platform
import sys
import time
import traceback

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import heldout_tasks as ht  # noqa: E402
from heldout_models import MODELS, Budget, NotApplicable  # noqa: E402

import semimech as sm  # noqa: E402
from semimech import evaluate as ev  # noqa: E402


def per_condition(metric: str, truth: np.ndarray, point: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The metric for each held-out condition (row)."""
    err = point - truth
    if metric == "rmse":
        return np.sqrt(np.mean(err**2, axis=1))
    if metric == "l2":
        return np.sqrt(np.sum(err**2, axis=1))
    if metric == "pearson_delta":
        return np.array([_corr(p - r, t - r) for p, t, r in zip(point, truth, reference)])
    raise ValueError(f"unknown metric {metric!r}")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def aggregate(task: ht.Task, truth: np.ndarray, point: np.ndarray, reference: np.ndarray) -> float:
    """The task's number: its metric under its aggregation (see the module docstring)."""
    if task.aggregation == "mean_over_conditions":
        return float(np.mean(per_condition(task.metric, truth, point, reference)))  # NaN if undefined anywhere
    if task.metric == "rmse":
        return float(np.sqrt(np.mean((point - truth) ** 2)))
    if task.metric == "l2":
        return float(np.sqrt(np.mean(np.sum((point - truth) ** 2, axis=1))))
    return _corr((point - reference).ravel(), (truth - reference).ravel())


def coverage(truth: np.ndarray, draws: np.ndarray, prob: float) -> float:
    """Fraction of held-out entries inside the central ``prob`` interval of the draws (pooled)."""
    lo, hi = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return float(np.mean((truth >= lo) & (truth <= hi)))


def _stack(folds, attr):
    return np.concatenate([getattr(f, attr) for f in folds])


def score_seed(task: ht.Task, truth, ref, predicted) -> dict:
    """One seed's scores from its per-fold predictions (in fold order), pooled as the task states."""
    n = min(p.observed.shape[0] for p in predicted)
    draws = np.concatenate([p.observed[:n] for p in predicted], axis=1)
    point = np.concatenate([p.point for p in predicted])
    return {"value": aggregate(task, truth, point, ref), "cov50": coverage(truth, draws, 0.5),
            "cov90": coverage(truth, draws, 0.9), "crps": float(np.mean(ev.crps(truth, draws))),
            "seconds": float(sum(p.seconds for p in predicted)),
            "per_condition": per_condition(task.metric, truth, point, ref).tolist()}


def summarise(scores: list[dict], notes: list[str]) -> dict:
    """The JSON entry of one configuration from its seeds' :func:`score_seed` results."""
    def mean(key):
        return float(np.mean([s[key] for s in scores])) if scores else None

    per_seed = [s["value"] for s in scores]
    return {"value": mean("value"), "sd_over_seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
            "coverage_50": mean("cov50"), "coverage_90": mean("cov90"), "seeds": len(scores),
            "fit_seconds": mean("seconds"), "per_seed": per_seed, "coverage_90_per_seed": [s["cov90"] for s in scores],
            "crps": mean("crps"), "per_condition_per_seed": [s["per_condition"] for s in scores], "notes": notes}


def log_seed(log, name: str, seed: int, metric: str, sc: dict) -> None:
    log(f"  {name} seed {seed}: {metric} {sc['value']:.4f}  cov50 {sc['cov50']:.2f}  "
        f"cov90 {sc['cov90']:.2f}  fit {sc['seconds']:.1f}s")


def run_model(task: ht.Task, folds, name: str, *, seeds, budget: Budget, log=print, on_fit=None) -> dict:
    """Fit configuration ``name`` on every fold for every seed; score pooled over folds.

    Folds outer, seeds inner: a fold's compiled programs serve all its seeds and are then dropped
    (``jax.clear_caches``), so no fold is compiled twice and the process does not grow with the
    folds. (Seeds outer compiled every fold again for every seed wherever the fold designs differ,
    e.g. the signalling network's arrays, which come from each fold's training data.) Every fit is a
    function of its fold and seed alone, so the order changes no number. ``on_fit(fold, seed,
    prediction)`` is called after each fit (``heldout_folds.py`` keeps per-fold errors with it).
    """
    cfg = MODELS[name]
    truth, ref = _stack(folds, "truth"), _stack(folds, "reference")
    predicted, notes = {seed: [] for seed in seeds}, []
    for i, fold in enumerate(folds):
        t_fold = time.time()
        for seed in [s for s in seeds if s in predicted]:
            try:
                p = cfg.run(fold, seed=seed, budget=budget)
                if p.observed.shape[1:] != fold.truth.shape:
                    raise ValueError(f"{name} returned draws of shape {p.observed.shape}, expected "
                                     f"(draws, {fold.truth.shape[0]}, {fold.truth.shape[1]}).")
            except NotApplicable as err:  # the configuration cannot answer this task at all
                notes.append(f"cannot predict fold {fold.name!r}: {err}")
                log(f"  {name}: cannot predict {fold.name!r}: {err}")
                return summarise([], notes)
            except Exception as err:  # report, drop this seed, keep going with the others
                traceback.print_exc(limit=3)
                notes.append(f"seed {seed} failed on fold {fold.name!r}: {type(err).__name__}: {str(err)[:200]}")
                del predicted[seed]
                continue
            predicted[seed].append(p)
            if on_fit is not None:
                on_fit(fold, seed, p)
        # Each NUTS fit leaves ~700-1,300 memory mappings of compiled code in JAX's caches
        # (measured: 2,595 -> 7,179 over 6 tiny fit_nuts calls): 40-60 folds in one process reach the
        # kernel's 65,530 and LLVM aborts ("Unable to allocate section memory", seen twice on
        # liverdream_loco). semimech's own SVI programs are cached apart (a few engines) and kept.
        jax.clear_caches()
        gc.collect()
        if len(folds) > 1:
            log(f"  {name}: fold {i + 1}/{len(folds)} {fold.name!r}, {len(predicted)} seed(s), {time.time() - t_fold:.0f}s")
    scores = []
    for seed, preds in predicted.items():
        scores.append(score_seed(task, truth, ref, preds))
        log_seed(log, name, seed, task.metric, scores[-1])
    return summarise(scores, notes)


def run(task_name: str, *, models, seeds, budget: Budget, log=print) -> dict:
    task = ht.TASKS[task_name]
    t0 = time.time()
    folds = task.build(quick=budget.quick)
    truth, ref = _stack(folds, "truth"), _stack(folds, "reference")
    log(f"[{task_name}] {len(folds)} fold(s), {truth.shape[0]} held-out conditions x {truth.shape[1]} readouts; "
        f"{task.metric} ({task.aggregation}); gene set: {task.gene_set}")
    baselines = {}
    for bname, fn in task.baselines.items():
        point = np.concatenate([fn(f) for f in folds])
        baselines[bname] = aggregate(task, truth, point, ref)
        log(f"  baseline {bname}: {baselines[bname]:.4f}")
    out_models, notes = {}, []
    for name in models:
        cfg = MODELS[name]
        if cfg.tasks is not None and task_name not in cfg.tasks:
            notes.append(f"{name}: not configured for {task_name}")
            log(f"  {name}: not configured for {task_name} (skipped)")
            continue
        out_models[name] = run_model(task, folds, name, seeds=seeds, budget=budget, log=log)
    return {"task": task_name, "metric": task.metric, "higher_is_better": task.higher_is_better,
            "aggregation": task.aggregation, "gene_set": task.gene_set, "scale": task.scale,
            "n_conditions": int(truth.shape[0]), "n_folds": len(folds), "models": out_models,
            "conditions": [str(c) for f in folds for c in f.labels],
            "baselines": baselines, "notes": notes,
            "config": {"quick": budget.quick, "seeds": list(seeds), "num_steps": budget.num_steps,
                       "num_samples": budget.num_samples, "num_warmup": budget.num_warmup,
                       "semimech": sm.__version__, "python": platform.python_version(),
                       "machine": platform.machine(), "load_1min": _load(), "wall_seconds": round(time.time() - t0, 1)}}


def _load() -> float | None:
    try:
        import os

        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _finite(obj):
    """NaN / inf -> None (JSON has no NaN), recursively."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def table(result: dict) -> str:
    """A plain-text table of one result."""
    arrow = "higher is better" if result["higher_is_better"] else "lower is better"
    lines = [f"{result['task']}: {result['metric']} ({result['aggregation']}, {arrow}); {result['gene_set']}",
             f"{'':32s} {'value':>8s} {'sd':>7s} {'cov50':>6s} {'cov90':>6s} {'seeds':>5s} {'fit s':>7s}"]
    for name, m in result["models"].items():
        def f(x, w=7, p=3):
            return f"{x:{w}.{p}f}" if x is not None else " " * (w - 1) + "-"

        lines.append(f"{name:32s} {f(m['value'], 8, 4)} {f(m['sd_over_seeds'], 7, 4)} {f(m['coverage_50'], 6, 2)} "
                     f"{f(m['coverage_90'], 6, 2)} {m['seeds']:5d} {f(m['fit_seconds'], 7, 1)}")
        lines += [f"    note: {n}" for n in m["notes"]]
    for name, v in result["baselines"].items():
        lines.append(f"{'baseline: ' + name:32s} {v:8.4f}" + ("  (undefined)" if not np.isfinite(v) else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", nargs="?", help=f"one of {sorted(ht.TASKS)}")
    ap.add_argument("--json", help="write the result here (default benchmarks/results/heldout_TASK.json)")
    ap.add_argument("--models", nargs="*", default=None, help="configurations (default: every one for the task)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="SVI steps (default 3000; 300 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 300 steps, fewer folds")
    ap.add_argument("--list", action="store_true", help="list tasks and model configurations")
    args = ap.parse_args(argv)
    if args.list or not args.task:
        for t in ht.TASKS.values():
            print(f"task {t.name}: {t.metric} ({t.aggregation}); {t.gene_set}; {t.scale}")
        for m in MODELS.values():
            print(f"model {m.name}: {m.description}")
        return 0 if args.list else 2
    if args.task not in ht.TASKS:
        ap.error(f"unknown task {args.task!r}; tasks: {sorted(ht.TASKS)}")
    models = args.models if args.models is not None else [n for n, m in MODELS.items()
                                                           if m.tasks is None or args.task in m.tasks]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model configurations {unknown}; registered: {sorted(MODELS)}")
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    steps = args.steps or (300 if args.quick else 3000)
    budget = Budget(num_steps=steps, num_samples=100 if args.quick else 400,
                    num_warmup=100 if args.quick else 500, quick=args.quick)
    result = run(args.task, models=models, seeds=seeds, budget=budget)
    print(table(result))
    out = pathlib.Path(args.json or pathlib.Path(__file__).resolve().parent / "results" / f"heldout_{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(result), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
