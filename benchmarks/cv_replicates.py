"""Cross-validating a cell-level count fit: held-out rows' replicates drawn for those rows alone, against drawing them
for every row of the design and slicing (the path before).

    cd /tmp && OPENBLAS_NUM_THREADS=1 python <repo>/benchmarks/cv_replicates.py [--cells 3000] [--genes 300] [--json PATH]

Simulated negative-binomial counts as in ``benchmarks/cv_sparse.py`` (control, three singles and two doubles in
equal numbers of cells, CSR). The additive model is fitted (300 SVI steps, 30 draws), then
``cross_validate(fit, unit="combination", k=2, num_steps=300)``: two refits, each fold's held-out cells (a sixth of
the design) get replicate draws for their PIT, CRPS and predictive sd. Each mode runs in its own fresh process, one
after the other: ``subset`` (the package as it is: ``RowEngine.replicates`` runs the model on the held-out rows'
per-row data, padded to a shared size) and ``whole`` (the old behaviour, forced by making the engine treat the
per-row data as unknown, so replicates are drawn for every row and sliced). Prints a table and writes JSON (default
``benchmarks/results/cv_replicates.json``): wall seconds of the cross-validation and of its replicate draws, the
elpd (the same in both: replicates do not enter it) and the mean over held-out units of their CRPS (``cv.crps``:
equal up to Monte Carlo error, the draws differ).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path


def run(mode: str, n: int, g: int) -> dict:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    import semimech as sm
    from semimech.evaluate import _pointwise, cross_validate
    from semimech.models import additive

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "C", "A+B", "B+C"], n // 6)
    mu = rng.gamma(0.3, 1.0, size=(1, g)) * np.ones((len(labels), 1))
    X = rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32)
    obs = pd.DataFrame({"p": labels}, index=[f"c{i}" for i in range(len(labels))])
    a = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    d = sm.Design.from_anndata(a, perturbation_key="p", control="control")
    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=300, num_samples=30, progress_bar=False)
    if mode == "whole":
        _pointwise._row_keys = lambda design, data: None
    spent = [0.0]
    real = _pointwise.RowEngine.replicates

    def timed(self, *args, **kw):
        t0 = time.perf_counter()
        out = real(self, *args, **kw)
        spent[0] += time.perf_counter() - t0
        return out

    _pointwise.RowEngine.replicates = timed
    t = time.perf_counter()
    cv = cross_validate(fit, unit="combination", k=2, num_steps=300)
    return {"mode": mode, "cells": int(d.n_obs), "genes": g, "cv_seconds": time.perf_counter() - t,
            "replicate_seconds": spent[0], "elpd": float(cv.elpd.elpd),
            "mean_crps": float(np.nanmean(np.asarray(cv.crps, dtype=float)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=3000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "cv_replicates.json"))
    ap.add_argument("--mode", choices=("subset", "whole"), help=argparse.SUPPRESS)  # one child process
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.cells, args.genes)))
        return
    rows = []
    for mode in ("subset", "whole"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--cells", str(args.cells), "--genes",
                              str(args.genes)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| held-out replicates drawn for | CV wall s | of which replicates s | elpd | mean CRPS |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} rows | {r['cv_seconds']:.1f} | {r['replicate_seconds']:.1f} | {r['elpd']:.2f} | "
              f"{r['mean_crps']:.4f} |")
    print(f"whole / subset, CV wall: {rows[1]['cv_seconds'] / rows[0]['cv_seconds']:.2f}x; replicates: "
          f"{rows[1]['replicate_seconds'] / rows[0]['replicate_seconds']:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
