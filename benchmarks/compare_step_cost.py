"""Per-step CPU cost of linear_steady_state SVI fits on the Norman training design (29 rows x 105 genes).

    cd /tmp && nice -n 10 python <repo>/benchmarks/compare_step_cost.py 666,2000                          # OpenBLAS 1 thread
    cd /tmp && OPENBLAS_NUM_THREADS=2 nice -n 10 python <repo>/benchmarks/compare_step_cost.py 666,2000   # its default here

Fits of the given step counts in one process (seed 0); per fit: the step blocks' CPU seconds per step,
overall and by thirds of the run (cpu ms, wall ms), the compile events during the fit, the final loss
(mean of the last 50 steps: the runs must agree) and the load. Results: RESULTS_compare.md.
"""
import os
# scipy's OpenBLAS (the LAPACK behind jax's CPU lu/solve kernels) threads every call; on a busy machine its
# threads' hand-offs cost 16x linear_steady_state's SVI step (RESULTS_compare.md, session 5). Override by
# setting OPENBLAS_NUM_THREADS yourself. Must be set before numpy/scipy load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import argparse, collections, os, pathlib, resource, sys, time
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import numpy as np
from jax import monitoring
EV = collections.Counter()
monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: EV.update([name.split("/")[-1]]))
import heldout_tasks as ht  # noqa: E402
import semimech as sm  # noqa: E402
from semimech.models import REGISTRY  # noqa: E402
from semimech.infer import _svi  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("steps", help="comma-separated step counts, e.g. 666,2000")
ap.add_argument("--model", default="linear_steady_state")
args = ap.parse_args()
print("OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS"), flush=True)
import jax  # noqa: E402

design = ht.TASKS["norman_doubles"].build(quick=False)[0].train
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))  # noqa: E731
REC = []
_real = _svi.Engine.block


def block(self, state, traced, n):
    c, t = cpu(), time.perf_counter()
    s, buf = _real(self, state, traced, n)
    jax.block_until_ready((s, buf))
    REC.append(((REC[-1][0] if REC else 0) + int(n), int(n), cpu() - c, time.perf_counter() - t))
    return s, buf


_svi.Engine.block = block
for steps in [int(s) for s in args.steps.split(",")]:
    REC.clear(); ev0 = dict(EV); l0 = os.getloadavg()[0]
    fit = sm.fit_svi(REGISTRY[args.model], design, rng_key=0, num_steps=steps, num_samples=200, progress_bar=False)
    comp = {k: EV[k] - ev0.get(k, 0) for k in EV if EV[k] != ev0.get(k, 0)}
    per = []
    for a, b in ((0, steps // 3), (steps // 3, 2 * steps // 3), (2 * steps // 3, steps)):
        sel = [r for r in REC if a < r[0] <= b]
        n = max(1, sum(r[1] for r in sel))
        per.append((round(1000 * sum(r[2] for r in sel) / n, 2), round(1000 * sum(r[3] for r in sel) / n, 2)))
    tot = sum(r[2] for r in REC)
    print(f"{args.model} {steps} steps: step CPU {tot:.1f} s = {1000 * tot / steps:.2f} ms/step; by third (cpu ms, wall ms) "
          f"{per}; compile events during the fit {comp}; final loss {float(np.mean(fit.losses[-50:])):.1f}; "
          f"load {l0:.1f}->{os.getloadavg()[0]:.1f}", flush=True)
