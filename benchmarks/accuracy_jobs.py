"""Run the full accuracy benchmark as many small single-threaded jobs in parallel, then merge.

One job is one (task, fold, model) with every seed: ``benchmarks/accuracy.py --tasks T --folds F
--models M``, writing ``PARTS/T__F__M.json``. Jobs run longest-first in ``--jobs`` parallel
processes, each limited to one CPU thread (on a many-core machine this is several times faster
than one multi-threaded process: the fits are small and compile-bound). Jobs whose part already
exists are skipped, so a run cut off by a deadline is resumed by running the command again
(possibly on another machine, with the parts copied over). ``--merge-only`` merges what exists.

    python benchmarks/accuracy_jobs.py --jobs 14 --parts benchmarks/results/accuracy_parts
    python benchmarks/accuracy_jobs.py --merge-only --parts benchmarks/results/accuracy_parts

Gene subsets: Norman and McFaline are fitted on their ``--max-genes`` most variable genes (100 by
default: the steady-state models' dense solves at 500 genes x 3,000 steps are out of this
benchmark's budget, see RESULTS_accuracy.md); the other tasks have 11-40 readouts and keep them all.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: Relative cost of one fit, for longest-first ordering (measured order of magnitude).
MODEL_COST = {"production_decay": 8.0, "linear_steady_state": 3.0, "latent_programs": 2.0, "additive": 1.0}
TASK_COST = {"norman_doubles": 4.0, "mcfaline_transfer": 4.0, "papalexi_loto": 2.0, "hepg2_combinations": 2.0,
             "sachs_loco": 1.0}
SUBSET_TASKS = ("norman_doubles", "mcfaline_transfer")


def fold_names(task: str, max_genes: int) -> list[str]:
    from accuracy_tasks import TASKS

    return [f.name for f in TASKS[task](max_genes=max_genes if task in SUBSET_TASKS else None, quick=False)]


def part_path(parts: pathlib.Path, task: str, fold: str, model: str) -> pathlib.Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in fold)
    return parts / f"{task}__{safe}__{model}.json"


def one_thread_env() -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    return env


def main(argv=None) -> int:
    from semimech.models import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=str(HERE / "results" / "accuracy_parts"))
    ap.add_argument("--out", default=str(HERE / "results" / "accuracy.json"))
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--max-genes", type=int, default=100, help="genes for Norman and McFaline")
    ap.add_argument("--deadline", type=float, default=None, help="seconds: start no job after this")
    ap.add_argument("--merge-only", action="store_true")
    ap.add_argument("--list", action="store_true", help="print the jobs and exit")
    args = ap.parse_args(argv)
    from accuracy import merge
    from accuracy_tasks import TASKS

    parts = pathlib.Path(args.parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not args.merge_only:
        models = args.models or [m for m in REGISTRY if m != "guide_assignment"]
        jobs = []
        for task in args.tasks or list(TASKS):
            for fold in fold_names(task, args.max_genes):
                for m in models:
                    jobs.append((TASK_COST.get(task, 1.0) * MODEL_COST.get(m, 1.0), task, fold, m))
        jobs.sort(key=lambda j: -j[0])
        todo = [j for j in jobs if not part_path(parts, j[1], j[2], j[3]).exists()]
        print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} done, {len(todo)} to run on {args.jobs} processes")
        if args.list:
            for j in todo:
                print(f"  {j[1]:20s} {j[2]:20s} {j[3]}")
            return 0
        t0 = time.time()
        env = one_thread_env()

        def launch(job):
            _, task, fold, m = job
            if args.deadline is not None and time.time() - t0 > args.deadline:
                return job, None, 0.0
            out = part_path(parts, task, fold, m)
            cmd = [sys.executable, str(HERE / "accuracy.py"), "--tasks", task, "--folds", fold, "--models", m,
                   "--seeds", str(args.seeds), "--steps", str(args.steps), "--out", str(out.with_suffix(".tmp"))]
            if task in SUBSET_TASKS:
                cmd += ["--max-genes", str(args.max_genes)]
            ts = time.time()
            log = out.with_suffix(".log")
            with open(log, "w") as fh:
                rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
            if rc == 0:
                out.with_suffix(".tmp").rename(out)
            return job, rc, time.time() - ts

        with cf.ThreadPoolExecutor(args.jobs) as pool:
            for fut in cf.as_completed([pool.submit(launch, j) for j in todo]):
                job, rc, dt = fut.result()
                status = "skipped (deadline)" if rc is None else ("ok" if rc == 0 else f"FAILED rc={rc}")
                print(f"[{time.time() - t0:6.0f}s] {job[1]} / {job[2]} / {job[3]}: {status} in {dt:.0f}s", flush=True)
    done = sorted(parts.glob("*.json"))
    if not done:
        print("no parts to merge")
        return 1
    return merge([str(p) for p in done], args.out)


if __name__ == "__main__":
    raise SystemExit(main())
