"""fit_nuts with chains one after the other vs vectorised (issue 14, item 3): min bulk ESS per second.

The 4-gene linear steady-state chain of ``stan_nuts.py`` (same data, priors, warm-up and draws);
each chain method is fitted twice in one process: the first fit includes compilation (end to
end), the second reuses nothing but JAX's own caches and is reported as well. ESS by
``stan_nuts.ess_table`` (arviz bulk ESS of every scalar parameter).

    python benchmarks/nuts_chains.py [--chains 2 --warmup 1000 --draws 1000]

Writes ``benchmarks/results/nuts_chains.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--methods", nargs="+", default=["sequential", "vectorized"])
    a = ap.parse_args()
    import semimech as sm
    from semimech.infer.spec import ModelSpec
    from stan_nuts import ess_table, linear_ss, simulate

    frame, truth = simulate(4, 30)
    design = sm.Design.from_frame(frame, readouts=[f"g{i}" for i in range(4)], perturbation_key="perturbation",
                                  control="control")
    spec = ModelSpec(name="linear_ss", model=linear_ss, assumes="linear steady state on a chain")
    rows = []
    for method in a.methods:
        for run in (0, 1):
            load = os.getloadavg()[0]
            t, c = time.perf_counter(), time.process_time()
            fit = sm.fit_nuts(spec, design, rng_key=run, num_warmup=a.warmup, num_samples=a.draws,
                              num_chains=a.chains, chain_method=method, progress_bar=False, max_tree_depth=10,
                              target_accept_prob=0.8)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            ess = min(ess_table({k: fit.samples[k] for k in truth}).values())
            rows.append({"method": method, "run": run, "wall_s": wall, "cpu_s": cpu, "min_ess": ess,
                         "min_ess_per_s": ess / wall, "load": load})
            print(f"{method:<11} run {run}  wall {wall:7.1f} s  CPU {cpu:7.1f} s  min ESS {ess:7.1f}  "
                  f"min ESS/s {ess / wall:6.1f}  load {load:.1f}", flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    json.dump({"chains": a.chains, "warmup": a.warmup, "draws": a.draws, "rows": rows},
              open(HERE / "results" / "nuts_chains.json", "w"), indent=1)


if __name__ == "__main__":
    main()
