"""One configuration of ``benchmarks/heldout.py`` with its errors per fold and per readout.

The same fits, seeds, order (folds outer, seeds inner) and scoring as ``heldout.py TASK --models
NAME`` (it calls ``heldout.run_model``); in addition it prints each fold's RMSE per seed next to a
baseline's and the RMSE per readout, and the JSON holds every fold's truth, point and 90% interval
and the coverage split at the data's bounds::

    cd /tmp && python -u /path/to/benchmarks/heldout_folds.py liverdream_loco signalling_network/normal \\
        --baseline stimulus_only --seeds 3 --json liver_folds.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

import heldout as H
import heldout_tasks as ht
from heldout_models import MODELS


def run(task_name: str, name: str, *, seeds, budget: H.Budget, baseline: str | None = None, log=print) -> dict:
    """``heldout.run_model`` for ``name`` on ``task_name``, with ``per_fold`` rows and the coverage split."""
    task = ht.TASKS[task_name]
    folds = task.build(quick=budget.quick)
    truth, ref = H._stack(folds, "truth"), H._stack(folds, "reference")
    rule_name = baseline or next(iter(task.baselines))
    rule = task.baselines[rule_name]
    got, rows = {s: [] for s in seeds}, []

    def on_fit(fold, seed, p):
        got[seed].append(p)
        lo, hi = np.quantile(p.observed, [0.05, 0.95], axis=0)
        rows.append({"seed": seed, "fold": fold.name, "readouts": list(fold.readouts),
                     "truth": np.asarray(fold.truth).tolist(), "point": p.point.tolist(), "lo90": lo.tolist(),
                     "hi90": hi.tolist(), "rmse": float(np.sqrt(np.mean((p.point - fold.truth) ** 2))),
                     "seconds": p.seconds, "info": p.info})
        if seed == seeds[-1]:
            r_err = float(np.sqrt(np.mean((rule(fold) - fold.truth) ** 2)))
            errs = [r["rmse"] for r in rows if r["fold"] == fold.name]
            log(f"  {fold.name:16s} {rule_name} {r_err:.3f}  {name}: " + " ".join(f"{e:.3f}" for e in errs))

    summary = H.run_model(task, folds, name, seeds=seeds, budget=budget, log=log, on_fit=on_fit)
    got = {s: preds for s, preds in got.items() if len(preds) == len(folds)}  # seeds that failed are not scored
    split = coverage_split(summary, got, truth)
    return {"coverage_split": split, "task": task_name, "metric": task.metric, "aggregation": task.aggregation,
            "gene_set": task.gene_set, "models": {name: summary},
            "baselines": {b: H.aggregate(task, truth, np.concatenate([fn(f) for f in folds]), ref)
                          for b, fn in task.baselines.items()},
            "per_fold": rows}


def randomised_coverage(truth: np.ndarray, draws: np.ndarray, prob: float) -> np.ndarray:
    """Per entry: the probability that the randomised PIT lies in the central ``prob`` interval.

    Where the predictive has an atom at the truth (clipped draws at a bound, and data at exactly
    that bound), the plain coverage counts the entry inside whenever the atom reaches the interval,
    so a calibrated predictive covers atoms almost always; the randomised PIT, uniform on
    ``[F(y-), F(y)]``, is uniform on [0, 1] for a calibrated predictive, atoms included
    (Czado, Gneiting & Held, Biometrics 65:1254, 2009). Elsewhere it equals the plain coverage.
    """
    a, b = (1 - prob) / 2, (1 + prob) / 2
    lo_f, hi_f = (draws < truth).mean(0), (draws <= truth).mean(0)
    width = hi_f - lo_f
    overlap = np.clip(np.minimum(hi_f, b) - np.maximum(lo_f, a), 0.0, None)
    point = ((lo_f >= a) & (lo_f <= b)).astype(float)
    return np.where(width > 0, overlap / np.where(width > 0, width, 1.0), point)


def coverage_split(result: dict, got: dict, truth: np.ndarray) -> dict:
    """Plain and randomised coverage per seed, on every entry, on entries at exactly 0 / 1, and on the others."""
    atom = (truth == 0.0) | (truth == 1.0)
    out = {"n_entries": int(truth.size), "n_at_bounds": int(atom.sum())}
    for s, preds in got.items():
        n = min(p.observed.shape[0] for p in preds)
        draws = np.concatenate([p.observed[:n] for p in preds], axis=1)
        row = {}
        for prob in (0.5, 0.9):
            lo, hi = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
            plain = (truth >= lo) & (truth <= hi)
            rand = randomised_coverage(truth, draws, prob)
            tag = int(round(prob * 100))
            row[f"cov{tag}"] = round(float(plain.mean()), 3)
            row[f"cov{tag}_randomised"] = round(float(rand.mean()), 3)
            row[f"cov{tag}_at_bounds"] = round(float(plain[atom].mean()), 3) if atom.any() else None
            row[f"cov{tag}_randomised_at_bounds"] = round(float(rand[atom].mean()), 3) if atom.any() else None
            row[f"cov{tag}_inside"] = round(float(plain[~atom].mean()), 3) if (~atom).any() else None
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        row["width90_inside"] = round(float(np.mean((hi - lo)[~atom])), 3) if (~atom).any() else None
        row["width90_at_bounds"] = round(float(np.mean((hi - lo)[atom])), 3) if atom.any() else None
        out[f"seed {s}"] = row
    return out


def by_readout(result: dict) -> dict:
    """RMSE per readout over folds, per seed (pooled over the folds' held-out rows)."""
    out = {}
    for s in sorted({r["seed"] for r in result["per_fold"]}):
        rows = [r for r in result["per_fold"] if r["seed"] == s]
        err = np.concatenate([np.asarray(r["point"]) - np.asarray(r["truth"]) for r in rows])
        out[f"seed {s}"] = dict(zip(rows[0]["readouts"], np.sqrt(np.mean(err**2, 0)).round(3).tolist()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("model")
    ap.add_argument("--baseline", help="the rule printed per fold (default: the task's first)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--quick", action="store_true", help="smoke run: the task's fewer folds (not a result)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    budget = H.Budget(num_steps=args.steps, num_samples=400, num_warmup=500, quick=args.quick)
    res = run(args.task, args.model, seeds=list(range(args.seeds)), budget=budget, baseline=args.baseline)
    res["per_readout_rmse"] = by_readout(res)
    for k, v in res["per_readout_rmse"].items():
        print(f"  RMSE per readout, {k}: {v}")
    for k, v in res["coverage_split"].items():
        print(f"  coverage, {k}: {v}")
    res["config"] = {"seeds": list(range(args.seeds)), "num_steps": args.steps, "num_samples": 400,
                     "load_1min": H._load(), "wall_seconds": round(time.time() - t0, 1)}
    print(H.table({**res, "higher_is_better": ht.TASKS[args.task].higher_is_better}))
    pathlib.Path(args.json).write_text(json.dumps(H._finite(res), indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
