"""``predict(..., num_cells=...)`` on a count fit: the observed means of new cells drawn on the host against JAX's
sampler called eagerly (the path before).

    cd /tmp && OPENBLAS_NUM_THREADS=1 python <repo>/benchmarks/predict_observed.py [--cells 3000] [--genes 300]
        [--json PATH] [--modes host jax_draws]

The simulated counts and additive fit of ``benchmarks/cv_sparse.py`` (300 SVI steps, 30 draws; not timed). Then
three ``predict`` calls with ``num_cells=1`` (``observed_mean``, the interval for an observation that held-out data
are scored against): the five conditions (cold: the first call of the process, its replay program compiled too), the
same again (warm), and two of them (a new shape). Each mode runs in its own fresh process, one after the other:
``host`` (the package as it is: ``measurement.mean_of_cells`` draws gamma then Poisson with NumPy) and ``jax_draws``
(``mean_of_cells`` as it was: ``NegativeBinomial2(...).sample`` called eagerly, which compiles JAX's gamma and Poisson
samplers for each shape). Prints a table and writes JSON (default ``benchmarks/results/predict_observed.json``):
wall seconds per call, and the mean and sd over draws and entries of ``observed_mean`` (equal up to Monte Carlo
error: the draws differ).
"""

from __future__ import annotations

import time
import warnings


def _jax_mean_of_cells(rng_key, mean, noise, *, likelihood: str, num_cells):
    """``measurement.mean_of_cells`` before it drew on the host (JAX's samplers, called eagerly)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro.distributions as dist

    if likelihood == "normal":
        return np.asarray(mean + noise / jnp.sqrt(num_cells) * jax.random.normal(rng_key, mean.shape))
    total = dist.NegativeBinomial2(mean=num_cells * mean, concentration=num_cells * noise).sample(rng_key)
    return np.asarray(total / num_cells)


def run(mode: str, n: int, g: int) -> dict:
    import importlib

    import numpy as np
    from cv_sparse import simulated_count_fit

    import semimech as sm

    predict_module = importlib.import_module("semimech.infer.predict")  # the module (the package exports the function)

    warnings.simplefilter("ignore")
    d, fit, _ = simulated_count_fit(n, g)
    if mode == "jax_draws":
        predict_module.mean_of_cells = _jax_mean_of_cells
    labels = [lab for lab in d.perturbations if lab != d.control]
    calls = {"cold": labels, "warm": labels, "new_shape": labels[:2]}
    out = {"mode": mode, "cells": int(d.n_obs), "genes": g, "draws": int(fit.flat(fit.spec.mean_site).shape[0])}
    obs = None
    for i, (name, labs) in enumerate(calls.items()):
        t = time.perf_counter()
        p = sm.predict(fit, labs, rng_key=i, num_cells=1)
        out[f"{name}_seconds"] = time.perf_counter() - t
        obs = p.draws["observed_mean"] if obs is None else obs
    out["observed_mean_mean"] = float(np.mean(obs))
    out["observed_mean_sd"] = float(np.mean(np.std(obs, axis=0)))
    return out


def main() -> None:
    from cv_sparse import modes_in_fresh_processes

    got = modes_in_fresh_processes(__file__, run, ("host", "jax_draws"), cells=3000, genes=300,
                                   json_name="predict_observed.json")
    if got is None:
        return
    rows, args = got
    print("| observed means drawn by | cold call s | warm call s | new shape s | mean | sd over draws |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['cold_seconds']:.2f} | {r['warm_seconds']:.3f} | {r['new_shape_seconds']:.3f} | "
              f"{r['observed_mean_mean']:.4f} | {r['observed_mean_sd']:.4f} |")
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['mode']} / {base['mode']}: cold {r['cold_seconds'] / base['cold_seconds']:.2f}x, new shape "
              f"{r['new_shape_seconds'] / base['new_shape_seconds']:.2f}x")


if __name__ == "__main__":
    main()
