"""Sanity check on real data: the additive model with interactions on the HepG2CancerRes2011 factorial design.

The design is read with ``Design.from_midas`` (t = 30 min, log10(x + 1)): stimuli and
inhibitors are factors, the 5 cell lines contexts. Train on no / single inhibitor (200 rows),
predict double / triple inhibitors (200 rows) in one ``predict`` call; RMSE pooled over the 200
rows x 18 readouts of the posterior predictive mean, and coverage of 50% / 90% intervals for an
observation (``observed_mean`` with one sample). Rules for comparison, computed here from the
same rows: no change (the stimulus-only row), log-additive, strongest single inhibitor ("min").

    python benchmarks/hepg2_factorial.py --guide map --json out.json   # or --nuts

This is not the shared held-out contract (``benchmarks/heldout.py hepg2_combinations``); it
checks the factor design end to end and reports what the interaction structure gives.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

import semimech as sm
from semimech.datasets import read_midas, shared_data_dir
from semimech.models import additive

INHIBITORS = ("IKKi", "MEK12i", "PI3Ki")


def load():
    path = shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv"
    t = read_midas(path)
    d = sm.Design.from_midas(t.assign(value=np.log10(t["value"] + 1)), time=30)
    n_inh = np.asarray(d.target_matrix)[:, [d.targets.index(x) for x in INHIBITORS]].sum(1)[d.perturbation_index]
    return d, d.subset(n_inh <= 1), d.subset(n_inh >= 2)


def rules(d, test):
    """Point predictions of the simple rules for every test row (from the observed training rows)."""
    y, keys = d.dense_y(), d.condition_keys()
    obs = {keys[d.perturbation_index[r]]: y[r] for r in range(d.n_obs)}
    out = {"no_change": [], "log_additive": [], "min": []}
    for r in range(test.n_obs):
        levels, c = keys[test.perturbation_index[r]]
        inh = [x for x in levels if x in INHIBITORS]
        base = obs[(levels - set(inh), c)]
        singles = [obs[((levels - set(inh)) | {i}, c)] for i in inh]
        out["no_change"].append(base)
        out["log_additive"].append(base + sum(s - base for s in singles))
        out["min"].append(np.min(singles, axis=0))
    return {k: np.array(v) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guide", default="map", help="SVI guide (map, normal, lowrank); ignored with --nuts")
    ap.add_argument("--nuts", action="store_true")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    d, train, test = load()
    truth = test.dense_y()
    rmse = lambda p: float(np.sqrt(np.mean((p - truth) ** 2)))  # noqa: E731
    res = {"rules": {k: rmse(v) for k, v in rules(d, test).items()}, "runs": [], "load": os.getloadavg()[0]}
    for seed in args.seeds:
        t0 = time.perf_counter()
        if args.nuts:
            fit = sm.fit_nuts(additive.SPEC, train, rng_key=seed, num_warmup=500, num_samples=500, num_chains=1,
                              progress_bar=False)
        else:
            fit = sm.fit_svi(additive.SPEC, train, rng_key=seed, num_steps=args.steps, guide=args.guide,
                             num_samples=1000, progress_bar=False)
        fit_s = time.perf_counter() - t0
        p = sm.predict(fit, test, rng_key=seed + 100, num_cells=1)
        row = [p.perturbations.index(test.perturbations[i]) for i in test.perturbation_index]
        mean = p.draws["mean"].mean(0)[row]
        obs = p.draws["observed_mean"][:, row]
        cov = {}
        for prob in (0.5, 0.9):
            lo, hi = np.quantile(obs, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
            cov[f"coverage_{int(prob * 100)}"] = float(np.mean((truth >= lo) & (truth <= hi)))
        scales = {k: np.round(fit.flat(k).mean(0), 3).tolist() for k in
                  ("interaction_scale", "effect_context_sd", "pair_context_sd", "higher_scale", "context_sd")}
        res["runs"].append({"seed": seed, "rmse": rmse(mean), **cov, "fit_seconds": fit_s,
                            "noise_sd_mean": float(fit.flat("noise_sd").mean()), "scales": scales,
                            "method": "nuts" if args.nuts else f"svi/{args.guide}"})
        print(json.dumps(res["runs"][-1]))
    print(f"rules: {json.dumps(res['rules'])}  (shared README: no change 0.427, log-additive 0.284, min 0.194)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
