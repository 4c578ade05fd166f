"""Benchmark: cost per SVI step of the ODE models vs the steady-state models on the same data (issue 4).

Models, each timed as the jitted step its fit function runs:

- ``neural_ode`` (point estimate, Adam on NLL + lambda * steady-state term; :func:`make_step`),
  lambda 0 ("vanilla") and lambda 1;
- ``neural_ode_bayes`` (SVI, mean-field normal guide; the term as a pseudo-observation),
  without and with the term (``steady_state_weight`` 1);
- ``time_course`` (production/decay network, initial state at the control fixed point solved in
  the model; SVI);
- the steady-state models ``linear_steady_state`` (the baseline of the ratios),
  ``production_decay`` and ``latent_programs`` (``sm.fit_svi``'s AutoNormal guide, optimiser
  and default options).

Data: the CellNOpt EGFR-ErbB Exp1 phospho design of ``steady_state_loss.py`` (28 conditions,
0/30/180 min, 11 readouts) and synthetic knockdown time courses
(:func:`semimech.simulate_dynamics.simulate_time_course`) with 10/20/50 genes. The time-course
models see every sample; the steady-state models see the same conditions' samples at the last
measurement time (their assumed steady state), same readouts and labels.

Per model: ``init_s`` (guide/optimiser initialisation, which for the numpyro models includes
compiling the initial-value search), ``first_step_s`` (compilation plus one step), the median
seconds of single steps (each blocked on) right after two warm-up steps (``median_s_start``)
and again after ``--train`` more untimed steps (``median_s``, with min and IQR: the solver's
work grows as the field is fitted), the ratio of ``median_s`` to the baseline's measured on
the same data in the same run, and the ODE solver's steps per solve (median/max over
conditions; Tsit5 with the models' tolerances) at the final parameters, counted by wrapping
``diffrax.diffeqsolve`` in one extra untimed evaluation.

    python benchmarks/ode_cost.py                    # EGFR-ErbB + 10/50 genes, 20 timed steps
    python benchmarks/ode_cost.py --sizes 10 20 50   # what RESULTS_ode_cost.md reports
    python benchmarks/ode_cost.py --sizes 10 20 50 100 --steps 50 --liver
    python benchmarks/ode_cost.py --smoke            # 10 genes, 3 steps, every model (about 6 min)

Writes ``benchmarks/results/ode_cost.json`` (not in ``--smoke`` unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.infer import SVI, Trace_ELBO, autoguide, init_to_median
from numpyro.infer.util import log_density

import semimech as sm
from semimech.datasets import read_midas
from semimech.models import REGISTRY
from semimech.models import neural_ode as node
from semimech.models import neural_ode_bayes as bnode
from semimech.models import time_course as tcm
from semimech.models._ode_inference import solve_counter
from semimech.simulate_dynamics import simulate_time_course
from semimech.timecourse import design_from_midas

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/cellnopt_liver_phospho")
if not DATA.exists():
    DATA = ROOT.parent / "shared" / "data" / "cellnopt_liver_phospho"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "ode_cost.json"
BASELINE = "linear_steady_state"
STEADY = ("linear_steady_state", "production_decay", "latent_programs")


# ---------------------------------------------------------------- data
def steady_design(tc, label, batch=None) -> sm.Design:
    """The time-course design's samples at its last time as a steady-state :class:`semimech.Design`."""
    last = tc.time == tc.time.max()
    frame = pd.DataFrame(np.asarray(tc.y[last], float), columns=list(tc.readouts))
    conds = [tc.conditions[i] for i in tc.condition_index[last]]
    frame["perturbation"] = [label(c) for c in conds]
    if batch is not None:
        frame["batch"] = [batch(c) for c in conds]
    return sm.Design.from_frame(frame, readouts=list(tc.readouts), perturbation_key="perturbation",
                                control="control", batch_key=None if batch is None else "batch")


def _midas_label(cond: str) -> str:
    _, stim, inh = cond.split("|")
    parts = [p for p in (stim, inh) if p != "none"]
    return "+".join(parts) if parts else "control"


def _simulate(n):
    """A synthetic design of ``n`` genes: the first seed whose unperturbed network settles."""
    for key in range(20):
        try:
            return simulate_time_course(rng_key=key, n_genes=n)[0], key
        except sm.errors.DesignError:
            continue
    raise RuntimeError(f"no settling {n}-gene network in 20 seeds")


def datasets(sizes, *, real: bool, liver: bool):
    """Yield ``(name, time-course design, steady-state design, notes)``, built lazily."""
    if real:
        tc, _ = design_from_midas(read_midas(DATA / "EGFR-ErbB_PCB2009" / "data" / "RawData-Exp1.csv"))
        yield "EGFR-ErbB Exp1", tc, steady_design(tc, _midas_label, batch=lambda c: c.split("|")[0]), {}
    if liver:
        tc, _ = design_from_midas(read_midas(DATA / "LiverDREAM" / "MD-LiverDREAM.csv"), transform="none")
        yield "LiverDREAM", tc, steady_design(tc, _midas_label), {}
    for n in sizes:
        tc, key = _simulate(n)
        yield f"synthetic {n} genes", tc, steady_design(tc, lambda c: c), {"simulate_rng_key": key}


# ---------------------------------------------------------------- timing
SETTINGS = {"train": 200, "counter": True}  # untimed steps between the two timed blocks (set by --train)


def _time_steps(step, state, n_steps):
    """Time an optimisation: compile + first step, 2 warm-up steps, ``n_steps`` timed, untimed (``--train``), ``n_steps`` timed again (the solver's work grows as the field is fitted).

    ``step(state) -> (state, loss)``. Returns ``(first_step_s, start, later, state, last loss)``
    with ``start``/``later`` the per-step seconds of the two timed blocks.
    """
    t0 = time.perf_counter()
    state, loss = jax.block_until_ready(step(state))
    first = time.perf_counter() - t0
    for _ in range(2):
        state, loss = jax.block_until_ready(step(state))

    def block(state):
        per = []
        for _ in range(n_steps):
            t0 = time.perf_counter()
            state, loss = jax.block_until_ready(step(state))
            per.append(time.perf_counter() - t0)
        return np.asarray(per), state, loss

    start, state, loss = block(state)
    for _ in range(SETTINGS["train"]):
        state, loss = step(state)
    later, state, loss = block(jax.block_until_ready(state))
    return first, start, later, state, float(loss)


@contextlib.contextmanager
def counting_solver_steps():
    """Record ``stats["num_steps"]`` of every ``diffrax.diffeqsolve`` run inside the block."""
    rec: list = []
    orig = diffrax.diffeqsolve

    def wrapped(*a, **k):
        sol = orig(*a, **k)
        jax.debug.callback(lambda n: rec.append(np.asarray(n).ravel()), sol.stats["num_steps"])
        return sol

    diffrax.diffeqsolve = wrapped
    try:
        yield rec
    finally:
        diffrax.diffeqsolve = orig


def _steps_summary(rec):
    if not rec:
        return None
    n = np.concatenate(rec)
    return {"median": float(np.median(n)), "max": int(n.max()), "solves": int(n.size)}


def _svi_timing(svi, data, y, n_steps, *, count=True):
    t0 = time.perf_counter()
    state = svi.init(jax.random.PRNGKey(0), data, y=y)
    init_s = time.perf_counter() - t0
    update = jax.jit(lambda s: svi.stable_update(s, data, y=y))
    first, start, per, state, loss = _time_steps(update, state, n_steps)
    rec = []
    if count:  # one extra untimed evaluation at the guide's median
        params = svi.guide.median(svi.get_params(state))
        with counting_solver_steps() as rec:
            jax.block_until_ready(log_density(svi.model, (data,), {"y": y}, params)[0])
    return {"init_s": init_s, "first_step_s": first, "per_step_start": start, "per_step": per,
                "loss_after": loss,
            "solver_steps": _steps_summary(rec)}


def point_node_timer(tc):
    """A timer ``(weight, n_steps) -> result`` of the point estimate's Adam step.

    The step is compiled once per design: lambda is a traced argument, as in
    :func:`fit_neural_ode` (which caches the compiled loop across weights and seeds), so the
    second weight's ``first_step_s`` has no compilation in it.
    """
    params = node.init_params(tc, rng_key=0)
    data = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in tc.model_data().items()}
    y = jnp.asarray(tc.y, jnp.float32)
    arrays, static = eqx.partition(params, eqx.is_inexact_array)
    opt = node.make_optimizer(1000, 1e-2)
    step = node.make_step(static, opt, field="free", initial="observed", onset="known", max_steps=512)

    @jax.jit
    def one(c, data, y, w):
        c, (loss, _) = step(c, data, y, w)
        return c, loss

    def timer(weight, n_steps):
        w = jnp.float32(weight)
        t0 = time.perf_counter()
        carry = jax.block_until_ready((arrays, opt.init(arrays)))
        init_s = time.perf_counter() - t0
        first, start, per, carry, loss = _time_steps(lambda c: one(c, data, y, w), carry, n_steps)
        p = eqx.combine(carry[0], static)
        with counting_solver_steps() as rec:
            jax.block_until_ready(node.predicted_samples(node.field_fn("free"), p, data, initial="observed",
                                                         onset="known", max_steps=512)[0])
        return {"init_s": init_s, "first_step_s": first, "per_step_start": start, "per_step": per,
                "loss_after": loss,
                "solver_steps": _steps_summary(rec)}

    return timer


def time_steady(spec, design, n_steps):
    opts = {**spec.default_options, "likelihood": "normal"}
    model = functools.partial(spec.model, **opts)
    data = design.model_data()
    y = jnp.asarray(design.dense_y(), jnp.float32)
    guide = autoguide.AutoNormal(model, init_loc_fn=init_to_median(num_samples=15), init_scale=0.05)
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(optax.cosine_decay_schedule(0.02, 2000, alpha=0.01)))
    # no ODE solver: linear_steady_state is closed form, the others Newton (iterations not exposed)
    return _svi_timing(SVI(model, guide, opt, Trace_ELBO()), data, y, n_steps, count=False)


def model_runs(tc, ss, models):
    """Callables ``name -> (n_steps -> result)`` for the requested model names."""
    initial = "observed" if tc.x0 is not None else "latent"
    # the fits pass a host callback counting failed solves; --no-solve-counter times without it
    on = {} if not SETTINGS["counter"] else {"on_solve": solve_counter()[0]}
    point = point_node_timer(tc)
    runs = {
        "neural_ode (point, vanilla)": lambda n: point(0.0, n),
        "neural_ode (point, lambda=1)": lambda n: point(1.0, n),
        "neural_ode_bayes (SVI, vanilla)": lambda n: _svi_timing(*bnode.make_svi(tc, rng_key=0, initial=initial, **on), n),
        "neural_ode_bayes (SVI, lambda=1)": lambda n: _svi_timing(
            *bnode.make_svi(tc, rng_key=0, initial=initial, steady_state_weight=1.0, **on), n),
        "time_course (SVI, steady start)": lambda n: _svi_timing(*tcm.make_svi(tc, initial="steady", **on), n),
    }
    for name in STEADY:
        runs[name] = lambda n, name=name: time_steady(REGISTRY[name], ss, n)
    return {k: v for k, v in runs.items() if models is None or any(k.startswith(m) for m in models)}


# ---------------------------------------------------------------- main
def _git():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "semimech", "models"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return {"commit": head, "uncommitted_changes_in_semimech_or_models": bool(dirty)}
    except OSError:
        return {"commit": None}


def _machine():
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "x64": bool(jax.config.jax_enable_x64)}


def run(a):
    rows, meta = [], {"machine": _machine(), "git": _git(), "steps_timed": a.steps, "train_steps": a.train,
                      "solve_counter_callback": SETTINGS["counter"],
                      "sizes": a.sizes,
                      "loadavg_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for dname, tc, ss, notes in datasets(a.sizes, real=not a.no_real, liver=a.liver):
        base = None
        for mname, fn in model_runs(tc, ss, a.models).items():
            load0, t0 = os.getloadavg(), time.perf_counter()
            try:
                r = fn(a.steps)
            except Exception as err:  # report, keep going: a benchmark row is not a test
                rows.append({"data": dname, "model": mname, "error": f"{type(err).__name__}: {err}"[:300]})
                print(f"{dname:22s} {mname:34s} ERROR {err}"[:200], flush=True)
                continue
            per, start = r.pop("per_step"), r.pop("per_step_start")
            row = {"data": dname, "model": mname, **notes, "wall_s": time.perf_counter() - t0,
                   "median_s": float(np.median(per)), "median_s_start": float(np.median(start)),
                   "min_s": float(per.min()),
                   "iqr_s": [float(np.percentile(per, 25)), float(np.percentile(per, 75))], **r,
                   "n_samples": int(tc.y.shape[0]), "n_conditions": len(tc.conditions), "n_readouts": tc.n_readouts,
                   "n_rows_steady": int(ss.n_obs), "loadavg_before": load0, "loadavg_after": os.getloadavg()}
            if mname == BASELINE:
                base = row["median_s"]
            rows.append(row)
            print(f"{dname:22s} {mname:34s} {1e3 * row['median_s']:9.2f} ms/step  first {row['first_step_s']:6.1f} s  wall {row['wall_s']:5.1f} s  "
                  f"solver {row['solver_steps']}", flush=True)
        for row in rows:
            if row["data"] == dname and "median_s" in row:
                row["ratio_to_" + BASELINE] = None if base is None else row["median_s"] / base
        meta["loadavg_end"] = os.getloadavg()
        _write(a, meta, rows)
    _table(rows)
    return meta, rows


def _table(rows):
    print(f"\n{'data':22s} {'model':34s} {'ms start':>9s} {'ms/step':>9s} {'x ' + BASELINE[:6]:>9s} {'first s':>8s} "
          f"{'init s':>7s} {'ODE steps':>10s}")
    for r in rows:
        if "error" in r:
            print(f"{r['data']:22s} {r['model']:34s} ERROR")
            continue
        st = r["solver_steps"]
        steps = "" if st is None else "%.0f/%d" % (st["median"], st["max"])
        ratio = r.get("ratio_to_" + BASELINE)
        ratio = "" if ratio is None else "%.1f" % ratio
        print(f"{r['data']:22s} {r['model']:34s} {1e3 * r['median_s_start']:9.2f} {1e3 * r['median_s']:9.2f} {ratio:>9s} "
              f"{r['first_step_s']:8.1f} {r['init_s']:7.1f} {steps:>10s}")


def _write(a, meta, rows):
    if a.smoke and a.out == str(DEFAULT_OUT):
        return
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 50], help="synthetic gene counts")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model")
    ap.add_argument("--train", type=int, default=SETTINGS["train"], help="untimed steps before the second timed block")
    ap.add_argument("--no-solve-counter", action="store_true",
                    help="time the SVI models without the fits' failed-solve callback")
    ap.add_argument("--models", nargs="*", default=None, help="model name prefixes (default: all)")
    ap.add_argument("--liver", action="store_true", help="also LiverDREAM")
    ap.add_argument("--no-real", action="store_true", help="skip EGFR-ErbB")
    ap.add_argument("--smoke", action="store_true", help="10 genes, 3 steps, no real data")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    if a.smoke:
        a.sizes, a.steps, a.no_real, a.train = [10], 3, True, 10
    SETTINGS["train"] = a.train
    SETTINGS["counter"] = not a.no_solve_counter
    return run(a)


if __name__ == "__main__":
    main()
