"""Overhead of semimech's ``fit_svi`` against a hand-written NumPyro model of the same math.

Same data (a simulated screen), same guide (AutoNormal, init_to_median, init_scale 0.05), same
optimiser (Adam with gradient clipping), same number of steps, same posterior draws (400, plus
the deterministic ``effect`` and ``mean`` sites). The hand-written model is the additive model
typed out directly on arrays. Runs alternate (semimech, raw, semimech, raw, ...) in one process
so that both see the same machine load, after one uncounted warm-up of each; each run
includes its own compilation of the model, as a user's does. Reported: the median and minimum wall time of each, and their ratio (target <= 1.1).

Usage: ``python benchmarks/overhead.py [--cells 2000 --genes 200 --targets 20 --steps 1000 --repeats 3]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Predictive, Trace_ELBO, autoguide, init_to_median

HERE = Path(__file__).resolve().parent


def raw_additive(pidx, tm, is_comb, sf, base_loc, n_genes, y=None):
    """The additive NB model written directly in NumPyro (no semimech imports)."""
    n_pert, n_targets = tm.shape
    genes = numpyro.plate("genes", n_genes, dim=-1)
    with genes:
        baseline = numpyro.sample("baseline", dist.Normal(base_loc, 2.0))
        phi = numpyro.sample("concentration", dist.LogNormal(1.0, 1.5))
    tau = numpyro.sample("effect_scale", dist.HalfNormal(0.5))
    with numpyro.plate("targets", n_targets, dim=-2), genes:
        local = numpyro.sample("effect_local", dist.HalfCauchy(1.0))
        z = numpyro.sample("effect_z", dist.Normal(0.0, 1.0))
        effect = numpyro.deterministic("effect", tau * local * z)
    int_scale = numpyro.sample("interaction_scale", dist.HalfNormal(0.5))
    with genes:
        int_sd = numpyro.sample("interaction_sd", dist.HalfNormal(1.0)) * int_scale
    with numpyro.plate("perturbations", n_pert, dim=-2), genes:
        iz = numpyro.sample("interaction_z", dist.Normal(0.0, 1.0))
        loc_p = baseline + tm @ effect + is_comb[:, None] * int_sd * iz
        numpyro.deterministic("mean", jnp.exp(loc_p))
    with numpyro.plate("cells", pidx.shape[0], dim=-2), genes:
        numpyro.sample("y", dist.NegativeBinomial2(mean=sf[:, None] * jnp.exp(loc_p[pidx]), concentration=phi), obs=y)


def fit_raw(arrays, y, *, steps, seed, num_samples=400):
    guide = autoguide.AutoNormal(raw_additive, init_loc_fn=init_to_median(num_samples=15), init_scale=0.05)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(0.02))
    svi = SVI(raw_additive, guide, optim, Trace_ELBO())
    k_fit, k_draw = jax.random.split(jax.random.PRNGKey(seed))
    res = svi.run(k_fit, steps, *arrays, y=y, progress_bar=False, stable_update=True)
    k_guide, k_det = jax.random.split(k_draw)
    post = dict(guide.sample_posterior(k_guide, res.params, sample_shape=(num_samples,)))
    post.update(Predictive(raw_additive, posterior_samples=post, return_sites=["effect", "mean"])(k_det, *arrays))
    return {k: np.asarray(v) for k, v in post.items()}, np.asarray(res.losses)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--genes", type=int, default=200)
    p.add_argument("--targets", type=int, default=20)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "results" / "overhead.json"))
    a = p.parse_args(argv)

    import semimech as sm
    from semimech.models import additive
    from semimech.simulate import simulate_screen

    adata, _ = simulate_screen(n_cells=a.cells, n_genes=a.genes, n_targets=a.targets, combos=5, density=0.2,
                               rng_key=0)
    design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    times = {"semimech": [], "raw": []}
    losses = {}

    def run_semimech(r):
        t = time.perf_counter()
        fit = sm.fit_svi(additive.SPEC, design, rng_key=r, num_steps=a.steps, progress_bar=False, likelihood="negbin")
        losses["semimech"] = fit.losses
        return time.perf_counter() - t

    def run_raw(r):
        t = time.perf_counter()
        # the user's own data preparation is part of the raw path
        d = design.model_data()
        arrays = (jnp.asarray(d["perturbation_index"]), jnp.asarray(d["target_matrix"]),
                  jnp.asarray(d["is_combination"]), jnp.asarray(d["size_factors"]),
                  jnp.asarray(d["baseline_loc"]), design.n_genes)
        _, losses["raw"] = fit_raw(arrays, jnp.asarray(design.dense_y(), jnp.float32), steps=a.steps, seed=r)
        return time.perf_counter() - t

    # warm-up (not counted): the first fit in a process pays JAX's one-off compilation of every
    # eager operation for these shapes, which the second would then get for free
    warm = {"semimech": run_semimech(100), "raw": run_raw(100)}
    for r in range(a.repeats):
        order = (("semimech", run_semimech), ("raw", run_raw))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            times[name].append(fn(r))
        print(f"repeat {r}: semimech {times['semimech'][-1]:.1f} s, raw NumPyro {times['raw'][-1]:.1f} s", flush=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    mn = {k: float(np.min(v)) for k, v in times.items()}
    out = {
        "meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "cpus": os.cpu_count(),
                 "machine": platform.machine(), "load_avg": os.getloadavg()[0]},
        "problem": {"cells": a.cells, "genes": a.genes, "targets": a.targets, "steps": a.steps, "likelihood": "negbin"},
        "seconds": times, "warmup_s": warm, "median_s": med, "min_s": mn,
        "ratio_median": med["semimech"] / med["raw"], "ratio_min": mn["semimech"] / mn["raw"],
        "final_loss": {k: float(np.mean(v[-100:])) for k, v in losses.items()},
        "target_ratio": 1.1,
    }
    print(f"\n{'':12}{'median s':>10}{'min s':>10}")
    for k in ("semimech", "raw"):
        print(f"{k:12}{med[k]:>10.2f}{mn[k]:>10.2f}")
    print(f"ratio semimech / raw NumPyro: median {out['ratio_median']:.3f}, min {out['ratio_min']:.3f} (target <= 1.1)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
