"""NUTS on a small linear steady-state model: semimech/NumPyro against Stan (PyStan).

Model (G genes on a chain g0 -> g1 -> ... with unit decay): the steady state of
``dx/dt = b_p + W x - x`` is ``x_p = (I - W)^-1 b_p`` with ``W[i, i-1] = w_i``; a knockdown
of gene t scales its production, ``b_p = b * (1 - k e_t)``; cells are ``y ~ Normal(x_p, sigma)``.
Priors: ``b ~ LogNormal(1, 0.5)``, ``w ~ Normal(0, 1)``, ``k ~ Beta(2, 2)``,
``sigma ~ HalfNormal(1)``. The same data, chains, warm-up and draws go to both samplers; the
effective sample size of every scalar parameter is computed by the same function
(``arviz_stats.ess``, bulk) on both sets of draws. Reported: min and median ESS per second of
warm-up + sampling (compilation excluded and reported apart) and the ratio; and end to end
(``fit_nuts`` in a fresh process, compilation and set-up included, against Stan's compile +
sampling), the issue's "compilation counted for both".

NumPyro's chains run as ``fit_nuts(chain_method="auto")`` chooses (``--chain-method``): in parallel
when JAX has a device per chain, which on a CPU needs
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before JAX starts (so both samplers use
two cores: Stan runs its chains in two processes), else one after the other.

Stan runs through PyStan 3 in its own virtual environment (default ``/tmp/stanvenv``;
``python -m venv /tmp/stanvenv && /tmp/stanvenv/bin/pip install pystan``), never a semimech
dependency. If it is missing or the model fails to compile, the JSON says so.

Usage: ``[XLA_FLAGS=--xla_force_host_platform_device_count=2] python benchmarks/stan_nuts.py
[--genes 4 --cells-per 30 --warmup 1000 --draws 1000 --chain-method auto]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
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


def run_stan(data, args) -> dict:
    py = Path(args.stan_python)
    if not py.exists():
        return {"available": False, "reason": f"{py} not found (python -m venv /tmp/stanvenv && "
                                              "/tmp/stanvenv/bin/pip install pystan)"}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, res, runner = Path(tmp) / "cfg.json", Path(tmp) / "res.json", Path(tmp) / "run.py"
        cfg.write_text(json.dumps({"code": STAN_CODE, "data": data, "chains": args.chains, "draws": args.draws,
                                   "warmup": args.warmup}))
        runner.write_text(STAN_RUNNER)
        proc = subprocess.run([str(py), str(runner), str(cfg), str(res)], capture_output=True, text=True)
        if proc.returncode != 0 or not res.exists():
            return {"available": False, "reason": "PyStan failed: " + proc.stderr[-1500:]}
        out = json.loads(res.read_text())
    out["available"] = True
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", type=int, default=4)
    p.add_argument("--cells-per", type=int, default=30)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--chain-method", default="auto", choices=("auto", "sequential", "parallel", "vectorized"),
                   help="NumPyro's chains (fit_nuts and the timed run alike); auto: parallel when JAX has a device "
                        "per chain (XLA_FLAGS=--xla_force_host_platform_device_count=2 on a CPU), else sequential")
    p.add_argument("--stan-python", default="/tmp/stanvenv/bin/python")
    p.add_argument("--out", default=str(HERE / "results" / "stan_nuts.json"))
    a = p.parse_args(argv)

    import semimech as sm
    from semimech.infer.spec import ModelSpec

    frame, truth = simulate(a.genes, a.cells_per)
    design = sm.Design.from_frame(frame, readouts=[f"g{i}" for i in range(a.genes)], perturbation_key="perturbation",
                                  control="control")
    assert design.targets == tuple(design.genes), "targets must align with genes for this model"
    spec = ModelSpec(name="linear_ss", model=linear_ss, assumes="linear steady state on a chain")
    # end to end through semimech (compilation included), then the same sampler timed without compilation
    t = time.perf_counter()
    from semimech.infer.fit import _chain_method

    method = _chain_method(a.chain_method, a.chains)
    fit = sm.fit_nuts(spec, design, rng_key=0, num_warmup=a.warmup, num_samples=a.draws, num_chains=a.chains,
                      progress_bar=False, max_tree_depth=10, target_accept_prob=0.8, chain_method=method)
    semimech_total = time.perf_counter() - t
    from numpyro.infer import MCMC, NUTS, init_to_median

    data = design.model_data()
    y = jnp.asarray(design.dense_y(), jnp.float32)
    def model(y=None):  # design arrays closed over (static); only y is a traced argument
        linear_ss(data, y=y)

    mcmc = MCMC(NUTS(model, target_accept_prob=0.8, max_tree_depth=10, init_strategy=init_to_median(num_samples=15)),
                num_warmup=a.warmup, num_samples=a.draws, num_chains=a.chains, chain_method=method,
                progress_bar=False, jit_model_args=True)
    mcmc.run(jax.random.PRNGKey(1), y=y, extra_fields=("diverging",))  # compiles (jit_model_args: the second run reuses it)
    t = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(2), y=y, extra_fields=("diverging",))
    numpyro_sample_s = time.perf_counter() - t
    np_draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items() if k in truth}
    ess_np = ess_table(np_draws)
    ess_fit = ess_table({k: fit.samples[k] for k in truth})

    stan_data = {"N": int(design.n_obs), "G": a.genes, "P": len(design.perturbations),
                 "pidx": (design.perturbation_index + 1).tolist(), "tm": np.asarray(design.target_matrix).tolist(),
                 "y": design.dense_y().tolist()}
    stan = run_stan(stan_data, a)
    res = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]},
           "chain_method": method, "jax_devices": jax.local_device_count(),
           "problem": {"genes": a.genes, "rows": int(design.n_obs), "chains": a.chains, "warmup": a.warmup,
                       "draws": a.draws, "truth": truth},
           "semimech_fit_nuts_total_s": semimech_total,
           "semimech_min_ess": min(ess_fit.values()),
           "semimech_min_ess_per_s_end_to_end": min(ess_fit.values()) / semimech_total,
           "numpyro_sample_s": numpyro_sample_s, "numpyro_ess": ess_np,
           "numpyro_min_ess_per_s": min(ess_np.values()) / numpyro_sample_s,
           "numpyro_median_ess_per_s": float(np.median(list(ess_np.values()))) / numpyro_sample_s,
           "numpyro_divergent": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
           "posterior_mean_numpyro": {k: np.asarray(v).mean((0, 1)).tolist() for k, v in np_draws.items()},
           "stan": {k: v for k, v in stan.items() if k != "draws"}}
    if stan.get("available"):
        ess_st = ess_table(stan["draws"])
        res["stan"].update({"ess": ess_st, "min_ess_per_s": min(ess_st.values()) / stan["sample_s"],
                            "median_ess_per_s": float(np.median(list(ess_st.values()))) / stan["sample_s"],
                            "posterior_mean": {k: np.asarray(v).mean((0, 1)).tolist() for k, v in stan["draws"].items()}})
        res["ratio_min_ess_per_s_numpyro_over_stan"] = res["numpyro_min_ess_per_s"] / res["stan"]["min_ess_per_s"]
        stan_total = stan["compile_s"] + stan["sample_s"]
        res["stan"]["min_ess_per_s_end_to_end"] = min(ess_st.values()) / stan_total
        res["ratio_end_to_end_semimech_over_stan"] = (res["semimech_min_ess_per_s_end_to_end"]
                                                      / res["stan"]["min_ess_per_s_end_to_end"])
        res["ratio_median_ess_per_s_numpyro_over_stan"] = res["numpyro_median_ess_per_s"] / res["stan"]["median_ess_per_s"]
    print(f"{'':22}{'sample s':>10}{'min ESS/s':>12}{'median ESS/s':>14}")
    print(f"{'semimech/NumPyro':22}{numpyro_sample_s:>10.2f}{res['numpyro_min_ess_per_s']:>12.1f}"
          f"{res['numpyro_median_ess_per_s']:>14.1f}   (fit_nuts end to end {semimech_total:.1f} s)")
    if stan.get("available"):
        print(f"{'Stan (PyStan)':22}{stan['sample_s']:>10.2f}{res['stan']['min_ess_per_s']:>12.1f}"
              f"{res['stan']['median_ess_per_s']:>14.1f}   (compile {stan['compile_s']:.1f} s)")
        print(f"ratio NumPyro / Stan, min ESS/s: {res['ratio_min_ess_per_s_numpyro_over_stan']:.2f} (sampling); "
              f"{res['ratio_end_to_end_semimech_over_stan']:.2f} (fit_nuts vs Stan, compilation counted for both)")
    else:
        print("Stan: not available —", stan["reason"][:300])
    print(f"NumPyro chains: {method} ({jax.local_device_count()} JAX device(s))")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
