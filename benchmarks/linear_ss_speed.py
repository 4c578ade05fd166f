"""linear_steady_state at 500 genes (Norman 2019, issue 14): shared-LU solve vs per-condition closed form.

Fits ``linear_steady_state`` (Gaussian, AutoNormal, default options) by ``fit_svi`` on the
training pseudobulk of the shipped Norman 2019 subset with all 500 genes (control, 18 singles,
10 doubles; the 5 combinable doubles held out as in ``steady_state.py``), once per solver, each
in a fresh process (so each fit pays its own compilation), one after the other. Reports
``fit.timings`` (set-up, compile, steps, draws, total), seconds per step, the final loss, the
posterior mean ``ok_fraction``, and how far the two fits' posterior means of ``mean`` are apart
in units of the posterior sd (same seed: both fits see the same random numbers, the solves differ
at the float32 solver tolerance).

    python benchmarks/linear_ss_speed.py                    # 1,000 steps, both solvers
    python benchmarks/linear_ss_speed.py --steps 200 --solvers shared

Writes ``benchmarks/results/linear_ss_speed.json``. One BLAS thread (``OPENBLAS_NUM_THREADS=1``,
see RESULTS_steady_state.md: spinning BLAS threads slow batched LUs on shared cores) unless
``--blas-threads 0``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

OUT = pathlib.Path(__file__).resolve().parent / "results"


def one(solver: str, steps: int, draws: int, seed: int, out: str) -> None:
    import numpy as np

    import semimech as sm
    from semimech import evaluate as ev
    from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel
    from semimech.models import linear_steady_state

    t0 = time.perf_counter()
    c0 = time.process_time()
    full = sm.Design.from_anndata(norman19_devel(), perturbation_key="perturbation", control="control")
    train, _ = ev.split_combinations(full, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    data = train.pseudobulk()
    prep = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    fit = sm.fit_svi(linear_steady_state.SPEC, data, rng_key=seed, num_steps=steps, num_samples=draws,
                     progress_bar=False, solver=solver)
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    mean = np.asarray(fit.samples["mean"])
    mean = mean.reshape(-1, *mean.shape[-2:])
    np.save(out + ".npy", np.stack([mean.mean(0), mean.std(0)]))
    losses = np.asarray(fit.losses) if getattr(fit, "losses", None) is not None else np.array([np.nan])
    json.dump({"solver": solver, "genes": int(data.y.shape[1]), "rows": int(data.y.shape[0]), "steps": steps,
               "draws": draws, "seed": seed, "data_s": prep, "fit_wall_s": wall, "fit_cpu_s": cpu,
               "timings": {k: float(v) for k, v in fit.timings.items()},
               "step_s": float(fit.timings["steps_s"]) / steps, "final_loss": float(np.mean(losses[-50:])),
               "ok_fraction": float(np.mean(np.asarray(fit.samples["ok_fraction"]))),
               "process_cpu_s": time.process_time() - c0}, open(out, "w"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solvers", nargs="+", default=["shared", "closed_form"])
    ap.add_argument("--blas-threads", default="1")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        return one(a.one, a.steps, a.draws, a.seed, a.out)

    env = dict(os.environ)
    if a.blas_threads != "0":
        env["OPENBLAS_NUM_THREADS"] = a.blas_threads
    import numpy as np

    rows, means = [], {}
    tmp = tempfile.mkdtemp(prefix="linss_")
    for solver in a.solvers:
        out = os.path.join(tmp, solver + ".json")
        load = os.getloadavg()[0]
        subprocess.run([sys.executable, __file__, "--one", solver, "--out", out, "--steps", str(a.steps),
                        "--draws", str(a.draws), "--seed", str(a.seed)], check=True, env=env, cwd=tmp)
        r = json.load(open(out))
        r["load_before"], r["load_after"] = load, os.getloadavg()[0]
        rows.append(r)
        means[solver] = np.load(out + ".npy")
    print(f"\nlinear_steady_state, Norman 2019 pseudobulk ({rows[0]['rows']} rows x {rows[0]['genes']} genes), "
          f"{a.steps} SVI steps, {a.draws} draws, seed {a.seed}, OPENBLAS_NUM_THREADS={env.get('OPENBLAS_NUM_THREADS')}")
    print(f"{'solver':<12} {'total s':>8} {'compile s':>9} {'steps s':>8} {'s/step':>8} {'draws s':>8} "
          f"{'fit CPU s':>9} {'loss':>10} {'ok':>5} {'load':>10}")
    for r in rows:
        t = r["timings"]
        print(f"{r['solver']:<12} {t['total_s']:>8.1f} {t['compile_s']:>9.1f} {t['steps_s']:>8.1f} {r['step_s']:>8.4f} "
              f"{t['draws_s']:>8.1f} {r['fit_cpu_s']:>9.1f} {r['final_loss']:>10.1f} {r['ok_fraction']:>5.2f} "
              f"{r['load_before']:>4.1f}/{r['load_after']:<4.1f}")
    result = {"rows": rows}
    if {"shared", "closed_form"} <= set(means):
        (m1, s1), (m0, s0) = means["shared"], means["closed_form"]
        z = np.abs(m1 - m0) / np.maximum(np.sqrt(0.5 * (s1 ** 2 + s0 ** 2)), 1e-12)
        by = {r["solver"]: r for r in rows}
        ratio = {k: by["shared"]["timings"][k] / max(by["closed_form"]["timings"][k], 1e-12)
                 for k in ("total_s", "steps_s", "compile_s")}
        result.update(mean_gap_in_sd={"median": float(np.median(z)), "p99": float(np.quantile(z, 0.99)),
                                      "max": float(z.max())}, ratio_shared_over_closed_form=ratio)
        print(f"shared / closed_form: total {ratio['total_s']:.3f}, steps {ratio['steps_s']:.3f}, "
              f"compile {ratio['compile_s']:.2f}")
        print(f"posterior means of 'mean', |shared - closed_form| / posterior sd: median {np.median(z):.3f}, "
              f"99% {np.quantile(z, 0.99):.3f}, max {z.max():.3f}")
    OUT.mkdir(exist_ok=True)
    json.dump(result, open(OUT / "linear_ss_speed.json", "w"), indent=1)


if __name__ == "__main__":
    main()
