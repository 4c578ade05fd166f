"""Simulation-based calibration of the default inference on small unreplicated factorial designs.

Which inference keeps the effects when every condition is measured once? Data sets are drawn
from the additive model's own prior on a stimulus x inhibitor factorial design (``S`` stimuli x
``I`` inhibitors, each alone and every pair, plus the control; one row per condition; ``G``
readouts), each is fitted, and the rank of the true value among ``L`` posterior draws is
recorded for a few quantities (a stimulus effect, an inhibitor effect, a noise sd, the global
effect scale, a combination's mean). A calibrated method gives uniform ranks (chi-square test
over ``BINS`` bins, p > 0.01). Also reported: the slope of posterior-mean effects on true
effects (1 = kept, 0 = collapsed) and the coverage of 90% intervals of the effects.

Methods (the settings of ``sm.fit_svi`` / ``sm.fit_nuts``: Adam with clipping and cosine decay,
``init_to_median``, ``init_scale=0.05``):

- ``normal`` (AutoNormal), ``lowrank`` (rank 10), ``mvn`` (full-rank), ``map`` (AutoDelta:
  a point, must fail), ``laplace`` (Laplace approximation at the MAP), ``nuts`` (2 chains x
  ``--samples`` after ``--warmup``, thinned to ``L`` draws);
- negative control ``nuts_wrong``: NUTS on a deliberately wrong model, the additive model whose
  effect prior is 10x too narrow (``effect_prior_scale=0.05`` where the data come from 0.5):
  calibration must fail.

Model sizes are fixed by the design so that every fit reuses one compilation (SVI fits are
vectorised over data sets; NUTS reuses its compiled kernel through ``jit_model_args``).

    python benchmarks/sbc_inference.py --methods normal nuts nuts_wrong --datasets 200
    python benchmarks/sbc_inference.py --quick          # 20 data sets, fewer steps: a smoke run

Writes ``benchmarks/results/sbc_inference.json``; the reading is in ``RESULTS_inference.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, autoguide, init_to_median
from scipy import stats

import semimech as sm
from semimech.models import additive

BINS = 10
QUANTITIES = ("effect_a", "effect_b", "noise_sd", "effect_scale", "condition_mean")


def factorial_design(n_stim: int, n_inhib: int, n_genes: int) -> sm.Design:
    """Control, each stimulus and inhibitor alone, every stimulus x inhibitor pair; one row each."""
    stims, inhibs = [f"s{i}" for i in range(n_stim)], [f"i{j}" for j in range(n_inhib)]
    labels = ["control"] + stims + inhibs + [f"{s}+{i}" for s in stims for i in inhibs]
    values = np.random.default_rng(0).normal(0.0, 1.0, (len(labels), n_genes))  # placeholders (continuous)
    frame = pd.DataFrame(values, columns=[f"g{k}" for k in range(n_genes)])
    frame["perturbation"] = labels
    frame.index = labels
    return sm.Design.from_frame(frame, readouts=list(frame.columns[:-1]), perturbation_key="perturbation",
                                control="control")


def context_design(n_ctx: int, n_inhib: int, n_genes: int) -> sm.Design:
    """HepG2-like: contexts (batches) x (control + each inhibitor alone), effects specific to a context."""
    labels, ctx = [], []
    for c in range(n_ctx):
        labels += ["control"] + [f"i{j}@c{c}" for j in range(n_inhib)]
        ctx += [f"c{c}"] * (n_inhib + 1)
    values = np.random.default_rng(0).normal(0.0, 1.0, (len(labels), n_genes))
    frame = pd.DataFrame(values, columns=[f"g{k}" for k in range(n_genes)])
    frame["perturbation"], frame["context"] = labels, ctx
    frame.index = [f"{c}|{lab}" for c, lab in zip(ctx, labels)]
    return sm.Design.from_frame(frame, readouts=[f"g{k}" for k in range(n_genes)], perturbation_key="perturbation",
                                control="control", batch_key="context")


def fixed_data(design: sm.Design) -> dict:
    """Model data with the data-derived prior centres fixed (baseline 0, scale 1, no floor)."""
    data = design.model_data()
    data["baseline_loc"] = np.zeros(design.n_genes, np.float32)
    data["baseline_scale"] = np.ones(design.n_genes, np.float32)
    data["noise_floor"] = 0.0
    return data


def quantities(draws: dict, design: sm.Design) -> np.ndarray:
    """(draws, QUANTITIES) from a dict of site draws (leading axis: draws)."""
    t = list(design.targets)
    if "s0" in t:  # factorial layout
        a, b, cond = t.index("s0"), t.index("i0"), design.perturbations.index("s0+i0")
    else:  # context layout: two inhibitors of context c0, and the mean of the first
        a, b, cond = t.index("i0@c0"), t.index("i1@c0"), design.perturbations.index("i0@c0")
    return np.stack([draws["effect"][:, a, 0], draws["effect"][:, b, 0],
                     draws["noise_sd"][:, 0], draws["effect_scale"], draws["mean"][:, cond, 0]], axis=-1)


def _guide(kind: str, model):
    init = init_to_median(num_samples=15)
    if kind == "normal":
        return autoguide.AutoNormal(model, init_loc_fn=init, init_scale=0.05)
    if kind == "lowrank":
        return autoguide.AutoLowRankMultivariateNormal(model, init_loc_fn=init, rank=10, init_scale=0.05)
    if kind == "mvn":
        return autoguide.AutoMultivariateNormal(model, init_loc_fn=init, init_scale=0.05)
    if kind == "laplace":
        return autoguide.AutoLaplaceApproximation(model, init_loc_fn=init)
    return autoguide.AutoDelta(model, init_loc_fn=init)


def fit_svi_batch(kind: str, data: dict, ys: np.ndarray, keys, *, steps: int, draws: int, design) -> np.ndarray:
    """Fit each data set by SVI (vectorised); return (datasets, draws, QUANTITIES)."""
    model = functools.partial(additive.model, likelihood="normal")
    guide = _guide(kind, model)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(optax.cosine_decay_schedule(0.02, steps, 0.01)))
    svi = SVI(model, guide, optim, Trace_ELBO())
    sites = ["effect", "noise_sd", "effect_scale", "mean"]

    def one(key, y):
        k_init, k_draw, k_det = jax.random.split(key, 3)
        state = svi.init(k_init, data, y=y)
        state = jax.lax.fori_loop(0, steps, lambda i, s: svi.stable_update(s, data, y=y)[0], state)
        params = svi.get_params(state)
        post = guide.sample_posterior(k_draw, params, data, y=y, sample_shape=(draws,))
        post = {k: v for k, v in post.items() if k != "y"}
        det = Predictive(model, posterior_samples=post, return_sites=["effect", "mean"])(k_det, data)
        return {**{k: post[k] for k in ("noise_sd", "effect_scale")}, **det}

    out = jax.jit(jax.vmap(one))(keys, jnp.asarray(ys))
    out = {k: np.asarray(v) for k, v in out.items() if k in sites}
    q = np.stack([quantities({k: v[i] for k, v in out.items()}, design) for i in range(ys.shape[0])])
    return q, _effect_summary(out["effect"])


def _effect_summary(effect: np.ndarray) -> np.ndarray:
    """(datasets, 3, targets * genes): posterior mean, 5% and 95% quantiles of every effect."""
    e = effect.reshape(effect.shape[0], effect.shape[1], -1)
    return np.stack([e.mean(1), *np.quantile(e, [0.05, 0.95], axis=1)], axis=1)


def fit_nuts_each(data: dict, ys: np.ndarray, keys, *, warmup: int, samples: int, draws: int, design,
                  effect_prior_scale: float = 0.5, partial: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit each data set by NUTS (2 chains); return (datasets, draws, QUANTITIES) and divergences."""
    def model(y=None):  # the data dict is closed over (static sizes); only y changes between fits
        additive.model(data, likelihood="normal", effect_prior_scale=effect_prior_scale, y=y)

    kernel = NUTS(model, target_accept_prob=0.85, max_tree_depth=8, init_strategy=init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=2, chain_method="vectorized",
                progress_bar=False, jit_model_args=True)
    out, eff, div = [], [], []
    done = dict(np.load(partial)) if partial and pathlib.Path(partial).exists() else {}
    if done:
        out, eff, div = list(done["q"]), list(done["eff"]), list(done["div"])
    for i, (key, y) in enumerate(zip(keys, ys)):
        if i < len(out):
            continue
        mcmc.run(key, y=jnp.asarray(y), extra_fields=("diverging",))
        s = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
        idx = np.linspace(0, len(s["noise_sd"]) - 1, draws).astype(int)
        out.append(quantities({k: v[idx] for k, v in s.items()}, design))
        eff.append(_effect_summary(s["effect"][None])[0])
        div.append(int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()))
        if partial:  # checkpoint: a long run can be resumed
            np.savez(partial, q=np.stack(out), eff=np.stack(eff), div=np.asarray(div))
    return np.stack(out), np.stack(eff), np.asarray(div)


def fit_nuts_batch(data: dict, ys: np.ndarray, keys, *, warmup: int, samples: int, draws: int, design,
                   effect_prior_scale: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NUTS on many data sets at once: NumPyro's NUTS kernel (``hmc(potential_fn_gen=...)``, the
    kernel of ``sm.fit_nuts``: diagonal mass matrix and step size adapted in ``warmup``,
    ``target_accept_prob=0.85``, ``max_tree_depth=8``, ``init_to_median``) vectorised over data sets
    x 2 chains. Each chain adapts and samples on its own data set exactly as a separate run would;
    vectorising only shares the compiled code (and the wall time of the slowest trajectory per step)."""
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import initialize_model

    def model(y=None):
        additive.model(data, likelihood="normal", effect_prior_scale=effect_prior_scale, y=y)

    info = initialize_model(keys[0], model, model_kwargs={"y": jnp.asarray(ys[0])}, dynamic_args=True,
                            init_strategy=init_to_median(num_samples=15))
    z0 = info.param_info.z
    init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")
    post_gen = info.postprocess_fn

    def chain(key, y):
        k_init, k_run = jax.random.split(key)
        kw = {"y": y}
        state = init_kernel(z0, warmup, target_accept_prob=0.85, max_tree_depth=8, model_kwargs=kw, rng_key=k_run)

        def body(st, _):
            st = sample_kernel(st, model_kwargs=kw)
            return st, (st.z, st.diverging)

        _, (zs, div) = jax.lax.scan(body, state, None, length=warmup + samples)
        zs = jax.tree_util.tree_map(lambda a: a[warmup:], zs)
        post = jax.vmap(post_gen(y=y))(zs)
        return {k: post[k] for k in ("effect", "noise_sd", "effect_scale", "mean")}, div[warmup:].sum()

    n = ys.shape[0]
    ck = jax.vmap(lambda k: jax.random.split(k, 2))(jnp.asarray(keys)).reshape(2 * n, -1)
    yy = jnp.repeat(jnp.asarray(ys), 2, axis=0)
    post, div = jax.jit(jax.vmap(chain))(ck, yy)
    post = {k: np.asarray(v).reshape(n, 2 * samples, *v.shape[2:]) for k, v in post.items()}
    idx = np.linspace(0, 2 * samples - 1, draws).astype(int)  # interleave the 2 chains' draws, thinned
    q = np.stack([quantities({k: v[i][idx] for k, v in post.items()}, design) for i in range(n)])
    return q, _effect_summary(post["effect"]), np.asarray(div).reshape(n, 2).sum(1)


def simulate(design, data, n: int, seed: int) -> dict:
    """Prior draws of every site and of ``y`` for ``n`` data sets (one row per condition)."""
    model = functools.partial(additive.model, likelihood="normal")
    return {k: np.asarray(v) for k, v in Predictive(model, num_samples=n)(jax.random.PRNGKey(seed), data).items()}


def ranks(truth: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(datasets, quantities) rank of the truth among the draws (ties split at random)."""
    rng = np.random.default_rng(0)
    below = (draws < truth[:, None, :]).sum(1)
    ties = (draws == truth[:, None, :]).sum(1)
    return below + rng.integers(0, ties + 1)


def summarise(name: str, truth_q: np.ndarray, draws_q: np.ndarray, eff_true: np.ndarray, eff: np.ndarray, seconds,
              extra=None) -> dict:
    """Ranks and chi-square p per quantity; effect slope (median over data sets of the slope of
    posterior means on true effects) and 90% coverage of every effect."""
    L = draws_q.shape[1]
    r = ranks(truth_q, draws_q)
    bins = np.minimum(r * BINS // (L + 1), BINS - 1)
    pvals = {q: float(stats.chisquare(np.bincount(bins[:, j], minlength=BINS)).pvalue) for j, q in enumerate(QUANTITIES)}
    slopes = [np.polyfit(t, m, 1)[0] for t, m in zip(eff_true, eff[:, 0]) if np.std(t) > 0]
    cover = float(np.mean((eff_true >= eff[:, 1]) & (eff_true <= eff[:, 2])))
    res = {"method": name, "datasets": int(truth_q.shape[0]), "draws": int(L), "chi2_p": pvals,
           "calibrated": bool(min(pvals.values()) > 0.01), "effect_slope_median": float(np.median(slopes)),
           "effect_coverage_90": cover, "seconds": round(seconds, 1),
           "rank_histograms": {q: np.bincount(bins[:, j], minlength=BINS).tolist() for j, q in enumerate(QUANTITIES)}}
    res.update(extra or {})
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=["normal", "lowrank", "mvn", "map", "laplace", "nuts", "nuts_wrong"])
    ap.add_argument("--datasets", type=int, default=200)
    ap.add_argument("--layout", choices=("factorial", "contexts"), default="factorial",
                    help="factorial: S stimuli x I inhibitors with every pair; contexts: C contexts x I inhibitors alone")
    ap.add_argument("--design", type=int, nargs=3, default=(3, 3, 4), metavar=("S_OR_C", "INHIBITORS", "GENES"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500, help="NUTS samples per chain")
    ap.add_argument("--draws", type=int, default=99, help="posterior draws ranked (L)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50, help="data sets fitted at once (vectorised)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results" / "sbc_inference.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.datasets, args.steps, args.warmup, args.samples = 20, 500, 200, 200
    design = (factorial_design if args.layout == "factorial" else context_design)(*args.design)
    tag = f"{args.layout}_{'x'.join(map(str, args.design))}_n{args.datasets}"
    data = fixed_data(design)
    sim = simulate(design, data, args.datasets, args.seed)
    truth_q = quantities(sim, design)
    eff_true = sim["effect"].reshape(args.datasets, -1)
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), args.datasets)
    out = pathlib.Path(args.out)
    results = json.loads(out.read_text())["results"] if out.exists() else {}
    print(f"design: {design!r}; {args.datasets} data sets; L = {args.draws}")
    for m in args.methods:
        t0 = time.perf_counter()
        extra = {}
        if m.startswith("nuts"):
            scale = 0.05 if m == "nuts_wrong" else 0.5
            parts = [fit_nuts_batch(data, sim["y"][i:i + args.batch], keys[i:i + args.batch], warmup=args.warmup,
                                    samples=args.samples, draws=args.draws, design=design, effect_prior_scale=scale)
                     for i in range(0, args.datasets, args.batch)]
            dq, eff, div = (np.concatenate([p[j] for p in parts]) for j in range(3))
            extra = {"divergences_median": float(np.median(div)), "datasets_with_divergences": int((div > 0).sum()),
                     "effect_prior_scale": scale}
        else:
            parts = [fit_svi_batch(m, data, sim["y"][i:i + 50], keys[i:i + 50], steps=args.steps, draws=args.draws,
                                   design=design) for i in range(0, args.datasets, 50)]
            dq, eff = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            extra = {"steps": args.steps}
        res = summarise(m, truth_q, dq, eff_true, eff, time.perf_counter() - t0, extra)
        results[f"{tag}/{m}"] = {**res, "layout": args.layout, "design": list(args.design)}
        p = ", ".join(f"{q} {v:.3f}" for q, v in res["chi2_p"].items())
        print(f"{m:11s} calibrated {res['calibrated']!s:5s} slope {res['effect_slope_median']:.2f} "
              f"cov90(effects) {res['effect_coverage_90']:.2f} {res['seconds']:.0f}s  p: {p}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
