"""Peak memory of building a large count Design (issue 14, item 4: counts kept compact).

A simulated screen (``--cells`` x ``--genes`` CSR counts, ``--density`` non-zero, float32 as
scanpy stores raw counts, or int64 with ``--int``) is turned into a :class:`semimech.Design`
(``Design.from_anndata``), then into what ``fit_svi`` gives a negative binomial model
(``semimech.infer._observed.sparse_counts``), then a pseudobulk. Each stage runs in a fresh
process so that its peak resident memory (``ru_maxrss``) is its own; the package is imported
from the current tree and, with ``--before PATH``, from another tree (e.g. an export of an
older commit, with ``models`` linked as ``semimech/models``), one after the other in the same run.

    python benchmarks/design_memory.py --cells 300000 --genes 2000 --density 0.08
    python benchmarks/design_memory.py --before /tmp/semimech_before

Prints a table and writes ``benchmarks/results/design_memory.json``. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

OUT = pathlib.Path(__file__).resolve().parent / "results"
STAGES = ("matrix", "design", "sparse_counts", "pseudobulk")


def child(stage: str, cells: int, genes: int, density: float, as_int: bool) -> dict:
    import resource

    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    import anndata as ad

    import semimech as sm
    from semimech.infer._observed import sparse_counts

    base = rss_mb()
    rng = np.random.default_rng(0)
    nnz_row = int(round(genes * density))
    indptr = np.arange(cells + 1, dtype=np.int64) * nnz_row
    indices = np.concatenate([np.sort(rng.choice(genes, nnz_row, replace=False)) for _ in range(min(cells, 64))])
    indices = np.tile(indices, cells // min(cells, 64) + 1)[: cells * nnz_row].astype(np.int32)
    data = rng.geometric(0.3, cells * nnz_row).astype(np.int64 if as_int else np.float32)
    X = sp.csr_matrix((data, indices, indptr.astype(np.int32 if cells * nnz_row < 2**31 else np.int64)),
                      shape=(cells, genes))
    del data, indices, indptr
    labels = np.array(["control"] + [f"g{i}" for i in range(1, 51)])[rng.integers(0, 51, cells)]
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(cells)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))
    matrix_mb = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20
    after_matrix = rss_mb()
    t0 = time.perf_counter()
    out = {"stage": stage, "base_mb": base, "matrix_mb": matrix_mb, "after_matrix_mb": after_matrix}
    if stage != "matrix":
        d = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
        out["design_y"] = f"{type(d.y).__name__} {d.y.dtype}"
        out["design_y_mb"] = ((d.y.data.nbytes + d.y.indices.nbytes + d.y.indptr.nbytes) if sp.issparse(d.y)
                              else d.y.nbytes) / 2**20
        if stage == "sparse_counts":
            ys = sparse_counts(d.y)
            out["sparse_counts_mb"] = sum(np.asarray(a).nbytes for a in (ys.values, ys.rows, ys.cols, ys.mask)) / 2**20
        elif stage == "pseudobulk":
            pb = d.pseudobulk()
            out["pseudobulk_sum"] = float(np.asarray(pb.y).sum())
    out["seconds"] = time.perf_counter() - t0
    out["peak_mb"] = rss_mb()
    out["added_peak_mb"] = out["peak_mb"] - after_matrix
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=300_000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--density", type=float, default=0.08)
    ap.add_argument("--int", action="store_true", help="int64 counts (default float32)")
    ap.add_argument("--before", help="a tree holding an older semimech/ (models linked as semimech/models)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.cells, a.genes, a.density, a.int)))
        return
    trees = [("after (this tree)", None)] + ([("before", a.before)] if a.before else [])
    rows = []
    for name, tree in trees:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        if tree:
            env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
        for stage in STAGES:
            cmd = [sys.executable, __file__, "--child", stage, "--cells", str(a.cells), "--genes", str(a.genes),
                   "--density", str(a.density)] + (["--int"] if a.int else [])
            r = subprocess.run(cmd, env=env, cwd="/tmp", check=True, capture_output=True, text=True)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["tree"], row["load"] = name, os.getloadavg()[0]
            rows.append(row)
            print(f"{name:<18} {stage:<14} peak {row['peak_mb']:8.0f} MB  above the input matrix "
                  f"{row['added_peak_mb']:7.0f} MB  (input CSR {row['matrix_mb']:.0f} MB; "
                  f"y {row.get('design_y', '-')} {row.get('design_y_mb', 0):.0f} MB) {row['seconds']:.1f} s "
                  f"load {row['load']:.1f}", flush=True)
    OUT.mkdir(exist_ok=True)
    json.dump({"cells": a.cells, "genes": a.genes, "density": a.density, "int": a.int, "rows": rows},
              open(OUT / "design_memory.json", "w"), indent=1)


if __name__ == "__main__":
    main()
