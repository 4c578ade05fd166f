"""Analytic vs simulated error of perturbation-effect estimates over a grid of layouts.

Run: ``python benchmarks/design_tools.py [--replicates 4000] [--out benchmarks/results/design_tools.json]``.

For each layout and comparison (within-batch, cross-batch) it prints the analytic variance
(noise + batch parts), the simulated variance with its Monte Carlo standard error, and the
standardised gap z = (simulated - analytic) / SE; then Dunnett vs equal control allocation.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import numpy as np

from semimech.design import Layout, balanced_layout, recommend_control_allocation, simulate_layout


def within_layout(k, b, n_p, n_0):
    return balanced_layout(k, b, cells_per_perturbation=n_p, controls_per_batch=n_0)


def cross_layout(k, b, n_p, n_0):
    """Perturbations in batches 0..b-1, controls only in batches b..2b-1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the layout is meant to lack controls
        return Layout(cells=[[n_p] * b + [0] * b] * k, controls=[0] * b + [n_0] * b)


def grid_rows(replicates: int, sigma: float) -> list[dict]:
    rows = []
    seed = 0
    for tau in (0.0, 0.5):
        for b in (1, 3):
            for n_p in (10, 100, 1000):
                n_0 = 2 * n_p
                for comparison, make in (("within", within_layout), ("cross", cross_layout)):
                    layout = make(4, b, n_p, n_0)
                    t0 = time.perf_counter()
                    res = simulate_layout(layout, sigma=sigma, tau=tau, effects=np.zeros(4), rng_key=seed,
                                          num_replicates=replicates, comparisons=(comparison,))[comparison]
                    secs = time.perf_counter() - t0
                    seed += 1
                    rows.append(dict(
                        comparison=comparison, tau=tau, batches=b, n_p=n_p, n_0=n_0,
                        analytic_noise_variance=float(res.analytic.noise_variance[0]),
                        analytic_batch_variance=float(res.analytic.batch_variance[0]),
                        analytic_variance=float(res.analytic.variance[0]),
                        simulated_variance=float(res.variance[0]),
                        simulated_variance_se=float(res.variance_se[0]),
                        simulated_bias=float(res.bias[0]),
                        simulated_bias_se=float(res.bias_se[0]),
                        z=float((res.variance[0] - res.analytic.variance[0]) / res.variance_se[0]),
                        seconds=secs,
                        cells_per_second=layout.total_cells * replicates / secs,
                    ))
    return rows


def allocation_rows(replicates: int, sigma: float) -> list[dict]:
    rows = []
    for k in (4, 16, 64):
        rec = recommend_control_allocation(k, n_batches=2, cells_per_batch=20 * (k + 1), sigma=sigma, tau=0.5)
        equal = balanced_layout(k, 2, cells_per_perturbation=rec.equal_cells, controls_per_batch=rec.equal_cells)
        out = {}
        for name, layout in (("dunnett", rec.layout), ("equal", equal)):
            res = simulate_layout(layout, sigma=sigma, tau=0.5, effects=np.zeros(k), rng_key=100 + k,
                                  num_replicates=replicates, comparisons=("within",), cell_level=False)["within"]
            out[name] = (res.analytic.total_variance, res.total_variance, res.total_variance_se)
        rows.append(dict(
            k=k, cells_per_batch=rec.cells_per_batch, n_p=rec.cells_per_perturbation, n_0=rec.controls_per_batch,
            equal_cells=rec.equal_cells,
            dunnett_analytic=out["dunnett"][0], dunnett_simulated=out["dunnett"][1], dunnett_se=out["dunnett"][2],
            equal_analytic=out["equal"][0], equal_simulated=out["equal"][1], equal_se=out["equal"][2],
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=4000)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "design_tools.json"))
    args = parser.parse_args()

    rows = grid_rows(args.replicates, args.sigma)
    print(f"sigma = {args.sigma}, K = 4 perturbations, n_0 = 2 n_p, R = {args.replicates} screens per row")
    print(f"{'comp':7}{'tau':>5}{'B':>3}{'n_p':>6}{'noise':>10}{'batch':>8}{'analytic':>10}"
          f"{'simulated':>11}{'MC se':>9}{'z':>7}{'Mcells/s':>10}")
    for r in rows:
        print(f"{r['comparison']:7}{r['tau']:5.1f}{r['batches']:3d}{r['n_p']:6d}{r['analytic_noise_variance']:10.4g}"
              f"{r['analytic_batch_variance']:8.3g}{r['analytic_variance']:10.4g}{r['simulated_variance']:11.4g}"
              f"{r['simulated_variance_se']:9.2g}{r['z']:7.2f}{r['cells_per_second'] / 1e6:10.1f}")
    zs = np.array([r["z"] for r in rows])
    print(f"mean z^2 = {np.mean(zs**2):.2f} over {zs.size} rows (about 1 if analytic = simulated)")

    alloc = allocation_rows(args.replicates, args.sigma)
    print("\nTotal within-batch variance over K perturbations, 2 batches, budget 20 (K + 1) cells per batch")
    print(f"{'K':>4}{'n_p':>5}{'n_0':>5}{'eq n':>6}{'Dunnett an.':>13}{'sim':>9}{'equal an.':>11}{'sim':>9}{'gain':>7}")
    for a in alloc:
        print(f"{a['k']:4d}{a['n_p']:5d}{a['n_0']:5d}{a['equal_cells']:6d}{a['dunnett_analytic']:13.4g}"
              f"{a['dunnett_simulated']:9.4g}{a['equal_analytic']:11.4g}{a['equal_simulated']:9.4g}"
              f"{1 - a['dunnett_analytic'] / a['equal_analytic']:7.0%}")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(sigma=args.sigma, replicates=args.replicates, grid=rows, allocation=alloc,
                                   mean_z2=float(np.mean(zs**2))), indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
