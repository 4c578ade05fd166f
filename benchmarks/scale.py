"""SVI throughput and peak memory on simulated screens at genome-wide proportions.

Each size runs in a fresh process (so peak RSS belongs to that size alone): simulate a screen
(``semimech.simulate.simulate_screen``, ~9% non-zeros), build the Design, then stream
minibatch SVI over it (``semimech.infer.stream``) for the requested epochs. Reported:

- ``cells_per_s``: batch_size / steady-state step time (after compilation); on a shared
  machine also read ``steady_step_cpu_s`` (process CPU seconds per step, all threads);
- ``epoch_s``: wall time of one epoch including the first (compiling) step;
- ``peak_rss_gb``: the process's peak resident memory (``ru_maxrss``), simulation included;
  ``train_rss_gb``: resident memory growth during training alone.

Usage::

    python benchmarks/scale.py                        # 10^4 cells (default, ~1 min)
    python benchmarks/scale.py --cells 1e4 1e5 1e6    # the full table (~20 min on 2 cores)
    python benchmarks/scale.py --model additive --dense   # dense NB log-likelihood for contrast

Writes ``benchmarks/results/scale.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def run_one(n_cells: int, *, n_genes: int, n_targets: int, n_batches: int, batch_size: int, epochs: float,
            model: str, dense: bool, seed: int) -> dict:
    import jax

    import semimech as sm
    from semimech.infer.stream import _num_steps, _setup, _train
    from semimech.models import REGISTRY
    from semimech.simulate import simulate_screen

    spec = REGISTRY[model]
    out = {"model": model, "n_cells": n_cells, "n_genes": n_genes, "n_targets": n_targets, "n_batches": n_batches,
           "batch_size": batch_size, "epochs": epochs, "loglik": "dense" if dense else "sparse",
           "device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "dtype": "float32",
           "load_avg_start": os.getloadavg()[0]}
    t = time.perf_counter()
    adata, _ = simulate_screen(n_cells=n_cells, n_genes=n_genes, n_targets=n_targets, n_batches=n_batches,
                               rng_key=seed)
    out["simulate_s"] = time.perf_counter() - t
    out["nnz_fraction"] = adata.X.nnz / (n_cells * n_genes)
    t = time.perf_counter()
    design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control",
                                    batch_key="batch" if n_batches > 1 else None)
    del adata
    gc.collect()
    out["design_s"] = time.perf_counter() - t
    out["rss_before_train_gb"] = _rss_gb()
    t = time.perf_counter()
    stream = _setup(spec, design, batch_size=batch_size, options={"likelihood": "negbin"}, sparse=not dense,
                    n_blocks=1)
    steps = _num_steps(stream, epochs, None)
    _, losses, _, timings = _train(stream, jax.random.PRNGKey(seed), steps)
    out["train_total_s"] = time.perf_counter() - t
    out["train_rss_gb"] = _rss_gb() - out["rss_before_train_gb"]
    per_epoch = n_cells // batch_size
    out.update({
        "steps": steps, "steps_per_epoch": per_epoch, "init_s": timings["init_s"],
        "first_step_s": timings["first_step_s"], "steady_step_s": timings["steady_step_s"],
        "steady_step_cpu_s": timings["steady_step_cpu_s"],
        "cells_per_s": batch_size / timings["steady_step_s"],
        "epoch_s": timings["first_step_s"] + (per_epoch - 1) * timings["steady_step_s"],
        "final_loss": float(losses[-1]), "capacity": timings["capacity"],
        "shapes_compiled": timings["shapes_compiled"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "load_avg_end": os.getloadavg()[0],
    })
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", type=float, default=[1e4])
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--targets", type=int, default=500)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--model", default="additive", help="a name in semimech.models.REGISTRY")
    p.add_argument("--dense", action="store_true", help="dense NB log-likelihood (lgamma on every entry)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    kw = dict(n_genes=a.genes, n_targets=a.targets, n_batches=a.batches, epochs=a.epochs, model=a.model,
              dense=a.dense, seed=a.seed)
    if a.one is not None:
        n = int(a.one)
        print("JSON" + json.dumps(run_one(n, batch_size=min(a.batch_size, n), **kw)), flush=True)
        return
    rows = []
    for n in a.cells:
        cmd = [sys.executable, __file__, "--one", str(n), "--genes", str(a.genes), "--targets", str(a.targets),
               "--batches", str(a.batches), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs),
               "--model", a.model, "--seed", str(a.seed)] + (["--dense"] if a.dense else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")]
        if proc.returncode != 0 or not line:
            rows.append({"n_cells": int(n), "error": proc.stderr[-2000:]})
            print(f"{int(n):>9} cells: FAILED\n{proc.stderr[-2000:]}", flush=True)
            _write(a.out, rows)
            continue
        rows.append(json.loads(line[0][4:]))
        r = rows[-1]
        print(f"{r['n_cells']:>9,} cells x {r['n_genes']} genes  {r['loglik']:>6}  nnz {r['nnz_fraction']:.3f}  "
              f"{r['cells_per_s']:>9,.0f} cells/s (cpu {r['steady_step_cpu_s']:.2f} s/step)  epoch {r['epoch_s']:>7.1f} s  peak {r['peak_rss_gb']:.2f} GB  "
              f"(sim {r['simulate_s']:.0f} s, design {r['design_s']:.0f} s, load {r['load_avg_start']:.1f})",
              flush=True)
        _write(a.out, rows)  # after every size, so a cut-short run keeps what it measured
    print(f"wrote {a.out}")


def _write(path, rows):
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
