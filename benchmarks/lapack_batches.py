"""linear_steady_state with one matrix per LAPACK call (the fix for the 2-core hang) vs jax's batched calls.

semimech.dynamics._linalg hands jaxlib's CPU LAPACK kernels one matrix per call (a loop under
``vmap``), because jaxlib 0.10's batched kernels can deadlock XLA's intra-op pool
(RESULTS_compare.md). This measures what that costs, in one process, the two paths interleaved
(``--order``; jax's and semimech's compile caches cleared before every fit): ``fit_svi`` of
``--model`` on the Norman doubles training design (as compare_step_cost.py), ``--steps`` steps, 200
posterior draws. Per fit: step CPU ms/step (from the step blocks), compile and draws seconds
(``fit.timings``), the final loss (mean of the last 50 steps) and, against the first fit of the
other path, the largest difference of the posterior draws of ``mean`` (in units of their sd): the
same seed gives the same posterior up to float32 rounding in the gradients.

    cd /tmp && nice -n 10 python <repo>/benchmarks/lapack_batches.py --steps 2000

The batched path can hang on 2 cores (it never did on this design); a 30-minute wall limit applies.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import argparse  # noqa: E402
import pathlib  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import numpy as np  # noqa: E402

import heldout_tasks as ht  # noqa: E402
import semimech as sm  # noqa: E402
from semimech.dynamics import _linalg  # noqa: E402
from semimech.infer import _svi  # noqa: E402
from semimech.models import REGISTRY  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--steps", type=int, default=2000)
ap.add_argument("--model", default="linear_steady_state")
ap.add_argument("--order", default="one,batched,one,batched", help="comma-separated paths: one (the fix) / batched")
args = ap.parse_args()

design = ht.TASKS["norman_doubles"].build(quick=False)[0].train
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))  # noqa: E731
REC = []
_real = _svi.Engine.block


def block(self, state, traced, n):
    c = cpu()
    s, buf = _real(self, state, traced, n)
    jax.block_until_ready((s, buf))
    REC.append((int(n), cpu() - c))
    return s, buf


_svi.Engine.block = block
first = {}
print(f"jax {jax.__version__}, {os.cpu_count()} cpus, OPENBLAS_NUM_THREADS {os.environ.get('OPENBLAS_NUM_THREADS')}",
      flush=True)
for path in args.order.split(","):
    _linalg.SEQUENTIAL_ON_CPU = path == "one"
    jax.clear_caches()
    _svi.clear_cache()
    REC.clear()
    l0, c0, t0 = os.getloadavg()[0], cpu(), time.perf_counter()
    fit = sm.fit_svi(REGISTRY[args.model], design, rng_key=0, num_steps=args.steps, num_samples=200,
                     progress_bar=False)
    mean = np.asarray(fit.samples["mean"])
    step_cpu = sum(r[1] for r in REC) / max(1, sum(r[0] for r in REC))
    other = first.get("batched" if path == "one" else "one")
    diff = "" if other is None else (
        f"; posterior mean draws vs first '{'batched' if path == 'one' else 'one'}' fit: max |diff| / sd "
        f"{np.max(np.abs(mean - other) / (other.std(0) + 1e-12)):.2e} (max |diff| {np.max(np.abs(mean - other)):.2e})")
    first.setdefault(path, mean)
    tm = {k: round(float(v), 2) for k, v in fit.timings.items()}
    print(f"{path}: step CPU {1000 * step_cpu:.2f} ms/step; timings {tm}; fit CPU {cpu() - c0:.1f} s, wall "
          f"{time.perf_counter() - t0:.1f} s; final loss {float(np.mean(fit.losses[-50:])):.3f}{diff}; "
          f"load {l0:.1f}->{os.getloadavg()[0]:.1f}", flush=True)
