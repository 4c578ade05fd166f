"""Predict a table of conditions across many contexts in one call vs one call per context.

Issue 14: "predict for 200 conditions across 50 contexts: under 5 s after the fit". A synthetic
stimulus x inhibitor x context design shaped like HepG2CancerRes2011 split by cell line and
stimulus (50 contexts, 18 readouts, 8 levels) is fitted briefly (the fit is not timed; its
quality does not matter here), then the 200 held-out double/triple-inhibitor conditions are
predicted in one ``sm.predict`` call (a DataFrame) and, for comparison, in 50 calls (one per
context, what the label API needed). Each is timed twice: the first call includes tracing and
compilation, the second is warm. The one-call and per-context draws are checked equal.

    python benchmarks/predict_contexts.py --json /tmp/predict_contexts.json [--draws 400]

Measured 2026-12-03 (2 shared cores, load 16): one call 9.5 s cold (tracing and compilation
included), 1.45 s warm; one call per context 71 s cold, 67 s warm; draws equal. 2026-12-04
(load 8), after fresh draws of unseen entries stopped compiling jax.random programs: one call
2.5 s cold, 1.3 s warm (RESULTS_speed.md).

Run from outside the repository root (``cd /tmp``) so the installed package is imported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
import warnings

import numpy as np
import pandas as pd

import semimech as sm
from semimech.models import additive

INHIBITORS = ("IKKi", "MEK12i", "PI3Ki")
STIMULI = ("IL1a", "IL6", "INS", "TGFa", "TNFa")


def synthetic(n_contexts: int, n_genes: int, rng_key: int = 0):
    rng = np.random.default_rng(rng_key)
    stim_sets = [(), *[(s,) for s in STIMULI], ("IL1a", "INS"), ("IL6", "INS"), ("INS", "TGFa"), ("TGFa", "TNFa")]
    inh_sets = [c for k in range(4) for c in itertools.combinations(INHIBITORS, k)]
    rows = []
    for c in range(n_contexts):
        for st in stim_sets:
            for ih in inh_sets:
                rows.append({"stim": "+".join(st) or "none", "inh": "+".join(ih) or "none", "line": f"ctx{c:02d}",
                             **{f"g{g}": rng.normal() for g in range(n_genes)}})
    return pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--contexts", type=int, default=50)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    frame = synthetic(args.contexts, 18)
    n_inh = frame["inh"].map(lambda s: 0 if s == "none" else len(s.split("+")))
    d = sm.Design.from_frame(frame[n_inh <= 1], readouts=[f"g{g}" for g in range(18)],
                             factors={"stimulus": "stim", "inhibitor": "inh"}, context_key="line")
    t0 = time.perf_counter()
    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=50, guide="map", num_samples=args.draws,
                     progress_bar=False)
    fit_s = time.perf_counter() - t0
    # the held-out table: 4 inhibitor combinations x a stimulus per context = 200 conditions over 50 contexts
    test = frame[(n_inh >= 2)].groupby("line").head(4)[["stim", "inh", "line"]]
    out = {"n_contexts": args.contexts, "n_conditions": len(test), "draws": args.draws, "fit_seconds": fit_s,
           "load": os.getloadavg()[0]}
    for tag in ("cold", "warm"):
        t0 = time.perf_counter()
        one = sm.predict(fit, test, rng_key=1)
        out[f"one_call_{tag}_s"] = time.perf_counter() - t0
    for tag in ("cold", "warm"):
        t0 = time.perf_counter()
        parts = [sm.predict(fit, test[test["line"] == c], rng_key=1) for c in sorted(test["line"].unique())]
        out[f"per_context_{tag}_s"] = time.perf_counter() - t0
    equal = all(np.array_equal(one.draws["mean"][:, [one.perturbations.index(p) for p in part.perturbations]],
                               part.draws["mean"]) for part in parts)
    out["one_call_equals_per_context"] = bool(equal)
    print(f"{'':28s}{'cold (s)':>10s}{'warm (s)':>10s}")
    print(f"{'one call (DataFrame)':28s}{out['one_call_cold_s']:10.2f}{out['one_call_warm_s']:10.2f}")
    print(f"{'one call per context':28s}{out['per_context_cold_s']:10.2f}{out['per_context_warm_s']:10.2f}")
    print(f"{len(test)} conditions across {args.contexts} contexts, {args.draws} draws; equal draws: {equal}; "
          f"load {out['load']:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
