"""Does the comparison of assumptions agree with held-out evidence, and what does it cost?

    python benchmarks/compare_cv.py TASK [--design train|full] [--unit U] [--k K] [--steps 2000] [--refit-steps N]
                                         [--heldout-json PATH] [--heldout-steps STEPS] [--json PATH]

Tasks (from ``benchmarks/heldout_tasks.py``): ``norman_doubles`` (shipped data),
``hepg2_combinations``, ``sachs_loco``. For each, every registered static model
(``semimech.models.REGISTRY``) is fitted once on the comparison design — the training design of
the held-out task (Norman, HepG2), or every condition (Sachs, whose held-out task is itself
leave-one-condition-out) — and :func:`semimech.evaluate.compare` cross-validates them over held-out
units. The held-out number of each model is the task's metric from ``benchmarks/heldout.py``
(read from ``--heldout-json``, or computed here with one seed). Reported:

- the comparison table (rank, ties, elpd and its SE, calibration, checks), or why it cannot rank;
- agreement: Spearman(elpd, held-out score oriented so that higher is better) over models with
  both numbers, whether the first-ranked model's held-out error is within 10% of the best, and
  whether the comparison separates any models at all (if not, it says it cannot tell them apart);
- cost: wall and CPU seconds of the fits and of the comparison, with the machine's load
  (``os.getloadavg``) at the start and end: wall times on a shared machine are inflated by
  the load, CPU seconds much less so.

Writes JSON (default ``benchmarks/results/compare_TASK.json``) and prints a Markdown block for
``benchmarks/RESULTS_compare.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import heldout  # noqa: E402
import heldout_tasks as ht  # noqa: E402
from heldout_models import MODELS, Budget, svi_config  # noqa: E402

import semimech as sm  # noqa: E402
from semimech import evaluate as ev  # noqa: E402
from semimech.errors import DesignError, SemimechError  # noqa: E402
from semimech.evaluate.compare import reading  # noqa: E402
from semimech.models import REGISTRY  # noqa: E402

#: Cross-validation unit per task: the closest question the comparison design can ask.
UNITS = {"norman_doubles": "combination", "hepg2_combinations": "combinable", "sachs_loco": "perturbation"}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def comparison_design(task: str, folds, *, full: bool = False) -> sm.Design:
    """The design every model is fitted on for the comparison.

    Norman / HepG2: the held-out task's training design, or with ``full`` the whole table
    (training and held-out rows: cross-validation then asks the held-out question itself, over
    every combination, with refits; the held-out values come from separate fits of the training
    design). Sachs: every condition (its held-out task is itself leave-one-condition-out).
    """
    if task == "hepg2_combinations" and full:
        wide = ht._hepg2_frame()
        readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors")]
        wide["context"] = wide.cell_line + "|" + wide.stimuli
        wide["label"] = ht._context_labels(wide, "inhibitors", wide.context)
        wide.index = wide.context + "|" + wide.inhibitors
        return sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none",
                                    batch_key="context")
    if task == "norman_doubles" and full:
        from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel

        adata = norman19_devel()
        test_mask = adata.obs["perturbation"].isin(NORMAN19_COMBINABLE_DOUBLES).to_numpy()
        genes = ht.norman_genes(adata, ~test_mask)
        return sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control",
                                      genes=genes).pseudobulk()
    if task != "sachs_loco":
        return folds[0].train
    import anndata as ad

    from semimech.datasets import read_sachs2005

    raw = read_sachs2005()
    obs = raw.obs.assign(target=[ht.SACHS_LABELS[c] for c in raw.obs.condition])
    logged = ad.AnnData(X=np.log(raw.X), obs=obs, var=raw.var.copy())
    return sm.Design.from_anndata(logged, perturbation_key="target", control="cd3_cd28").pseudobulk()


def held_out_values(task_name: str, folds, fits: dict, *, path: str | None, steps: int, log,
                    same_design: bool = True) -> dict:
    """Held-out value per model, by the contract of ``benchmarks/heldout.py``.

    From its JSON when given; else, when the task has one fold whose training design is the
    comparison design (Norman, HepG2), from the comparison's own fits (the same fit predicts the
    held-out conditions); else (Sachs: one refit per held-out condition; ``--design full``: fits
    of the training design) one seed computed here, fitted as the comparison's fits.
    """
    if path:
        res = json.loads(pathlib.Path(path).read_text())
        return {name: (res["models"].get(f"{name}/default") or {}).get("value") for name in fits}
    task = ht.TASKS[task_name]
    truth, ref = heldout._stack(folds, "truth"), heldout._stack(folds, "reference")
    out = {}
    if len(folds) == 1 and task_name != "sachs_loco" and same_design:
        from heldout_models import NotApplicable, predict_labels

        for name, fit in fits.items():
            try:
                p = predict_labels(fit, folds[0], seed=0, seconds=0.0)
                out[name] = heldout.aggregate(task, truth, p.point, ref)
            except NotApplicable as err:
                log(f"  held-out: {name} cannot predict: {err}")
                out[name] = None
        return out
    budget = Budget(num_steps=steps, num_samples=200)
    for name in fits:
        cfg = f"{name}/svi (as compared)"  # fitted as the comparison's fits: sm.fit_svi, default guide
        if cfg not in MODELS:
            from heldout_models import register_model

            register_model(cfg)(svi_config(name))
        r = heldout.run_model(task, folds, cfg, seeds=[0], budget=budget, log=log)
        out[name] = r["value"]
    return out


def agreement(table, held: dict, *, higher_is_better: bool) -> dict:
    """Spearman(elpd, held-out score), first-ranked within 10% of the best held-out value, separation."""
    from scipy import stats

    ranked = table[table["rank"].notna()].set_index("model")
    names = [n for n in ranked.index if held.get(n) is not None]
    out = {"separates_any": bool(ranked["rank"].nunique() > 1), "n_ranked": int(len(ranked)),
           "n_with_held_out": len(names)}
    if len(names) < 2:
        return out
    value = np.array([held[n] for n in names], float)
    good = value if higher_is_better else -value                  # higher is better
    best = float(value[np.argmax(good)])
    if len(names) >= 3:
        out["spearman"] = float(stats.spearmanr(ranked.loc[names, "elpd_cv"].astype(float), good).statistic)
    cvs = table.attrs.get("cross_validations", {})
    l2 = {n: cvs[n].l2 for n in names if n in cvs and cvs[n].l2 is not None and np.isfinite(cvs[n].l2).all()}
    if len(l2) == len(names) >= 2:  # the contract's error, cross-validated: the same refits ranked by it
        from semimech.evaluate.compare import _ranks

        rank_l2, _, _ = _ranks({n: -v for n, v in l2.items()}, 2.0)
        first_l2 = [n for n in names if rank_l2[n] == 1]
        out["rank_l2"] = rank_l2
        out["first_ranked_l2"] = first_l2
        out["first_within_10pct_l2"] = bool(all((held[n] >= best - 0.1 * abs(best)) if higher_is_better
                                                else (held[n] <= 1.1 * best) for n in first_l2))
        if len(names) >= 3:
            out["spearman_cv_l2"] = float(stats.spearmanr([-l2[n].mean() for n in names], good).statistic)
    first = [n for n in names if ranked.loc[n, "rank"] == 1]
    within = [(held[n] >= best - 0.1 * abs(best)) if higher_is_better else (held[n] <= 1.1 * best) for n in first]
    out.update({"best_held_out_model": names[int(np.argmax(good))], "best_held_out": best, "first_ranked": first,
                "first_within_10pct": bool(all(within)) if first else None})
    return out


def run(task_name: str, *, unit: str | None, k: int | None, score: str = "means", steps: int, draws: int, refit_steps: int | None,
        heldout_json: str | None, heldout_steps: int, models, full: bool = False, log=print) -> dict:
    task = ht.TASKS[task_name]
    folds = task.build(quick=False)
    design = comparison_design(task_name, folds, full=full)
    unit = unit or UNITS[task_name]
    log(f"[{task_name}] comparison design {design}; unit {unit!r}; load {os.getloadavg()[0]:.1f}")
    result = {"task": task_name, "unit": unit, "score": score, "design_kind": "full" if full else "train", "design": repr(design), "metric": task.metric,
              "higher_is_better": task.higher_is_better, "load_start": os.getloadavg()[0]}
    t0, c0 = time.time(), cpu_seconds()
    fits, fit_notes = {}, {}
    for name in models:
        try:
            fits[name] = sm.fit_svi(REGISTRY[name], design, rng_key=0, num_steps=steps, num_samples=draws,
                                    progress_bar=False)
        except SemimechError as err:
            fit_notes[name] = str(err)
        log(f"  fitted {name} ({time.time() - t0:.0f}s)")
    result["fit_wall_s"], result["fit_cpu_s"] = time.time() - t0, cpu_seconds() - c0
    t1, c1 = time.time(), cpu_seconds()
    try:
        table = ev.compare(fits, unit=unit, k=k, score=score, num_steps=refit_steps)
        result["cannot_rank"] = None
    except DesignError as err:
        table, result["cannot_rank"] = None, str(err)
        log(f"  the comparison cannot ask this question: {err}")
    result["compare_wall_s"], result["compare_cpu_s"] = time.time() - t1, cpu_seconds() - c1
    result["load_end"] = os.getloadavg()[0]
    held = held_out_values(task_name, folds, fits, path=heldout_json, steps=heldout_steps, log=log,
                           same_design=not full)
    result["held_out"] = held
    if table is not None:
        cols = ["model", "rank", "tied_with", "below", "elpd_cv", "se", "elpd_diff", "dse", "weight", "p_cv",
                "left_out", "n_refits", "cv_coverage_90", "cv_calibration", "cv_l2", "loo_rows_status", "steady_state", "note"]
        result["table"] = json.loads(table[cols].to_json(orient="records"))
        result["agreement"] = agreement(table, held, higher_is_better=task.higher_is_better)
        log(table[[c for c in cols if c not in ("left_out", "cv_calibration", "below")]][:15].to_string(index=False))
        log(reading(table))
    result["fit_notes"] = fit_notes
    result["config"] = {"steps": steps, "draws": draws, "refit_steps": refit_steps, "k": k,
                        "heldout_steps": heldout_steps, "heldout_json": heldout_json, "semimech": sm.__version__,
                        "python": platform.python_version(), "cpus": os.cpu_count()}
    return result


def markdown(r: dict) -> str:
    lines = [f"### {r['task']} (unit: {r['unit']}, comparison design: {r.get('design_kind', 'train')}, "
             f"score: {r.get('score', 'cells')})", "",
             f"fits {r['fit_wall_s']:.0f} s wall / {r['fit_cpu_s']:.0f} s CPU; comparison {r['compare_wall_s']:.0f} s wall "
             f"/ {r['compare_cpu_s']:.0f} s CPU; load {r['load_start']:.1f} -> {r['load_end']:.1f} on {r['config']['cpus']} cores", ""]
    if r.get("cannot_rank"):
        lines += [f"**Cannot rank**: {r['cannot_rank']}", ""]
    if "table" in r:
        lines += ["| model | rank | elpd_cv | se | dse | cov90 | cv L2 | held-out |", "|---|---|---|---|---|---|---|---|"]
        for row in r["table"]:
            h = r["held_out"].get(row["model"])

            def f(x, p=1):
                return "-" if x is None else f"{x:.{p}f}"

            lines.append(f"| {row['model']} | {row['rank'] or '-'} | {f(row['elpd_cv'])} | {f(row['se'])} | "
                         f"{f(row['dse'])} | {f(row['cv_coverage_90'], 2)} | {f(row.get('cv_l2'), 3)} | {f(h, 3)} |")
        a = r["agreement"]
        lines += ["", f"agreement: {json.dumps(a)}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(UNITS))
    ap.add_argument("--unit", default=None)
    ap.add_argument("--design", choices=("train", "full"), default="train",
                    help="fit the comparison on the task's training design (default) or on all its rows")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--score", choices=("means", "cells"), default="means",
                    help="what a held-out unit is scored on (semimech.evaluate.cross_validate)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--refit-steps", type=int, default=None)
    ap.add_argument("--heldout-json", default=None)
    ap.add_argument("--heldout-steps", type=int, default=None, help="default: --steps")
    ap.add_argument("--models", nargs="*", default=list(REGISTRY))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    r = run(args.task, unit=args.unit, k=args.k, score=args.score, steps=args.steps, draws=args.draws, refit_steps=args.refit_steps,
            heldout_json=args.heldout_json, heldout_steps=args.heldout_steps or args.steps, models=args.models,
            full=args.design == "full")
    stem = f"compare_{args.task}" + ("_full" if args.design == "full" else "") + f"_{args.score}"
    out = pathlib.Path(args.json or pathlib.Path(__file__).resolve().parent / "results" / f"{stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(heldout._finite(r), indent=1, default=str))
    print(markdown(r))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
