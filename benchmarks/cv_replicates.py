"""Cross-validating a cell-level count fit: held-out rows' replicates drawn for those rows alone, against drawing them
for every row of the design and slicing (the path before), and drawn on the host against JAX's sampler.

    cd /tmp && OPENBLAS_NUM_THREADS=1 python <repo>/benchmarks/cv_replicates.py [--cells 3000] [--genes 300] [--json PATH]
        [--modes subset jax_draws whole]

Simulated negative-binomial counts as in ``benchmarks/cv_sparse.py`` (control, three singles and two doubles in
equal numbers of cells, CSR). The additive model is fitted (300 SVI steps, 30 draws), then
``cross_validate(fit, unit="combination", k=2, num_steps=300)``: two refits, each fold's held-out cells (a sixth of
the design) get replicate draws for their PIT, CRPS and predictive sd. Each mode runs in its own fresh process, one
after the other: ``subset`` (the package as it is: ``RowEngine.replicates`` runs the model on the held-out rows'
per-row data, padded to a shared size) and ``whole`` (the old behaviour, forced by making the engine treat the
per-row data as unknown, so replicates are drawn for every row and sliced); ``jax_draws`` is ``subset`` with the
negative-binomial replicates drawn by JAX's sampler (the path before they were drawn on the host with numpy,
``_pointwise.host_draws``). Prints a table and writes JSON (default
``benchmarks/results/cv_replicates.json``): wall seconds of the cross-validation and of its replicate draws, the
elpd (the same in both: replicates do not enter it) and the mean over held-out units of their CRPS (``cv.crps``:
equal up to Monte Carlo error, the draws differ).
"""

from __future__ import annotations

import time
import warnings


def run(mode: str, n: int, g: int) -> dict:
    import numpy as np
    from cv_sparse import simulated_count_fit

    from semimech.evaluate import _pointwise, cross_validate

    warnings.simplefilter("ignore")
    d, fit, _ = simulated_count_fit(n, g)
    if mode == "whole":
        _pointwise._row_keys = lambda design, data: None
    if mode in ("whole", "jax_draws"):  # JAX's sampler draws the replicates (inside the compiled function)
        _pointwise._gamma_poisson = lambda fn: None
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
    from cv_sparse import modes_in_fresh_processes

    got = modes_in_fresh_processes(__file__, run, ("subset", "jax_draws", "whole"), cells=3000, genes=300,
                                   json_name="cv_replicates.json")
    if got is None:
        return
    rows, args = got
    print("| held-out replicates drawn for | CV wall s | of which replicates s | elpd | mean CRPS |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} rows | {r['cv_seconds']:.1f} | {r['replicate_seconds']:.1f} | {r['elpd']:.2f} | "
              f"{r['mean_crps']:.4f} |")
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['mode']} / {base['mode']}, CV wall: {r['cv_seconds'] / base['cv_seconds']:.2f}x; replicates: "
              f"{r['replicate_seconds'] / base['replicate_seconds']:.2f}x")


if __name__ == "__main__":
    main()
