"""SVI throughput and peak memory on simulated screens at genome-wide proportions.

Each size runs in a fresh process (so peak RSS belongs to that size alone): simulate a screen
(``semimech.simulate.simulate_screen``, ~9% non-zeros), build the Design, then stream
minibatch SVI over it (``semimech.infer.stream``) for the requested epochs. Reported:

- ``cells_per_s``: batch_size / steady-state step time (after compilation); on a shared
  machine also read ``steady_step_cpu_s`` (process CPU seconds per step, all threads);
- ``epoch_s``: wall time of one epoch including the first (compiling) step;
- ``peak_rss_gb``: the process's peak resident memory (``ru_maxrss``), simulation included
  unless ``--h5ad`` (then the simulation runs in its own process and each fit reads the file);
  ``train_rss_gb``: resident memory growth during training alone.

Usage::

    python benchmarks/scale.py                        # 10^4 cells (default, ~1 min)
    python benchmarks/scale.py --cells 1e4 1e5 1e6    # the full table (~20 min on 2 cores)
    python benchmarks/scale.py --model additive --dense   # dense NB log-likelihood for contrast
    python benchmarks/scale.py --cells 1e6 --reference    # and a hand-written NumPyro fit, same run
    python benchmarks/scale.py --cells 1e6 --reference --h5ad /tmp/screens   # fits read the screen from disk

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


def _h5ad_path(directory, n_cells: int, n_genes: int, n_targets: int, n_batches: int, seed: int) -> Path:
    return Path(directory) / f"screen_{n_cells}x{n_genes}_t{n_targets}_b{n_batches}_s{seed}.h5ad"


def _simulate(out: dict, n_cells: int, n_genes: int, n_targets: int, n_batches: int, seed: int, h5ad=None):
    """The simulated screen (the same for both fits of a size), its time and density recorded in ``out``.

    With ``h5ad`` (a folder), the screen is read from the file :func:`main` wrote there in a separate
    process, as a user reads their data: the process's peak memory is then the fit's, not the simulation's.
    """
    t = time.perf_counter()
    if h5ad is not None:
        import anndata as ad

        adata = ad.read_h5ad(_h5ad_path(h5ad, n_cells, n_genes, n_targets, n_batches, seed))
        out["simulate_s"], out["read_s"] = None, time.perf_counter() - t
        out["nnz_fraction"] = adata.X.nnz / (n_cells * n_genes)
        return adata
    from semimech.simulate import simulate_screen

    adata, _ = simulate_screen(n_cells=n_cells, n_genes=n_genes, n_targets=n_targets, n_batches=n_batches,
                               rng_key=seed)
    out["simulate_s"] = time.perf_counter() - t
    out["nnz_fraction"] = adata.X.nnz / (n_cells * n_genes)
    return adata


def run_one(n_cells: int, *, n_genes: int, n_targets: int, n_batches: int, batch_size: int, epochs: float,
            model: str, dense: bool, seed: int, h5ad=None) -> dict:
    import jax

    import semimech as sm
    from semimech.infer.stream import _num_steps, _setup, _train
    from semimech.models import REGISTRY

    spec = REGISTRY[model]
    out = {"model": model, "n_cells": n_cells, "n_genes": n_genes, "n_targets": n_targets, "n_batches": n_batches,
           "batch_size": batch_size, "epochs": epochs, "loglik": "dense" if dense else "sparse",
           "device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "dtype": "float32",
           "load_avg_start": os.getloadavg()[0]}
    adata = _simulate(out, n_cells, n_genes, n_targets, n_batches, seed, h5ad)
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


def run_reference(n_cells: int, *, n_genes: int, n_targets: int, n_batches: int, batch_size: int, epochs: float,
                  seed: int, h5ad=None, **_) -> dict:
    """The same screen fitted by a hand-written NumPyro program: issue 14's reference.

    The additive negative-binomial model written directly (per-gene baseline, one effect per
    target and gene, batch offsets, per-gene concentration, log library size as offset), the
    sparse log-likelihood by hand (``lgamma`` and the ``y`` terms on the non-zeros only, padded to
    a fixed capacity so one shape is compiled), ``AutoNormal``, Adam, minibatches sliced from the
    CSR matrix on the host between steps. Nothing of semimech is used after the simulation.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import scipy.sparse as sps
    from jax.scipy.special import gammaln
    from numpyro.infer import SVI, Trace_ELBO, autoguide


    out = {"model": "hand-written NumPyro additive NB", "n_cells": n_cells, "n_genes": n_genes,
           "n_targets": n_targets, "n_batches": n_batches, "batch_size": batch_size, "epochs": epochs,
           "loglik": "sparse", "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
           "dtype": "float32", "load_avg_start": os.getloadavg()[0]}
    adata = _simulate(out, n_cells, n_genes, n_targets, n_batches, seed, h5ad)
    t = time.perf_counter()
    y = sps.csr_matrix(adata.X, dtype=np.float32)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    targets = sorted({p for lab in set(labels) if lab != "control" for p in lab.split("+")})
    col = {t: i for i, t in enumerate(targets)}
    r_i, c_i = zip(*[(i, col[p]) for i, lab in enumerate(labels) if lab != "control" for p in lab.split("+")])
    tmat = sps.csr_matrix((np.ones(len(r_i), np.float32), (r_i, c_i)), shape=(n_cells, len(targets)))
    bcodes, bidx = np.unique(adata.obs["batch"].astype(str).to_numpy(), return_inverse=True) \
        if "batch" in adata.obs else (np.array(["b"]), np.zeros(n_cells, int))
    bidx = bidx.astype(np.int32)
    loglib = np.log(np.maximum(np.asarray(y.sum(1)).ravel(), 1.0)).astype(np.float32)
    del adata
    gc.collect()
    out["design_s"] = time.perf_counter() - t
    out["rss_before_train_gb"] = _rss_gb()
    n_t, n_b = len(targets), len(bcodes)

    def model(vals, rws, cls, tm, bi, ll, n_total):
        base = numpyro.sample("baseline", dist.Normal(0.0, 5.0).expand([n_genes]).to_event(1))
        eff = numpyro.sample("effect", dist.Normal(0.0, 1.0).expand([n_t, n_genes]).to_event(2))
        boff = numpyro.sample("batch_offset", dist.Normal(0.0, 0.5).expand([n_b, n_genes]).to_event(2))
        log_r = numpyro.sample("log_concentration", dist.Normal(2.0, 2.0).expand([n_genes]).to_event(1))
        eta = base + tm @ eff + boff[bi] + ll[:, None]  # (cells, genes) log mean
        r = jnp.exp(log_r)
        log_r_mu = jnp.logaddexp(log_r, eta)  # log(r + mu)
        dense = jnp.sum(r * (log_r - log_r_mu))  # every entry's r log(r / (r + mu)); y = 0 adds nothing else
        e, rr = eta[rws, cls], r[cls]
        nz = jnp.sum(vals * (e - log_r_mu[rws, cls]) + gammaln(vals + rr) - gammaln(rr) - gammaln(vals + 1.0))
        numpyro.factor("loglik", (dense + nz) * (n_total / tm.shape[0]))  # padding: vals 0 adds exactly 0

    guide = autoguide.AutoNormal(model, init_scale=0.05)
    svi = SVI(model, guide, numpyro.optim.Adam(0.02), Trace_ELBO())
    rng = np.random.default_rng(seed)
    per_epoch = n_cells // batch_size
    steps = max(1, int(round(epochs * per_epoch)))
    capacity = 0

    def batch(idx):
        nonlocal capacity
        sub = y[idx]
        if sub.nnz > capacity:
            capacity = -(-int(sub.nnz * 1.15) // 256) * 256
        vals = np.zeros(capacity, np.float32)
        rws = np.zeros(capacity, np.int32)
        cls = np.zeros(capacity, np.int32)
        vals[:sub.nnz] = sub.data
        cls[:sub.nnz] = sub.indices
        rws[:sub.nnz] = np.repeat(np.arange(len(idx), dtype=np.int32), np.diff(sub.indptr))
        return vals, rws, cls, tmat[idx].toarray(), bidx[idx], loglib[idx]

    def batches():
        while True:
            perm = rng.permutation(n_cells)
            for start in range(0, n_cells - batch_size + 1, batch_size):
                yield np.sort(perm[start:start + batch_size])

    it = batches()
    t0 = time.perf_counter()
    b = batch(next(it))
    state = svi.init(jax.random.PRNGKey(seed), *b, n_cells)
    step = jax.jit(lambda st, *a: svi.update(st, *a, n_cells))
    t_init = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        state, loss = step(state, *b)
        if i == 0:
            loss.block_until_ready()
            t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
        if i + 1 < steps:
            b = batch(next(it))
    loss = float(loss)
    t_total, c_total = time.perf_counter() - t0, time.process_time() - c0
    out["train_total_s"] = t_init + t_total
    out["train_rss_gb"] = _rss_gb() - out["rss_before_train_gb"]
    steady = (t_total - t_first) / max(steps - 1, 1)
    out.update({
        "steps": steps, "steps_per_epoch": per_epoch, "init_s": t_init, "first_step_s": t_first,
        "steady_step_s": steady, "steady_step_cpu_s": (c_total - c_first) / max(steps - 1, 1),
        "cells_per_s": batch_size / steady, "epoch_s": t_first + (per_epoch - 1) * steady,
        "final_loss": loss, "capacity": capacity, "shapes_compiled": None,
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
    p.add_argument("--reference", action="store_true",
                   help="after each size, fit the same screen with a hand-written NumPyro program (fresh process): "
                        "issue 14's reference, so the two are timed in the same run")
    p.add_argument("--h5ad", metavar="DIR",
                   help="simulate each size once into DIR/screen_*.h5ad (a separate process; reused if present) and "
                        "have every fit read it, as a user reads their data: peak RSS is then the fit's alone")
    p.add_argument("--simulate-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)
    p.add_argument("--impl", default="semimech", choices=["semimech", "reference"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    kw = dict(n_genes=a.genes, n_targets=a.targets, n_batches=a.batches, epochs=a.epochs, model=a.model,
              dense=a.dense, seed=a.seed, h5ad=a.h5ad)
    if a.simulate_only:
        from semimech.simulate import simulate_screen

        n = int(a.one)
        path = _h5ad_path(a.h5ad, n, a.genes, a.targets, a.batches, a.seed)
        adata, _ = simulate_screen(n_cells=n, n_genes=a.genes, n_targets=a.targets, n_batches=a.batches,
                                   rng_key=a.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)  # a cut-short write never leaves a file that looks complete
        return
    if a.one is not None:
        n = int(a.one)
        run = run_one if a.impl == "semimech" else run_reference
        print("JSON" + json.dumps({"impl": a.impl, **run(n, batch_size=min(a.batch_size, n), **kw)}), flush=True)
        return
    rows = []
    jobs = [(n, impl) for n in a.cells for impl in (("semimech", "reference") if a.reference else ("semimech",))]
    for n, impl in jobs:
        cmd = [sys.executable, __file__, "--one", str(n), "--genes", str(a.genes), "--targets", str(a.targets),
               "--batches", str(a.batches), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs),
               "--model", a.model, "--seed", str(a.seed), "--impl", impl] + (["--dense"] if a.dense else [])
        if a.h5ad:
            cmd += ["--h5ad", a.h5ad]
            if not _h5ad_path(a.h5ad, int(n), a.genes, a.targets, a.batches, a.seed).exists():
                subprocess.run(cmd + ["--simulate-only"], check=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")]
        if proc.returncode != 0 or not line:
            rows.append({"impl": impl, "n_cells": int(n), "error": proc.stderr[-2000:]})
            print(f"{int(n):>9} cells: FAILED\n{proc.stderr[-2000:]}", flush=True)
            _write(a.out, rows)
            continue
        rows.append(json.loads(line[0][4:]))
        r = rows[-1]
        print(f"{r['impl']:>9}  {r['n_cells']:>9,} cells x {r['n_genes']} genes  {r['loglik']:>6}  nnz {r['nnz_fraction']:.3f}  "
              f"{r['cells_per_s']:>9,.0f} cells/s (cpu {r['steady_step_cpu_s']:.2f} s/step)  epoch {r['epoch_s']:>7.1f} s  peak {r['peak_rss_gb']:.2f} GB  "
              f"({'read' if r['simulate_s'] is None else 'sim'} {r['read_s'] if r['simulate_s'] is None else r['simulate_s']:.0f} s, "
              f"design {r['design_s']:.0f} s, load {r['load_avg_start']:.1f})",
              flush=True)
        _write(a.out, rows)  # after every size, so a cut-short run keeps what it measured
    for n in a.cells if a.reference else []:
        by = {r["impl"]: r for r in rows if r.get("n_cells") == int(n) and "error" not in r}
        if len(by) == 2:
            sm_, ref = by["semimech"], by["reference"]
            print(f"{int(n):>9,} cells: semimech / hand-written epoch {sm_['epoch_s'] / ref['epoch_s']:.2f} (wall), "
                  f"CPU per step {sm_['steady_step_cpu_s'] / ref['steady_step_cpu_s']:.2f}, "
                  f"peak RSS {sm_['peak_rss_gb']:.2f} vs {ref['peak_rss_gb']:.2f} GB", flush=True)
    print(f"wrote {a.out}")


def _write(path, rows):
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
