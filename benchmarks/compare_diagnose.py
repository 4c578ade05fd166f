"""Why does the cross-validated elpd disagree with held-out L2 on Norman doubles? Per fold, decompose it.

    python benchmarks/compare_diagnose.py [full|train] [STEPS] [model,model,...]

For each model and each left-out combinable double (``full``: every row, unit "combinable"; ``train``:
the task's training design, unit "combination"), one warm-started refit without it (as
``semimech.evaluate.cross_validate``), then from the refit's draws: the joint log density of the unit's cells
(``lpd_joint``, ``score="cells"``) and its within-group part (``within_mean``, the cells' scatter around their
mean), the joint density of the observed means over genes (``lpd_mean_only``) and the effective number of
draws behind both (``ess_*``: 1 / sum of squared normalised weights), the marginal per-gene score of the means
(``lpd_gene_pointwise``, ``score="means"``), the L2 of the leave-out predictive mean, the predictive sd and
the error (medians over genes). Writes ``benchmarks/results/compare_diagnose_{full|train}.json``.
"""
import json, os, sys, time, pathlib
import numpy as np
import jax, jax.numpy as jnp
from scipy.special import logsumexp
from numpyro.infer import log_likelihood as nll

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import heldout_tasks as ht
from compare_cv import comparison_design
import semimech as sm
from semimech.models import REGISTRY
from semimech.evaluate.cv import _Folds, unit_labels, _unseen, _entry_mask
from semimech.evaluate._pointwise import RowEngine, flat_latent
from semimech.infer.fit import fold_summaries
from semimech.infer.loglik import chunked_draws

design_kind = sys.argv[1] if len(sys.argv) > 1 else "full"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
models = sys.argv[3].split(",") if len(sys.argv) > 3 else ["additive", "linear_steady_state", "production_decay", "latent_programs"]
folds = ht.TASKS["norman_doubles"].build(quick=False)
design = comparison_design("norman_doubles", folds, full=design_kind == "full")
unit = "combinable" if design_kind == "full" else "combination"
labels = unit_labels(design, unit)
units = tuple(dict.fromkeys(u for u in labels if u is not None))
row_unit = np.array([units.index(u) if u is not None else -1 for u in labels])
Y = np.asarray(design.dense_y())
n = np.asarray(design.n_cells, float)
print(design, units, "load", os.getloadavg()[0], flush=True)
out = {}
for name in models:
    t0 = time.time()
    fit = sm.fit_svi(REGISTRY[name], design, rng_key=0, num_steps=steps, num_samples=200, progress_bar=False)
    eng = RowEngine(fit)
    folds_ = _Folds(fit, eng, row_unit, num_steps=max(300, steps // 3), refit_options=None,
                    key=jax.random.PRNGKey(7), max_pit_rows=2000)
    model, data, y = eng.model, eng.data, eng.y

    @jax.jit
    def parts(samples, overrides):
        ll = nll(model, samples, {**data, **overrides}, y=y, parallel=True)
        return {"y": ll["y"], "w": ll["y_within"]}

    rows_out = []
    for p, u in enumerate(units):
        held = row_unit == p
        train = ~held
        key = jax.random.fold_in(jax.random.PRNGKey(7), p + 1)
        k_fit, k_prior, k_rep = jax.random.split(key, 3)
        refit = folds_._refit(train, k_fit)
        samples = flat_latent(refit, eng.latent)
        summ = eng._summaries(fold_summaries(design, train))
        if folds_.resample:
            unseen = _unseen(design, data, train)
            drawn = eng.apply(lambda part: folds_._prior_given(part, summ), samples, folds_.kept, key=k_prior)
            for s in folds_.resample:
                m = _entry_mask(fit.dims[s], samples[s].shape[1:], unseen)
                if m.any():
                    samples[s] = np.where(m[None], drawn[s], samples[s])
        pp = eng.apply(lambda part: parts(part, summ), samples, eng.latent)
        rows = np.flatnonzero(held)
        ly, lw = pp["y"][:, rows].astype(float), pp["w"][:, rows].astype(float)  # (S, r, G)
        S = ly.shape[0]
        const = ((-(n[rows] - 1) / 2 * np.log(2 * np.pi) - 0.5 * np.log(n[rows]))[:, None] * np.ones(ly.shape[-1])).sum()
        joint = (ly + lw).sum((1, 2))
        mean_only = ly.sum((1, 2))
        wj = np.exp(joint - logsumexp(joint)); wm = np.exp(mean_only - logsumexp(mean_only))
        rep = eng.replicates(k_rep, samples, rows=rows, summaries=summ)  # (S, r, G)
        mu, var = rep.mean(0), rep.var(0)
        yo = Y[rows]
        gauss = float((-0.5 * np.log(2 * np.pi * var) - (yo - mu) ** 2 / (2 * var)).sum())
        l2 = float(np.sqrt(((mu - yo) ** 2).sum(1)).mean())
        pit = ((rep < yo[None]).mean(0))
        rec = {"unit": u, "n_cells": n[rows].tolist(),
               "lpd_joint": float(logsumexp(joint) - np.log(S) + const),
               "within_mean": float(lw.sum((1, 2)).mean() + const), "within_sd_draws": float(lw.sum((1, 2)).std()),
               "lpd_mean_only": float(logsumexp(mean_only) - np.log(S)),
               "ess_joint": float(1 / (wj ** 2).sum()), "ess_mean": float(1 / (wm ** 2).sum()),
               "lpd_gene_pointwise": float((logsumexp(ly, axis=0) - np.log(S)).sum()),
               "lpd_gauss_mean": gauss, "l2": l2,
               "pred_sd_median": float(np.median(np.sqrt(var))),
               "abs_err_median": float(np.median(np.abs(mu - yo))),
               "pit_extreme": float(np.mean((pit < 0.05) | (pit > 0.95)))}
        rows_out.append(rec)
        print(name, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
    noise = {k: float(np.median(np.asarray(fit.flat(k)))) for k in fit.samples if "noise" in k or "sigma" in k}
    out[name] = {"folds": rows_out, "noise": noise, "secs": time.time() - t0}
    print(name, "noise", noise, f"{time.time()-t0:.0f}s load {os.getloadavg()[0]:.1f}", flush=True)
    (pathlib.Path(__file__).resolve().parent / "results" / f"compare_diagnose_{design_kind}.json").write_text(json.dumps(out, indent=1))
