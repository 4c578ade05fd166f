"""Benchmark: the neural ODE with and without the steady-state loss (issue 4, deliverable 4).

For each system, the same neural ODE (free MLP field) is fitted with ``steady_state_weight``
0 ("vanilla") and > 0 from several initialisation seeds, on a fixed split of conditions into
training and held-out; we report the held-out RMSE (samples at t > 0 of held-out conditions,
standardised units for the real data), the spread across seeds of the held-out predictions and
of the leading Jacobian eigenvalue at the control state (the relaxation rate), the drift of the
fitted controls ||f(x_ctrl)||, failed steps and the cost per optimisation step.

Systems: synthetic non-differentiating and differentiating knockdown time courses
(:mod:`semimech.simulate_dynamics`), where for the differentiating one the term is applied
either correctly (pre-cue state, maintenance covariates) or naively (all cued controls); and the
real CellNOpt EGFR-ErbB (Exp1, 0/30/180 min) and LiverDREAM (0/30 min) designs.

Run: ``python benchmarks/steady_state_loss.py`` (``--smoke`` for a 1-minute check).
Writes ``benchmarks/results/steady_state_loss.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from semimech.datasets import read_midas
from semimech.dynamics import spectral_abscissa
from semimech.models.neural_ode import baseline_drift, fit_neural_ode, predict_neural_ode
from semimech.simulate_dynamics import simulate_time_course
from semimech.timecourse import design_from_midas

DATA = Path("/work/shared/data/cellnopt_liver_phospho")
if not DATA.exists():
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cellnopt_liver_phospho"


DEFAULT_OUT = str(Path(__file__).parent / "results" / "steady_state_loss.json")


def systems(smoke: bool):
    out = {}
    d, _ = simulate_time_course(rng_key=0, n_genes=5)
    out["synthetic non-differentiating"] = (d, list(d.conditions[-3:]), {})
    d, _ = simulate_time_course(rng_key=0, n_genes=5, differentiating=True)
    naive = dataclasses.replace(d, baseline_x=d.y[d.condition_index == 0],
                                baseline_covariates=np.repeat(d.covariates[:1], (d.condition_index == 0).sum(), 0))
    out["synthetic differentiating"] = (d, list(d.conditions[-3:]), {"naive": naive})
    if smoke:
        return out
    des, _ = design_from_midas(read_midas(DATA / "EGFR-ErbB_PCB2009" / "data" / "RawData-Exp1.csv"))
    held = [c for c in des.conditions if c.endswith("|TGFa|p38i") or c.endswith("|TGFa|PI3Ki")]
    out["EGFR-ErbB Exp1 (real)"] = (des, held, {})
    des, _ = design_from_midas(read_midas(DATA / "LiverDREAM" / "MD-LiverDREAM.csv"), transform="none")
    held = [c for c in des.conditions if c.split("|", 1)[1] in ("tgfa|pi3ki", "il1a|ikki", "igf1|mek12i", "tnfa|p38i")]
    out["LiverDREAM (real)"] = (des, held, {})
    return out


def run_system(name, design, held, variants, *, seeds, weights, num_steps):
    test_mask = design.conditions_mask(held)
    train = design.subset(~test_mask)
    test = design.subset(test_mask & (design.time > 0))
    ctrl = jnp.asarray(design.baseline_x.mean(0))
    u0 = jnp.asarray(design.baseline_covariates[0])
    no_change = float(np.sqrt(np.nanmean((design.x0[test.condition_index] - test.y) ** 2)))
    arms = {"vanilla": (train, 0.0)}
    for w in weights:
        arms[f"steady lambda={w:g}"] = (train, w)
    for vname, vdes in variants.items():
        arms[f"steady lambda={weights[-1]:g} ({vname})"] = (vdes.subset(~test_mask), weights[-1])
    rows = []
    for arm, (tr, w) in arms.items():
        preds, rmse, per_time, eig, drift, failed, cost = [], [], [], [], [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            fit = fit_neural_ode(tr, rng_key=seed, steady_state_weight=w, num_steps=num_steps)
            cost.append((time.perf_counter() - t0) / num_steps)
            mu, ok = predict_neural_ode(fit, test)
            preds.append(mu)
            rmse.append(float(np.sqrt(np.nanmean((mu - test.y) ** 2))))
            per_time.append({f"{t:g}": float(np.sqrt(np.nanmean((mu - test.y)[test.time == t] ** 2))) for t in np.unique(test.time)})
            eig.append(float(spectral_abscissa(fit.fn, fit.params["field"], ctrl, media=u0)))
            drift.append(float(np.mean(baseline_drift(fit.fn, fit.params["field"], design.baseline_x, design.baseline_covariates))))
            failed.append(fit.n_failed)
        P = np.stack(preds)
        rows.append({
            "system": name, "arm": arm, "steady_state_weight": w, "seeds": list(seeds),
            "heldout_rmse": rmse, "heldout_rmse_mean": float(np.mean(rmse)), "heldout_rmse_sd": float(np.std(rmse)),
            "heldout_rmse_by_time": per_time, "prediction_spread": float(np.mean(P.std(0))),
            "leading_eigenvalue": eig, "leading_eigenvalue_sd": float(np.std(eig)),
            "control_drift": drift, "control_drift_mean": float(np.mean(drift)), "failed_steps": failed,
            "seconds_per_step_after_compile": float(np.median(cost[1:] if len(cost) > 1 else cost)),
            "no_change_rmse": no_change, "n_train_conditions": int(len(np.unique(tr.condition_index))),
            "heldout_conditions": list(held), "n_test_samples": int(test.y.shape[0]),
        })
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 100.0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    seeds = list(range(2 if a.smoke else a.seeds))
    steps = 100 if a.smoke else a.steps
    rows = []
    for name, (des, held, variants) in systems(a.smoke).items():
        rows += run_system(name, des, held, variants, seeds=seeds, weights=a.weights, num_steps=steps)
        print(f"done {name}", flush=True)
        _write(a, rows, steps, seeds)
    hdr = f"{'system':32s} {'arm':30s} {'held-out RMSE':>16s} {'no change':>9s} {'pred spread':>11s} {'eig sd':>7s} {'drift':>7s} {'fail':>4s} {'ms/step':>7s}"
    print(hdr)
    for r in rows:
        print(f"{r['system']:32s} {r['arm']:30s} {r['heldout_rmse_mean']:7.3f} +- {r['heldout_rmse_sd']:5.3f} "
              f"{r['no_change_rmse']:9.3f} {r['prediction_spread']:11.3f} {r['leading_eigenvalue_sd']:7.3f} "
              f"{r['control_drift_mean']:7.3f} {sum(r['failed_steps']):4d} {1e3 * r['seconds_per_step_after_compile']:7.1f}")
    _write(a, rows, steps, seeds)
    return rows


def _write(a, rows, steps, seeds):
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "steps": steps, "seeds": seeds,
            "weights": a.weights, "field": "free MLP width 16 depth 1 (tanh)", "smoke": a.smoke}
    if not a.smoke or a.out != DEFAULT_OUT:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
