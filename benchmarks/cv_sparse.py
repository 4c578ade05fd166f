"""Cross-validating a count fit: sparse counts in the masked refits, against the dense path they took before.

    cd /tmp && OPENBLAS_NUM_THREADS=1 python <repo>/benchmarks/cv_sparse.py [--cells 6000] [--genes 500] [--json PATH]

Simulated negative-binomial counts (mean ~ Gamma(0.3) per gene, concentration 2; 17% non-zero), control,
three singles and two doubles in equal numbers of cells, as CSR. The additive model is fitted (300 SVI steps, 30
draws), then ``cross_validate(fit, unit="combination", k=2, num_steps=300)``. Each mode runs in its own fresh
process, one after the other: ``sparse`` (the package as it is: a fold's row mask reaches the sparse
negative binomial through ``SparseNegativeBinomial2.mask``) and ``dense`` (the old behaviour, forced by making
``accepts_sparse`` refuse masked data, so each refit observes the dense float32 matrix). Prints a table and writes JSON
(default ``benchmarks/results/cv_sparse.json``): wall seconds of the cross-validation, its elpd (equal up to float
rounding), peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path


def simulated_count_fit(n: int, g: int):
    """``(design, fit, non-zero fraction)``: the simulated CSR counts above and the additive model's fit
    (300 SVI steps, 30 draws); shared with ``cv_replicates.py``."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    import semimech as sm
    from semimech.models import additive

    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "C", "A+B", "B+C"], n // 6)
    mu = rng.gamma(0.3, 1.0, size=(1, g)) * np.ones((len(labels), 1))
    X = rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32)
    obs = pd.DataFrame({"p": labels}, index=[f"c{i}" for i in range(len(labels))])
    a = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    d = sm.Design.from_anndata(a, perturbation_key="p", control="control")
    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=300, num_samples=30, progress_bar=False)
    return d, fit, float((X > 0).mean())


def run(mode: str, n: int, g: int) -> dict:
    from semimech.evaluate import cross_validate
    from semimech.infer import _observed

    warnings.simplefilter("ignore")
    d, fit, nonzero = simulated_count_fit(n, g)
    if mode == "dense":
        orig = _observed.accepts_sparse
        _observed.accepts_sparse = lambda model, data, y, key=None: (
            False if data.get("row_mask") is not None else orig(model, data, y, key=key))
    t = time.perf_counter()
    cv = cross_validate(fit, unit="combination", k=2, num_steps=300)
    return {"mode": mode, "cells": int(d.n_obs), "genes": g, "nonzero_fraction": nonzero,
            "cv_seconds": time.perf_counter() - t, "elpd": float(cv.elpd.elpd),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def modes_in_fresh_processes(script: str, run_mode, modes: tuple[str, ...], *, cells: int, genes: int,
                             json_name: str):
    """The command line of ``script``: each of ``modes`` (or those of ``--modes``) run by ``run_mode(mode, cells,
    genes)`` in its own fresh process, one after the other. Returns ``(rows, args)``, or ``None`` in a child process
    (it printed its row). The rows and the machine's load are written to ``--json``."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=cells)
    ap.add_argument("--genes", type=int, default=genes)
    ap.add_argument("--json", default=str(Path(script).parent / "results" / json_name))
    ap.add_argument("--modes", nargs="+", choices=modes, default=list(modes), help="the modes to run (default: all)")
    ap.add_argument("--mode", choices=modes, help=argparse.SUPPRESS)  # one child process
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.cells, args.genes)))
        return None
    rows = []
    for mode in args.modes:
        out = subprocess.run([sys.executable, script, "--mode", mode, "--cells", str(args.cells), "--genes",
                              str(args.genes)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "load": os.getloadavg()}, indent=1))
    return rows, args


def main() -> None:
    got = modes_in_fresh_processes(__file__, run, ("sparse", "dense"), cells=6000, genes=500, json_name="cv_sparse.json")
    if got is None:
        return
    rows, args = got
    print("| refits observe | CV wall s | elpd | peak RSS MB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} counts | {r['cv_seconds']:.1f} | {r['elpd']:.2f} | {r['peak_rss_mb']:.0f} |")
    print(f"dense / sparse wall: {rows[1]['cv_seconds'] / rows[0]['cv_seconds']:.2f}x")


if __name__ == "__main__":
    main()
