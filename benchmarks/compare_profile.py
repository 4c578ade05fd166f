"""Where does the Norman comparison's time go? Per model: fit, cross_validate (refits), row LOO, checks;
CPU seconds per part (process CPU), XLA compile time/count (jax.monitoring events) and the refits'
own timings (compile / steps / draws).

    cd /tmp && nice -n 10 python <repo>/benchmarks/compare_profile.py linear_steady_state,additive 2000 k5:2000,k5:666

Optional 4th argument ``DESIGN:UNIT`` (``full:combinable``: compare_cv.py's ``--design full --unit combinable``).
Variants ``KIND:STEPS``: ``loo`` (leave-one-out over the 10 training doubles) or ``kN`` (N-fold), with
STEPS refit steps. Writes ``prof_MODELS.json`` in the working folder. Results: RESULTS_compare.md.
"""
import os
# scipy's OpenBLAS (the LAPACK behind jax's CPU lu/solve kernels) threads every call; on a busy machine its
# threads' hand-offs cost 16x linear_steady_state's SVI step (RESULTS_compare.md, session 5). Override by
# setting OPENBLAS_NUM_THREADS yourself. Must be set before numpy/scipy load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import collections, json, os, pathlib, resource, sys, time
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax
from jax import monitoring
EV = collections.defaultdict(lambda: [0, 0.0])
def _listen(name, secs, **kw):
    EV[name][0] += 1; EV[name][1] += secs
monitoring.register_event_duration_secs_listener(_listen)
import heldout_tasks as ht
import semimech as sm
from semimech.models import REGISTRY
from semimech.evaluate import cross_validate
from semimech.evaluate.compare import _row_loo, _assumption_checks
import semimech.infer.fit as _fm
REFIT_T = []
_real_svi = _fm.fit_svi
def _spy(*a, **kw):
    f = _real_svi(*a, **kw); REFIT_T.append(dict(f.timings or {})); return f

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
def snap():
    return {k: tuple(v) for k, v in EV.items()}
def delta(a, b):
    return {k.split("/")[-1]: (b[k][0] - a.get(k, (0, 0))[0], round(b[k][1] - a.get(k, (0, 0.0))[1], 1)) for k in b
            if b[k][0] != a.get(k, (0, 0))[0]}

models = sys.argv[1].split(",")
steps = int(sys.argv[2]); variants = sys.argv[3].split(",")   # e.g. loo:666,k5:666,loo:300
# optional 4th argument DESIGN:UNIT, e.g. full:combinable (compare_cv.py's --design full --unit combinable)
kind, unit = (sys.argv[4].split(":") if len(sys.argv) > 4 else ("train", "combination"))
if kind == "full":
    import compare_cv
    design = compare_cv.comparison_design("norman_doubles", None, full=True)
else:
    design = ht.TASKS["norman_doubles"].build(quick=False)[0].train
print(design, "load", os.getloadavg()[0], flush=True)
out = {}
for name in models:
    r = out[name] = {}
    t, c, e = time.time(), cpu(), snap()
    fit = sm.fit_svi(REGISTRY[name], design, rng_key=0, num_steps=steps, num_samples=200, progress_bar=False)
    r["fit"] = {"wall": round(time.time() - t, 1), "cpu": round(cpu() - c, 1), "compile": delta(e, snap())}
    print(name, "fit", r["fit"], flush=True)
    for v in variants:
        kind, rs = v.split(":")
        k = None if kind == "loo" else int(kind[1:])
        t, c, e = time.time(), cpu(), snap()
        REFIT_T.clear(); _fm.fit_svi = _spy
        cv = cross_validate(fit, unit=unit, k=k, num_steps=int(rs), rng_key=0)
        r[v] = {"wall": round(time.time() - t, 1), "cpu": round(cpu() - c, 1), "compile": delta(e, snap()),
                "n_refits": cv.n_refits, "elpd": round(float(cv.elpd.elpd), 1), "se": round(float(cv.elpd.se), 1),
                "cv_l2": round(float(cv.l2.mean()), 4), "resets": [sum(x.values()) for x in cv.resets],
                "refit_timings": [{k: round(float(x), 2) for k, x in t.items()} for t in REFIT_T],
                "refit_timings_sum": {k: round(sum(float(t.get(k, 0) or 0) for t in REFIT_T), 1)
                                      for k in sorted({k for t in REFIT_T for k in t})}}
        _fm.fit_svi = _real_svi
        print(name, v, r[v], flush=True)
    for part, fn in (("row_loo", lambda: _row_loo(fit, rng_key=0)), ("checks", lambda: _assumption_checks(fit))):
        t, c, e = time.time(), cpu(), snap()
        fn()
        r[part] = {"wall": round(time.time() - t, 1), "cpu": round(cpu() - c, 1), "compile": delta(e, snap())}
        print(name, part, r[part], flush=True)
json.dump(out, open(f"prof_{'_'.join(models)}_{kind}.json", "w"), indent=1)
print("load", os.getloadavg()[0])
