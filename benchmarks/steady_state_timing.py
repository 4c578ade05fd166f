"""Timing of the steady-state models: seconds per SVI step and per NUTS sample at 20/100/500 genes.

Synthetic Gaussian pseudobulk designs: a control, ``min(genes, 20)`` single knockdowns of genes
and 5 doubles (the steady state is solved once per condition, vmapped; never per cell). Times
exclude compilation (reported separately): an SVI step is one jitted ``svi.update``; a NUTS
sample is one jitted ``NUTS.sample`` transition during warmup (its cost depends on the tree
depth reached, reported as mean leapfrog steps). The machine's load average is recorded: on a
shared machine the numbers are upper bounds.

    python benchmarks/steady_state_timing.py                     # all models, 20/100/500 genes
    python benchmarks/steady_state_timing.py --genes 20 --nuts-max-genes 100

Writes ``benchmarks/results/steady_state_timing.json``.
"""

from __future__ import annotations

import os
import sys

# OpenBLAS (used by JAX's CPU LU) spins its threads: on a loaded shared machine a batched LU
# ran ~7x slower with the default thread count than with one thread (measured). Set before
# numpy/jax load it; --blas-threads 0 keeps the library default.
_BLAS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--blas-threads"), "1")
if _BLAS != "0":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", _BLAS)

import argparse
import functools
import json
import pathlib
import platform
import subprocess
import time

import jax
import numpy as np
import optax
import pandas as pd
from numpyro.infer import NUTS, SVI, Trace_ELBO, autoguide, init_to_median

import semimech as sm
from semimech.models import REGISTRY

OUT = pathlib.Path(__file__).resolve().parent / "results"


def design(n_genes: int, *, seed: int = 0, cells: int = 20) -> sm.Design:
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    singles = genes[: min(n_genes, 20)]
    doubles = [f"{singles[i]}+{singles[i + 1]}" for i in range(0, min(10, len(singles) - 1), 2)]
    labels = np.repeat(["control"] + singles + doubles, cells)
    y = rng.normal(2.0, 0.3, (len(labels), n_genes))
    for i, g in enumerate(singles):
        y[np.char.find(labels.astype(str), g) >= 0, i] -= 0.8
    frame = pd.DataFrame(y, columns=genes)
    frame["perturbation"] = labels
    return sm.Design.from_frame(frame, readouts=genes, perturbation_key="perturbation",
                                control="control").pseudobulk()


def _block(x):
    return jax.block_until_ready(x)


def time_svi(model, data, y, *, steps: int = 20, init_samples: int = 15):
    guide = autoguide.AutoNormal(model, init_loc_fn=init_to_median(num_samples=init_samples), init_scale=0.05)
    svi = SVI(model, guide, optax.adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), data, y=y)
    update = jax.jit(lambda s: svi.update(s, data, y=y))
    t0 = time.perf_counter()
    state, loss = _block(update(state))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, loss = update(state)
    _block(loss)
    return (time.perf_counter() - t0) / steps, compile_s


def time_nuts(model, data, y, *, samples: int = 10, max_tree_depth: int = 6, init_samples: int = 15):
    kernel = NUTS(model, max_tree_depth=max_tree_depth, init_strategy=init_to_median(num_samples=init_samples))
    state = kernel.init(jax.random.PRNGKey(0), 1000, None, (data,), {"y": y})
    step = jax.jit(lambda s: kernel.sample(s, (data,), {"y": y}))
    t0 = time.perf_counter()
    state = _block(step(state))
    compile_s = time.perf_counter() - t0
    n_leap = []
    t0 = time.perf_counter()
    for _ in range(samples):
        state = step(state)
        n_leap.append(int(state.num_steps))
    _block(state.z)
    return (time.perf_counter() - t0) / samples, compile_s, float(np.mean(n_leap))


def _write(rows, name: str = "steady_state_timing.json") -> None:
    OUT.mkdir(exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=OUT.parent).stdout.strip()
    except OSError:
        commit = None
    (OUT / name).write_text(json.dumps(
        {"machine": platform.platform(), "cpu_count": os.cpu_count(), "commit": commit,
         "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "rows": rows}, indent=1, default=float))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["additive", "linear_steady_state", "production_decay",
                                                   "latent_programs"])
    p.add_argument("--genes", nargs="+", type=int, default=[20, 100, 500])
    p.add_argument("--nuts-max-genes", type=int, default=100, help="skip NUTS above this many genes")
    p.add_argument("--svi-steps", type=int, default=20)
    p.add_argument("--nuts-samples", type=int, default=10)
    p.add_argument("--blas-threads", default="1", help="OPENBLAS_NUM_THREADS (0: library default); read at start-up")
    p.add_argument("--init-samples", type=int, default=15,
                   help="init_to_median samples (15, as fit_svi/fit_nuts; the first runs used 5, whose heavy-tailed "
                        "horseshoe medians at 500 genes gave dynamics where most solves fail)")
    p.add_argument("--out", default="steady_state_timing.json", help="file name under benchmarks/results")
    a = p.parse_args(argv)
    rows = []
    for g in a.genes:
        d = design(g)
        data, y = d.model_data(), np.asarray(d.dense_y(), np.float32)
        for name in a.models:
            spec = REGISTRY[name]
            model = functools.partial(spec.model, **{**spec.default_options, "likelihood": "normal"})
            row = {"model": name, "genes": g, "conditions": len(d.perturbations), "load_avg_1min": os.getloadavg()[0],
                   "init_samples": a.init_samples}
            try:
                row["svi_step_s"], row["svi_compile_s"] = time_svi(model, data, y, steps=a.svi_steps,
                                                                   init_samples=a.init_samples)
            except Exception as err:  # report, keep going
                row["svi_error"] = f"{type(err).__name__}: {str(err)[:120]}"
            if g <= a.nuts_max_genes:
                try:
                    row["nuts_sample_s"], row["nuts_compile_s"], row["nuts_leapfrog"] = time_nuts(
                        model, data, y, samples=a.nuts_samples, init_samples=a.init_samples)
                except Exception as err:
                    row["nuts_error"] = f"{type(err).__name__}: {str(err)[:120]}"
            else:
                row["nuts_note"] = f"skipped (> {a.nuts_max_genes} genes)"
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            _write(rows, a.out)  # after every row: a long run keeps what it measured
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {OUT / a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
