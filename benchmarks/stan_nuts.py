"""NUTS on a small linear steady-state model: semimech/NumPyro against Stan (PyStan).

Model (G genes on a chain g0 -> g1 -> ... with unit decay): the steady state of
``dx/dt = b_p + W x - x`` is ``x_p = (I - W)^-1 b_p`` with ``W[i, i-1] = w_i``; a knockdown
of gene t scales its production, ``b_p = b * (1 - k e_t)``; cells are ``y ~ Normal(x_p, sigma)``.
Priors: ``b ~ LogNormal(1, 0.5)``, ``w ~ Normal(0, 1)``, ``k ~ Beta(2, 2)``,
``sigma ~ HalfNormal(1)``. The same data and warm-up go to both samplers, and the same TOTAL
number of post-warm-up draws (``--total-draws``, split over each setting's chains: 2 x 1000,
16 x 125); the bulk effective sample size and the rank-normalised split R-hat of every scalar
parameter come from the same functions (``arviz_stats.ess`` / ``rhat``) on both sets of draws.

Each NumPyro setting (``--settings CHAINS:METHOD[:dense]``, METHOD as ``fit_nuts``'s
``chain_method``) runs in a fresh Python process (one at a time, never beside Stan):

1. ``fit_nuts`` end to end: compilation and set-up counted (the issue's "compilation counted").
2. The same sampler with initialisation + warm-up and sampling each compiled ONCE, explicitly
   (``jax.jit(...).lower(...).compile()``), then run twice; the second run is timed ("sampling
   alone", warm-up and sampling apart). A second ``MCMC.run`` would not do: NumPyro compiles its
   sampling loop again on every ``run`` call (its loop body is wrapped in a new ``jax.jit`` object,
   a static argument of the loop, each call), so session 11's "second run" timed a compilation.

Stan (``--stan-chains``, its cached model: ``compile_s`` is httpstan's cache look-up unless the
program is new) runs in the same invocation, alternating with the NumPyro settings from round to
round (``--rounds``; the settings' order is reversed every other round). ``--cache-runs`` adds, per
setting, two fresh ``fit_nuts`` processes sharing a new ``SEMIMECH_CACHE_DIR`` (the first stores,
the second is the returning user); ``--compiled-runs`` three fresh processes of
``fit_nuts(compiled=True)`` (NUTS compiled by semimech: since 2026-12-06 two programs, an initialisation and a
block of iterations, also the default unless chains run in parallel): no cache; storing in a new
``SEMIMECH_CACHE_DIR``; loading from it. ``--eager-runs`` one fresh process of ``fit_nuts(compiled=False)``
(NumPyro's ``MCMC.run``, the default path before 2026-12-06).

NumPyro's ``"parallel"`` chains need a device per chain: such a worker gets
``XLA_FLAGS=--xla_force_host_platform_device_count=CHAINS``. ``"vectorized"`` and ``"sequential"``
chains run on one device (one core); Stan runs its chains in separate processes.

Stan runs through PyStan 3 in its own virtual environment (default ``/tmp/stanvenv``;
``python -m venv /tmp/stanvenv && /tmp/stanvenv/bin/pip install pystan``), never a semimech
dependency. If it is missing or the model fails to compile, the JSON says so.

Usage: ``python benchmarks/stan_nuts.py --settings 2:sequential,2:vectorized,16:vectorized
[--warmup 1000 --total-draws 2000 --rounds 2 --cache-runs --compiled-runs --genes 4 --cells-per 30]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

HERE = Path(__file__).resolve().parent

STAN_CODE = """
data { int N; int G; int P; array[N] int pidx; matrix[P, G] tm; matrix[N, G] y; }
parameters { vector<lower=0>[G] b; vector[G - 1] w; real<lower=0, upper=1> k; real<lower=0> sigma; }
model {
  matrix[G, G] A = diag_matrix(rep_vector(1.0, G));
  matrix[P, G] X;
  for (i in 2:G) A[i, i - 1] = -w[i - 1];
  for (p in 1:P) X[p] = (mdivide_left(A, b .* (1 - k * tm[p]')))';
  b ~ lognormal(1, 0.5); w ~ normal(0, 1); k ~ beta(2, 2); sigma ~ normal(0, 1);
  for (n in 1:N) y[n] ~ normal(X[pidx[n]], sigma);
}
"""

STAN_RUNNER = """
import json, sys, time
import aiohttp
import numpy as np
_init = aiohttp.ClientSession.__init__
def _no_timeout(self, *a, **k):  # compiling a model takes longer than aiohttp's default 5 min on a busy machine
    k.setdefault("timeout", aiohttp.ClientTimeout(total=None))
    _init(self, *a, **k)
aiohttp.ClientSession.__init__ = _no_timeout
import stan
cfg = json.load(open(sys.argv[1]))
t = time.perf_counter()
post = stan.build(cfg["code"], data=cfg["data"], random_seed=1)
compile_s = time.perf_counter() - t
t = time.perf_counter()
fit = post.sample(num_chains=cfg["chains"], num_samples=cfg["draws"], num_warmup=cfg["warmup"])
sample_s = time.perf_counter() - t
draws = {}
for name in ("b", "w", "k", "sigma"):
    idx = fit._parameter_indexes(name)
    draws[name] = np.transpose(fit._draws[idx, :, :], (2, 1, 0)).tolist()  # chains, draws, size
div = np.asarray(fit["divergent__"]).sum()
json.dump({"compile_s": compile_s, "sample_s": sample_s, "draws": draws, "divergent": int(div)}, open(sys.argv[2], "w"))
"""


def linear_ss(data, *, likelihood="normal", y=None):
    """The linear steady-state model in NumPyro, on semimech's model data."""
    G = data["n_genes"]
    tm = jnp.asarray(data["target_matrix"])
    with numpyro.plate("genes", G, dim=-1):
        b = numpyro.sample("b", dist.LogNormal(1.0, 0.5))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([G - 1]).to_event(1))
    k = numpyro.sample("k", dist.Beta(2.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    A = jnp.eye(G).at[jnp.arange(1, G), jnp.arange(G - 1)].set(-w)
    X = jnp.linalg.solve(A, (b * (1.0 - k * tm)).T).T
    numpyro.deterministic("mean", X)
    pidx = jnp.asarray(data["perturbation_index"])
    with numpyro.plate("cells", pidx.shape[0], dim=-2), numpyro.plate("genes", G, dim=-1):
        numpyro.sample("y", dist.Normal(X[pidx], sigma), obs=y)


def simulate(G, cells_per, seed=0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    b, w, k, sigma = rng.lognormal(1.0, 0.3, G), rng.normal(0.0, 0.7, G - 1), 0.6, 0.3
    A = np.eye(G)
    A[np.arange(1, G), np.arange(G - 1)] = -w
    labels = ["control"] + [f"g{i}" for i in range(G)]
    tm = np.vstack([np.zeros(G), np.eye(G)])
    X = np.linalg.solve(A, (b * (1 - k * tm)).T).T
    pidx = np.repeat(np.arange(G + 1), cells_per)
    y = X[pidx] + sigma * rng.standard_normal((len(pidx), G))
    frame = pd.DataFrame(y, columns=[f"g{i}" for i in range(G)])
    frame["perturbation"] = [labels[i] for i in pidx]
    return frame, {"b": b.tolist(), "w": w.tolist(), "k": k, "sigma": sigma}


def ess_table(draws: dict) -> dict:
    """Bulk ESS of every scalar component: draws[name] is (chains, draws, size) or (chains, draws)."""
    import arviz_stats

    out = {}
    for name, a in draws.items():
        a = np.asarray(a, dtype=float)
        a = a[..., None] if a.ndim == 2 else a
        for j in range(a.shape[-1]):
            out[f"{name}[{j}]"] = float(arviz_stats.ess(a[..., j]))
    return out


def rhat_max(draws: dict) -> float:
    """Largest rank-normalised split R-hat over every scalar component (same function on both samplers)."""
    import arviz_stats

    worst = 0.0
    for a in draws.values():
        a = np.asarray(a, dtype=float)
        a = a[..., None] if a.ndim == 2 else a
        for j in range(a.shape[-1]):
            worst = max(worst, float(arviz_stats.rhat(a[..., j])))
    return worst


def run_stan(data, chains, warmup, draws, stan_python) -> dict:
    py = Path(stan_python)
    if not py.exists():
        return {"available": False, "reason": f"{py} not found (python -m venv /tmp/stanvenv && "
                                              "/tmp/stanvenv/bin/pip install pystan)"}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, res, runner = Path(tmp) / "cfg.json", Path(tmp) / "res.json", Path(tmp) / "run.py"
        cfg.write_text(json.dumps({"code": STAN_CODE, "data": data, "chains": chains, "draws": draws,
                                   "warmup": warmup}))
        runner.write_text(STAN_RUNNER)
        t = time.perf_counter()
        proc = subprocess.run([str(py), str(runner), str(cfg), str(res)], capture_output=True, text=True)
        process_s = time.perf_counter() - t
        if proc.returncode != 0 or not res.exists():
            return {"available": False, "reason": "PyStan failed: " + proc.stderr[-1500:]}
        out = json.loads(res.read_text())
    out.update(available=True, process_s=process_s)
    return out


def problem(genes, cells_per):
    import semimech as sm

    frame, truth = simulate(genes, cells_per)
    design = sm.Design.from_frame(frame, readouts=[f"g{i}" for i in range(genes)], perturbation_key="perturbation",
                                  control="control")
    assert design.targets == tuple(design.genes), "targets must align with genes for this model"
    return design, truth


def summary(draws: dict) -> dict:
    ess = ess_table(draws)
    return {"min_ess": min(ess.values()), "median_ess": float(np.median(list(ess.values()))), "ess": ess,
            "rhat_max": rhat_max(draws), "mean": {k: np.asarray(v).mean((0, 1)).tolist() for k, v in draws.items()}}


def worker(a) -> dict:
    """One fresh process: ``fit_nuts`` end to end (compilation and set-up counted), then, unless
    ``--fit-only``, NumPyro's same sampler compiled once and timed again: warm-up and sampling apart."""
    import semimech as sm
    from semimech.infer.nuts import _chain_method
    from semimech.infer.spec import ModelSpec

    design, truth = problem(a.genes, a.cells_per)
    spec = ModelSpec(name="linear_ss", model=linear_ss, assumes="linear steady state on a chain")
    method = _chain_method(a.chain_method, a.chains)
    ready = time.time() - a.t0 if a.t0 else None
    if a.compiled_run:
        return compiled_run(a, design, truth, method, ready)
    t, c = time.perf_counter(), time.process_time()
    fit = sm.fit_nuts(spec, design, rng_key=0, num_warmup=a.warmup, num_samples=a.draws, num_chains=a.chains,
                      progress_bar=False, max_tree_depth=10, target_accept_prob=0.8, chain_method=method,
                      dense_mass=a.dense_mass, **({"compiled": False} if a.eager_run else {}))
    out = {"chain_method": method, "path": "fit_nuts(compiled=False)" if a.eager_run else "fit_nuts (default)", "jax_devices": jax.local_device_count(), "ready_s": ready,
           "fit_nuts_s": time.perf_counter() - t, "fit_nuts_cpu_s": time.process_time() - c,
           "fit": summary({k: fit.samples[k] for k in truth}),
           "fit_divergent": int(np.asarray(fit.sample_stats["diverging"]).sum())}
    out["process_to_fit_s"] = time.time() - a.t0 if a.t0 else None
    if a.fit_only:
        return out
    from numpyro.infer import MCMC, NUTS, init_to_median

    data = design.model_data()
    y = jnp.asarray(design.dense_y(), jnp.float32)

    def model(y=None):  # design arrays closed over (static); only y is a traced argument
        linear_ss(data, y=y)

    def make():
        return MCMC(NUTS(model, target_accept_prob=0.8, max_tree_depth=10, init_strategy=init_to_median(num_samples=15),
                         dense_mass=a.dense_mass),
                    num_warmup=a.warmup, num_samples=a.draws, num_chains=a.chains, chain_method=method,
                    progress_bar=False)

    def warm(key, y):  # initialisation + warm-up, as one program
        m = make()
        m.warmup(key, y=y)
        return m.post_warmup_state

    def sample(state, key, y):
        m = make()
        m.post_warmup_state = state
        m.run(key, y=y, extra_fields=("diverging",))
        return ({k: v for k, v in m.get_samples(group_by_chain=True).items() if k in truth},
                m.get_extra_fields(group_by_chain=True)["diverging"])

    # NumPyro's MCMC.run compiles its sampling loop anew on every call (a new jit wrapper per call is a
    # static argument of the loop), so timing a second run() times a compilation again. Here warm-up and
    # sampling are each compiled once, explicitly, and the compiled programs are run and timed.
    key = jax.random.PRNGKey(1)
    t = time.perf_counter()
    warm_c = jax.jit(warm).lower(key, y).compile()
    out["compile_warmup_s"] = time.perf_counter() - t
    state = jax.block_until_ready(warm_c(key, y))
    t = time.perf_counter()
    sample_c = jax.jit(sample).lower(state, key, y).compile()
    out["compile_sampling_s"] = time.perf_counter() - t
    jax.block_until_ready(sample_c(state, key, y))  # first execution (allocation, thread pools) not timed
    key = jax.random.PRNGKey(2)
    t = time.perf_counter()
    state = jax.block_until_ready(warm_c(key, y))
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    draws, div = jax.block_until_ready(sample_c(state, key, y))
    out["timed"] = {"warmup_s": warm_s, "sampling_s": time.perf_counter() - t}
    out["timed"].update(summary({k: np.asarray(v) for k, v in draws.items()}))
    out["timed"]["divergent"] = int(np.asarray(div).sum())
    return out


def compiled_run(a, design, truth, method, ready) -> dict:
    """``fit_nuts(compiled=True)`` end to end: NUTS compiled by semimech (an initialisation and a block of
    iterations), stored in and loaded from semimech's opt-in persistent cache when ``SEMIMECH_CACHE_DIR`` is set."""
    import semimech as sm
    from semimech.infer.spec import ModelSpec

    spec = ModelSpec(name="linear_ss", model=linear_ss, assumes="linear steady state on a chain")
    t, c = time.perf_counter(), time.process_time()
    fit = sm.fit_nuts(spec, design, rng_key=0, num_warmup=a.warmup, num_samples=a.draws, num_chains=a.chains,
                      progress_bar=False, max_tree_depth=10, target_accept_prob=0.8, chain_method=method,
                      dense_mass=a.dense_mass, compiled=True)
    total = time.perf_counter() - t
    return {"chain_method": method, "path": "fit_nuts(compiled=True)", "jax_devices": jax.local_device_count(),
            "ready_s": ready, "fit_nuts_s": total, "fit_nuts_cpu_s": time.process_time() - c,
            "fit": summary({k: fit.samples[k] for k in truth}),
            "fit_divergent": int(np.asarray(fit.sample_stats["diverging"]).sum()),
            "process_to_fit_s": time.time() - a.t0 if a.t0 else None}


def run_worker(setting, a, *, fit_only=False, cache_dir=None, jax_cache_dir=None, compiled_run=False,
               eager_run=False) -> dict:
    """``setting`` = (chains, chain_method, dense_mass) in a fresh Python process."""
    chains, method, dense = setting
    draws = a.total_draws // chains
    env = dict(os.environ)
    if method == "parallel":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={chains}").strip()
    env.pop("SEMIMECH_CACHE_DIR", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache_dir:
        env["SEMIMECH_CACHE_DIR"] = str(cache_dir)
    if jax_cache_dir:  # JAX's own persistent cache (global JAX config, set by the user; not semimech's)
        env["JAX_COMPILATION_CACHE_DIR"] = str(jax_cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "worker.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(res), "--genes", str(a.genes),
               "--cells-per", str(a.cells_per), "--chains", str(chains), "--draws", str(draws), "--warmup",
               str(a.warmup), "--chain-method", method, "--t0", repr(time.time())]
        cmd += ["--dense-mass"] if dense else []
        cmd += ["--fit-only"] if fit_only else []
        cmd += ["--compiled-run"] if compiled_run else []
        cmd += ["--eager-run"] if eager_run else []
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        process_s = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"worker {setting} failed:\n{proc.stderr[-3000:]}")
        out = json.loads(res.read_text())
    out.update(chains=chains, draws=draws, warmup=a.warmup, dense_mass=dense, process_s=process_s,
               load_avg=os.getloadavg()[0], cache=("semimech" if cache_dir else "jax" if jax_cache_dir else None))
    return out


def parse_settings(text: str):
    """``"2:sequential,16:vectorized:dense"`` -> [(2, "sequential", False), (16, "vectorized", True)]."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("diag", "dense")):
            raise SystemExit(f"--settings item {item!r}: expected CHAINS:METHOD[:diag|dense]")
        if parts[1] not in ("auto", "sequential", "parallel", "vectorized"):
            raise SystemExit(f"--settings item {item!r}: unknown chain method {parts[1]!r}")
        out.append((int(parts[0]), parts[1], len(parts) == 3 and parts[2] == "dense"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", type=int, default=4)
    p.add_argument("--cells-per", type=int, default=30)
    p.add_argument("--warmup", type=int, default=1000, help="warm-up iterations per chain, NumPyro and Stan alike")
    p.add_argument("--total-draws", type=int, default=2000,
                   help="post-warm-up draws over all chains: each NumPyro setting's chains share them "
                        "(16 chains x 125); Stan's --stan-chains likewise")
    p.add_argument("--settings", default="2:auto",
                   help="NumPyro settings, CHAINS:METHOD[:diag|dense] separated by commas, e.g. "
                        "'2:sequential,4:vectorized,16:vectorized:dense'; METHOD as fit_nuts's chain_method "
                        "(parallel: the worker gets XLA_FLAGS=--xla_force_host_platform_device_count=CHAINS)")
    p.add_argument("--stan-chains", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat everything; the order of the NumPyro settings is reversed every other round")
    p.add_argument("--cache-runs", action="store_true",
                   help="per setting, two more fresh processes with semimech's opt-in persistent cache "
                        "(SEMIMECH_CACHE_DIR, a new folder): the first stores, the second is the returning user")
    p.add_argument("--compiled-runs", action="store_true",
                   help="per setting, three more fresh processes timing fit_nuts(compiled=True): no cache; "
                        "semimech's persistent cache (a new folder): stores; then loads, the returning user")
    p.add_argument("--eager-runs", action="store_true",
                   help="per setting, one more fresh process timing fit_nuts(compiled=False): NumPyro's MCMC.run, "
                        "the default path before 2026-12-06")
    p.add_argument("--jax-cache-runs", action="store_true",
                   help="likewise with JAX's own persistent compilation cache (JAX_COMPILATION_CACHE_DIR)")
    p.add_argument("--stan-python", default="/tmp/stanvenv/bin/python")
    p.add_argument("--out", default=str(HERE / "results" / "stan_nuts.json"))
    # one fresh worker process (internal)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--chains", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--draws", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--chain-method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dense-mass", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fit-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compiled-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--eager-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        Path(a.worker).write_text(json.dumps(worker(a)))
        return

    if a.chains is not None or a.draws is not None or a.chain_method is not None:
        raise SystemExit("--chains/--draws/--chain-method (session 11's options) are now --settings CHAINS:METHOD "
                         "and --total-draws (draws over all chains), e.g. --settings 2:sequential --total-draws 2000")
    settings = parse_settings(a.settings)
    for chains, _, _ in settings + [(a.stan_chains, None, None)]:
        if a.total_draws % chains:
            raise SystemExit(f"--total-draws {a.total_draws} is not a multiple of {chains} chains")
    design, truth = problem(a.genes, a.cells_per)
    stan_data = {"N": int(design.n_obs), "G": a.genes, "P": len(design.perturbations),
                 "pidx": (design.perturbation_index + 1).tolist(), "tm": np.asarray(design.target_matrix).tolist(),
                 "y": design.dense_y().tolist()}
    res = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(), "argv": sys.argv[1:]},
           "problem": {"genes": a.genes, "rows": int(design.n_obs), "warmup": a.warmup, "total_draws": a.total_draws,
                       "truth": truth},
           "rounds": []}
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for r in range(a.rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        rnd = {"numpyro": [], "stan": None}
        steps = [("stan", None)] + [("np", s) for s in order] if r % 2 else [("np", s) for s in order] + [("stan", None)]
        for kind, s in steps:
            if kind == "stan":
                load = os.getloadavg()[0]
                st = run_stan(stan_data, a.stan_chains, a.warmup, a.total_draws // a.stan_chains, a.stan_python)
                if st.get("available"):
                    st.update(summary(st.pop("draws")))
                st.update(chains=a.stan_chains, load_avg=load)
                rnd["stan"] = st
                print(f"round {r} Stan: {json.dumps({k: v for k, v in st.items() if k not in ('ess', 'mean')})}",
                      flush=True)
                continue
            load = os.getloadavg()[0]
            w = run_worker(s, a)
            w["load_before"] = load
            if a.cache_runs:
                with tempfile.TemporaryDirectory() as cdir:
                    w["cache_store"] = run_worker(s, a, fit_only=True, cache_dir=cdir)
                    w["cache_reuse"] = run_worker(s, a, fit_only=True, cache_dir=cdir)
                    w["cache_files"] = len(list(Path(cdir).glob("*.bin")))
            if a.compiled_runs:
                w["compiled_fresh"] = run_worker(s, a, fit_only=True, compiled_run=True)
                with tempfile.TemporaryDirectory() as cdir:
                    w["compiled_cache_store"] = run_worker(s, a, fit_only=True, cache_dir=cdir, compiled_run=True)
                    w["compiled_cache_reuse"] = run_worker(s, a, fit_only=True, cache_dir=cdir, compiled_run=True)
            if a.eager_runs:
                w["eager_fresh"] = run_worker(s, a, fit_only=True, eager_run=True)
            if a.jax_cache_runs:
                with tempfile.TemporaryDirectory() as cdir:
                    w["jax_cache_store"] = run_worker(s, a, fit_only=True, jax_cache_dir=cdir)
                    w["jax_cache_reuse"] = run_worker(s, a, fit_only=True, jax_cache_dir=cdir)
            rnd["numpyro"].append(w)
            tm = w["timed"]
            print(f"round {r} NumPyro {s}: fit_nuts {w['fit_nuts_s']:.1f} s (min ESS {w['fit']['min_ess']:.0f}); "
                  f"timed warm-up {tm['warmup_s']:.1f} s + sampling {tm['sampling_s']:.1f} s, min ESS "
                  f"{tm['min_ess']:.0f}, R-hat {tm['rhat_max']:.3f}, divergent {tm['divergent']}; load {load:.1f}",
                  flush=True)
        res["rounds"].append(rnd)
        out_path.write_text(json.dumps(res, indent=1))
    print_table(res)
    print(f"wrote {out_path}")


def print_table(res):
    """Per round and setting: walls, ESS, R-hat, divergences, and the ratios against that round's Stan."""
    print("| round | sampler | chains x draws | warm-up s | sampling s | min bulk ESS | R-hat max | div | "
          "min ESS/s (warm-up+sampling) | ratio | fit_nuts / Stan end-to-end s | e2e ratio | load |")
    for r, rnd in enumerate(res["rounds"]):
        st = rnd["stan"]
        if not st or not st.get("available"):
            print(f"round {r}: Stan not available: {(st or {}).get('reason', '')[:200]}")
            continue
        st_rate = st["min_ess"] / st["sample_s"]
        st_e2e = st["min_ess"] / (st["compile_s"] + st["sample_s"])
        print(f"| {r} | Stan | {st['chains']} x {res['problem']['total_draws'] // st['chains']} | | "
              f"{st['sample_s']:.1f} (both) | {st['min_ess']:.0f} | {st['rhat_max']:.3f} | {st['divergent']} | "
              f"{st_rate:.0f} | 1 | {st['compile_s'] + st['sample_s']:.1f} | 1 | {st['load_avg']:.1f} |")
        for w in rnd["numpyro"]:
            tm = w["timed"]
            rate = tm["min_ess"] / (tm["warmup_s"] + tm["sampling_s"])
            e2e = w["fit"]["min_ess"] / w["fit_nuts_s"]
            extra = ""
            for key in ("eager_fresh", "cache_store", "cache_reuse", "jax_cache_reuse", "compiled_fresh", "compiled_cache_store", "compiled_cache_reuse"):
                if key in w:
                    c = w[key]
                    extra += f" {key} {c['fit_nuts_s']:.1f} s ({c['fit']['min_ess'] / c['fit_nuts_s'] / st_e2e:.2f})"
            name = f"NumPyro {w['chain_method']}{' dense' if w['dense_mass'] else ''}"
            print(f"| {r} | {name} | {w['chains']} x {w['draws']} | {tm['warmup_s']:.1f} | {tm['sampling_s']:.1f} | "
                  f"{tm['min_ess']:.0f} | {tm['rhat_max']:.3f} | {tm['divergent']} | {rate:.0f} | {rate / st_rate:.2f} | "
                  f"{w['fit_nuts_s']:.1f} | {e2e / st_e2e:.2f} | {w['load_before']:.1f} |{extra}")


if __name__ == "__main__":
    main()
