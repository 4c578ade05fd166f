"""Which experiment next, retrospectively: does choosing by design.recommend beat a random choice?

For each task and seed: start from a small training set, then for ``--rounds`` rounds choose
``--budget`` candidates from the pool by each objective (and at random), "run" them from the
held-back data, refit, and record the held-out error and the 90% coverage of the intervals for an
observation after every round. The held-out conditions are fixed per seed and never in the pool.

Tasks
-----
``norman_cells`` (shipped data): Norman 2019 subset, the 105 detected genes. Every condition has
a pilot of 10 cells (control 30); a candidate is "20 more cells of condition X" (at most twice
per condition, from cells 10-49); held out: cells 50+ of every double (15 doubles), scored by the
RMSE of their means. Objectives: ``predictive`` (targets = the doubles), ``information`` about
the doubles' interactions. One pseudobulk row per condition, so every fit has the same shape.

``norman_doubles`` (shipped data; ``norman_unmeasured_doubles``): the same genes and held-out
cells, but every double starts unmeasured: control and singles have their pilot cells, a
candidate is "20 cells of a double not yet measured". Objectives as for ``norman_cells``.

``norman_singles`` (shipped data): the same genes and held-out cells (the doubles, never
trained on), but the pool holds *singles*: the start is the control and 3 random singles, a
candidate is "20 cells of a single not yet measured". Each single informs every double that
contains it (through the additive part), so one pool row informs several held-out rows.
Objectives: ``predictive`` (targets = the doubles), ``information`` about the effects of the
doubles' targets.

``hepg2_pool`` (needs ../shared/data): HepG2CancerRes2011, t = 30 min, the first ``--contexts``
cell line x stimulus contexts (a label design with context-specific inhibitor targets as in
``heldout_tasks.hepg2_combinations``). Start: no/single inhibitors; per context the
double/triple inhibitor rows are split at random into pool and held out (half each). Objectives:
``predictive`` (targets = held-out labels), ``information`` about their interactions. Noise:
the technical-replicate prior of ``heldout_tasks.hepg2_replicate_noise``; ``--noise per-line``: one
such prior and one learned sd per cell line (each context takes its line's;
``NoiseModel.by_batch``), for the session-13 finding that the lines' replicate sds differ 2x;
``--labels shared``: each inhibitor one target in every context (contexts pooled: a shared value plus a
context deviation for effects and pair interactions) instead of a target of its own per context, for the
session-14 finding that each inhibitor set's departure from additivity is partly shared by all contexts.

``--ceiling``: per seed also a fit with every round-0 pool candidate measured (the error no
choice of ``--rounds`` x ``--budget`` can beat). ``--first-seed``: run seeds first..first+seeds-1
(a long run split over fresh processes; each task also writes ``JSON.TASK.partial`` after every
seed).

``--fit nuts``: every fit (every arm, round and the ceiling) by NUTS instead of mean-field SVI (one
chain, ``--nuts-warmup`` + ``--nuts-samples`` draws, ``--nuts-depth``; ``--steps`` unused). On
hepg2_pool (50 contexts) mean-field SVI over-shrinks the per-target effect deviations and the
pair interactions' scale, which NUTS does not (``RESULTS_next_experiment.md``, session 13); a
fit then takes ~2 min instead of ~0.6 min there. The convergence record is then the fraction of
divergent transitions per fit instead of the SVI loss change.

Also (``--extras``, or each alone with ``--correlation`` / ``--cost`` and ``--tasks`` empty): the
rank correlation between a candidate's expected and realised reduction of the targets' summed
posterior variance (Norman, round 0, every pool candidate, converged fits paired by SVI seed and
averaged over ``--corr-seeds``; see ``realised_vs_expected``), and the cost of ranking 1,000
unseen Norman combinations.

Run from outside the repository root: ``cd /tmp && nice -n 10 python .../next_experiment.py --json out.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pathlib
import platform
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import semimech as sm  # noqa: E402
from semimech.design import recommend  # noqa: E402
from semimech.models import additive  # noqa: E402


@dataclasses.dataclass
class Task:
    name: str
    build: object  # state -> training Design
    pool: object  # state -> candidate labels available
    add: object  # (state, labels) -> state
    score: object  # fit -> (rmse, coverage_90)
    targets: list  # the labels whose predictions matter (predictive objective)
    start: object
    about: str = "interactions"  # what the information objective learns about (of the targets)


# ------------------------------------------------------------------------------ Norman
def _norman(seed: int, held_from: int):
    """The shipped Norman subset on its detected genes, each label's cells in a seeded random order.

    Held out: cells ``held_from`` onwards of every double (their means are the truth), never in a
    training set. Returns ``(order, doubles, full, score)``: label -> cell indices in that order,
    the doubles, the full Design, and ``score(fit, key)`` (RMSE and 90% coverage of the doubles).
    """
    from heldout_tasks import norman_genes

    from semimech.datasets import norman19_devel

    adata = norman19_devel()
    genes = norman_genes(adata, np.ones(adata.n_obs, bool))
    adata = adata[:, genes].copy()
    rng = np.random.default_rng(seed)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    order = {lab: rng.permutation(np.flatnonzero(labels == lab)) for lab in np.unique(labels)}
    doubles = sorted(lab for lab in order if "+" in lab)
    held = np.concatenate([order[lab][held_from:] for lab in doubles])
    full = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    x = np.asarray(adata.X[held].todense() if hasattr(adata.X, "todense") else adata.X[held])
    truth = np.stack([x[labels[held] == lab].mean(0) for lab in doubles])
    n_obs = np.array([(labels[held] == lab).sum() for lab in doubles], float)

    def score(fit, key):
        return _score(sm.predict(fit, doubles, rng_key=key, num_cells=n_obs), truth)

    return order, doubles, full, score


def norman_cells(seed: int, *, pilot: int = 10, chunk: int = 20, chunks: int = 2):
    order, doubles, full, score = _norman(seed, pilot + chunk * chunks)

    def rows(state):
        out = [order["control"][:3 * pilot]]
        for lab, idx in order.items():
            if lab != "control":
                out.append(idx[:pilot + chunk * state.get(lab, 0)])
        return np.concatenate(out)

    def build(state):
        return full.subset(rows(state)).pseudobulk(by_batch=False)

    def pool(state):
        return [lab for lab in order if lab != "control" and state.get(lab, 0) < chunks]

    def add(state, picks):
        new = dict(state)
        for lab in picks:
            new[lab] = new.get(lab, 0) + 1
        return new

    return Task("norman_cells", build, pool, add, score, doubles, {})


def norman_unmeasured_doubles(seed: int, *, pilot: int = 10, chunk: int = 20):
    """Norman with the doubles unseen at the start: the pool is "20 cells of an unmeasured double".

    Start: control (30 cells) and every single (``pilot`` cells), no double. A candidate = the
    first ``chunk`` cells of a double not yet measured (once each). Held out, as in
    ``norman_cells``: cells 50+ of every double (their means), never in the pool. Every double
    starts as a prediction (seven of the 15 name a target no single measures: answered from the
    model's population of effects), so which doubles get measured decides most of the error.
    """
    order, doubles, full, score = _norman(seed, 50)

    def build(state):
        out = [order["control"][:3 * pilot]]
        out += [idx[:pilot] for lab, idx in order.items() if lab != "control" and "+" not in lab]
        out += [order[lab][:chunk] for lab in doubles if state.get(lab)]
        return full.subset(np.concatenate(out)).pseudobulk(by_batch=False)

    def pool(state):
        return [lab for lab in doubles if not state.get(lab)]

    def add(state, picks):
        return {**state, **{lab: 1 for lab in picks}}

    return Task("norman_doubles", build, pool, add, score, doubles, {})


def norman_singles(seed: int, *, start: int = 3, pilot: int = 10, chunk: int = 20):
    """Norman with the singles unmeasured: the pool is "cells of a single not yet measured".

    Written before any run of this task; nothing in it was chosen on its held-out numbers.

    Why: in ``norman_doubles`` and ``hepg2_pool`` a pool row informs mostly itself (one double,
    one context's combination). Here a pool row is a single and the held-out rows are doubles:
    the additive model predicts a double from its singles, so measuring a single informs every
    double containing it (KLF1 is in 3 of the 15 doubles; MAP2K3, MAP2K6, MAPK1, TGFBR2 in 2;
    SGK1, SLC38A2 in 1), while 11 of the 18 singles are in no double and inform the doubles only
    through the shared population of effects. A good choice should find the few singles shared
    by many uncertain doubles; a random one spends most picks on singles no double contains.

    Start: control (``3 * pilot`` cells) and ``start`` singles drawn at random per seed (``pilot``
    cells each), no double. A candidate = the first ``chunk`` cells of a single not yet measured
    (once each; cells 0..chunk-1). Held out, as in ``norman_cells``/``norman_doubles``: cells 50+
    of every double (their means; no double is ever in a training set). Seven of the 15 doubles
    name only targets no single measures: no candidate informs them directly, they dilute any
    gain equally for every arm (scored anyway: one aggregation, all 15 doubles).

    Objectives: ``predictive`` (targets = the 15 doubles) and ``information`` about the doubles'
    targets' *effects* (``about="effects"``), not their interactions: with no double measured,
    singles teach nothing about an interaction (it is the double's deviation from its parts).

    Expected weak spot (stated before running): with no double in any training set the
    interactions' population scale is never learned (its prior stays), so the doubles'
    intervals may be too wide throughout (``norman_doubles`` at round 0, all singles and no
    double: 90% coverage 0.97-0.98).
    """
    order, doubles, full, score = _norman(seed, 50)
    singles = sorted(lab for lab in order if lab != "control" and "+" not in lab)
    first = [singles[i] for i in np.random.default_rng([seed, 7]).choice(len(singles), size=start, replace=False)]

    def build(state):
        out = [order["control"][:3 * pilot]] + [order[lab][:pilot] for lab in first]
        out += [order[lab][:chunk] for lab in singles if state.get(lab)]
        return full.subset(np.concatenate(out)).pseudobulk(by_batch=False)

    def pool(state):
        return [lab for lab in singles if lab not in first and not state.get(lab)]

    def add(state, picks):
        return {**state, **{lab: 1 for lab in picks}}

    return Task("norman_singles", build, pool, add, score, doubles, {}, about="effects")


# ------------------------------------------------------------------------------ HepG2
def hepg2_pool(seed: int, *, contexts: int = 10, noise: str = "pooled", labels: str = "per-context"):
    import heldout_tasks as ht

    wide = ht._hepg2_frame()
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors")]
    wide["context"] = wide.cell_line + "|" + wide.stimuli
    wide = wide[wide.context.isin(list(dict.fromkeys(wide.context))[:contexts])].reset_index(drop=True)
    wide.index = wide.context + "|" + wide.inhibitors
    if labels == "shared":  # one inhibitor is one target in every context: effects and pair interactions are
        # a shared value plus a context deviation (the additive model's contexts), the context a design context
        wide["context"] = wide.context.str.replace("+", "&")
        full = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="inhibitors", control="none",
                                    context_key="context", batch_key="context")
        wide["label"] = np.asarray(full.perturbations, dtype=object)[np.asarray(full.perturbation_index)]
    else:  # every inhibitor a target of its own in each context (session 9-14 numbers)
        wide["label"] = ht._context_labels(wide, "inhibitors", wide.context)
        full = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none",
                                    batch_key="context")
    if noise == "per-line":  # one replicate prior and one learned sd per cell line; each context is its line's
        per_line = ht.hepg2_replicate_noise(per_cell_line=True)
        full = full.with_noise(per_line.by_batch({c: c.split("|")[0] for c in dict.fromkeys(wide.context)}))
    else:
        full = full.with_noise(ht.hepg2_replicate_noise())
    rng = np.random.default_rng(seed)
    combo = wide.inhibitors.str.contains(r"\+").to_numpy()
    held, pooled = [], []
    for ctx in dict.fromkeys(wide.context):
        idx = rng.permutation(np.flatnonzero(combo & (wide.context == ctx).to_numpy()))
        held += list(idx[: len(idx) // 2])
        pooled += list(idx[len(idx) // 2:])
    base = np.flatnonzero(~combo)
    lab = wide.label.to_numpy()
    truth = wide.loc[:, readouts].to_numpy()[held]
    row_of = {lab[i]: i for i in pooled}

    def build(state):
        return full.subset(np.concatenate([base, [row_of[x] for x in sorted(state)]]).astype(int))

    def pool(state):
        return [lab[i] for i in pooled if lab[i] not in state]

    def add(state, picks):
        return {**state, **{p: 1 for p in picks}}

    def score(fit, key):
        obs = []
        for ctx in dict.fromkeys(wide.context.iloc[held]):
            sel = [j for j, i in enumerate(held) if wide.context.iloc[i] == ctx]
            p = sm.predict(fit, [lab[held[j]] for j in sel], rng_key=key, num_cells=1, batch=ctx)
            obs.append((sel, p))
        out_obs = np.empty((obs[0][1].draws["observed_mean"].shape[0], len(held), len(readouts)))
        out_mean = np.empty_like(out_obs)
        for sel, p in obs:
            out_obs[:, sel], out_mean[:, sel] = p.draws["observed_mean"], p.draws["mean"]
        return _score_arrays(out_obs, out_mean, truth)

    return Task("hepg2_pool", build, pool, add, score, [lab[i] for i in held], {})


# ------------------------------------------------------------------------------ shared
def _score(p, truth):
    return _score_arrays(p.draws["observed_mean"], p.draws["mean"], truth)


def _score_arrays(observed, mean, truth):
    rmse = float(np.sqrt(np.mean((mean.mean(0) - truth) ** 2)))
    lo, hi = np.quantile(observed, [0.05, 0.95], axis=0)
    return rmse, float(np.mean((truth >= lo) & (truth <= hi)))


#: how every benchmark fit is made (``--fit``): mean-field SVI (default) or one NUTS chain
FIT = {"method": "svi", "warmup": 300, "samples": 300, "depth": 8}
#: options of the additive model in every fit (default: none)
MODEL_OPTIONS: dict = {}


def _fit(design, seed, steps, draws=256):
    # an all-True row_mask makes the data-centred priors traced data, not constants of the compiled
    # program: every design of one shape (more cells of a condition, another seed) then shares
    # one compilation instead of compiling anew per fit (~50 s each at load 10); same model
    if FIT["method"] == "nuts":
        return sm.fit_nuts(additive.SPEC, design, rng_key=seed, num_warmup=FIT["warmup"], num_samples=FIT["samples"],
                           num_chains=1, max_tree_depth=FIT["depth"], progress_bar=False,
                           row_mask=np.ones(design.n_obs, bool), **MODEL_OPTIONS)
    return sm.fit_svi(additive.SPEC, design, rng_key=seed, num_steps=steps, num_samples=draws, progress_bar=False,
                      row_mask=np.ones(design.n_obs, bool), **MODEL_OPTIONS)


def _choose(task, fit, state, objective, budget, seed, rnd):
    pool = task.pool(state)
    if objective == "random":
        rng = np.random.default_rng([seed, rnd])
        return list(rng.choice(pool, size=budget, replace=False)), None
    kw = dict(targets=task.targets)
    if objective == "information":
        kw["about"] = task.about
    t0 = time.perf_counter()
    r = recommend(fit, pool, budget=budget, objective=objective, rng_key=seed * 100 + rnd, **kw)
    cand = r[r.role == "candidate"]
    return list(cand.condition), {"seconds": time.perf_counter() - t0, "gain": cand.expected_gain.tolist(),
                                  "gain_se": cand.gain_se.tolist()}


def run_task(make, *, seeds, rounds, budget, steps, objectives, ceiling=False, progress=None, first_seed=0):
    error = {o: [] for o in objectives}
    whole = []  # ceiling: the held-out error and coverage with every pool candidate measured
    cover = {o: [] for o in objectives}
    picks = {o: [] for o in objectives}
    conv = []
    for seed in range(first_seed, first_seed + seeds):
        task = make(seed)
        fit0 = _fit(task.build(task.start), seed, steps)
        conv.append(_converged(fit0))
        e0, c0 = task.score(fit0, seed)
        if ceiling:
            fit_all = _fit(task.build(task.add(task.start, task.pool(task.start))), seed, steps)
            conv.append(_converged(fit_all))
            whole.append(task.score(fit_all, seed))
            print(f"{task.name} seed {seed} whole pool   rmse {whole[-1][0]:.4f}  cov90 {whole[-1][1]:.2f}", flush=True)
        for obj in objectives:
            state, fit, errs, covs, chosen = task.start, fit0, [e0], [c0], []
            for rnd in range(rounds):
                labels, info = _choose(task, fit, state, obj, budget, seed, rnd)
                chosen.append({"labels": labels, **(info or {})})
                state = task.add(state, labels)
                fit = _fit(task.build(state), seed, steps)
                conv.append(_converged(fit))
                e, c = task.score(fit, seed)
                errs.append(e)
                covs.append(c)
            error[obj].append(errs)
            cover[obj].append(covs)
            picks[obj].append(chosen)
            print(f"{task.name} seed {seed} {obj:12s} rmse " + " ".join(f"{x:.4f}" for x in errs)
                  + "  cov90 " + " ".join(f"{x:.2f}" for x in covs) + f"  ({time.strftime('%H:%M:%S')})", flush=True)
        if progress is not None:  # the seeds so far, in case the run is stopped
            pathlib.Path(progress).write_text(json.dumps(_task_result(task, rounds, budget, steps, error, cover, picks,
                                                                      whole if ceiling else None, conv, first_seed),
                                                         indent=1))
    return _task_result(task, rounds, budget, steps, error, cover, picks, whole if ceiling else None, conv, first_seed)


def _task_result(task, rounds, budget, steps, error, cover, picks, whole, conv, first_seed=0):
    objectives = list(error)
    n = len(error[objectives[0]])
    return {"task": task.name, "rounds": rounds, "budget": budget, "seeds": n, "steps": steps,
            "seed_ids": list(range(first_seed, first_seed + n)),
            "error": error, "coverage_90": cover, "picks": picks,
            **({"whole_pool": {"error": [e for e, _ in whole], "coverage_90": [c for _, c in whole]}}
               if whole is not None else {}),
            ("divergent_fraction" if FIT["method"] == "nuts" else "loss_change_last100"): _loss_summary(conv),
            "fit": dict(FIT) if FIT["method"] == "nuts" else {"method": "svi", "steps": steps},
            "ratio_last_round_per_seed": {o: [float(a[-1] / b[-1]) for a, b in zip(error[o], error["random"])]
                                          for o in objectives if "random" in error},
            "ratio_last_round_vs_random": {o: float(np.mean([e[-1] for e in error[o]])
                                                    / np.mean([e[-1] for e in error["random"]]))
                                           for o in objectives if "random" in error}}


def realised_vs_expected(steps, *, svi_seeds=3, draws=1000, data_seed=0, boot=2000, progress=None):
    """Rank correlation of every pool candidate's expected and realised reduction (Norman, round 0).

    The quantity: the summed posterior variance of the 15 doubles' population means (105 genes),
    the ``predictive`` objective with ``targets`` = the doubles. Candidates: the whole round-0 pool
    (20 more cells of each of the 33 conditions: 15 doubles, which inform a target directly, and
    18 singles, which inform one through the additive part), so the expected gains span two orders
    of magnitude. Noise control: every fit runs ``steps`` (converged: the loss's last 100 steps
    against the 100 before are reported per fit); for each of ``svi_seeds`` SVI seeds the pilot
    and every one-candidate refit share the seed (paired), the variances come from ``draws``
    posterior draws, and realised = mean over seeds of (V_pilot - V_refit). Expected = the mean
    over the same seeds' pilot fits of recommend's gain alone. The noise floor is the sd over seeds
    of V_pilot (what one fit's variance scatters by) and the per-candidate standard error of the
    realised reduction (sd over seeds / sqrt(seeds)). Reported: Spearman over all candidates,
    within the doubles and within the singles, each with a bootstrap 95% interval over candidates,
    and the negative control (the expected gains shuffled among candidates: the mean and 95% range
    of Spearman over ``boot`` shuffles).
    """
    from scipy.stats import spearmanr

    task = norman_cells(data_seed)
    pool = task.pool(task.start)
    base_v, exp, real, conv = [], [], [], []
    for r in range(svi_seeds):
        fit = _fit(task.build(task.start), r, steps, draws)
        conv.append(_converged(fit))
        rank = recommend(fit, pool, budget=1, objective="predictive", targets=task.targets, rng_key=r).attrs["ranking"]
        gain = dict(zip(rank["condition"], rank["gain_alone"]))
        exp.append([gain[lab] for lab in pool])
        v0 = _summed_var(fit, task.targets)
        base_v.append(v0)
        row = []
        for lab in pool:
            refit = _fit(task.build(task.add(task.start, [lab])), r, steps, draws)
            conv.append(_converged(refit))
            row.append(v0 - _summed_var(refit, task.targets))
        real.append(row)
        if progress is not None:  # the raw numbers so far, in case the run is stopped
            pathlib.Path(progress).write_text(json.dumps({"candidates": pool, "expected": exp, "realised": real,
                                                          "v_pilot": base_v, "loss_change": conv}))
        print(f"correlation: SVI seed {r} done, V_pilot {v0:.4f}, spearman this seed "
              f"{spearmanr(exp[-1], row).statistic:.3f}", flush=True)
    out = correlation_stats(pool, exp, real, boot=boot)
    out.update(v_pilot_per_seed=base_v, svi_seeds=svi_seeds, steps=steps, draws=draws,
               loss_change_last100=_loss_summary(conv))
    return out


def correlation_stats(pool, expected, realised, *, boot=2000):
    """Spearman of expected vs realised (per-seed rows averaged), with bootstrap and shuffled control.

    Over all candidates, the doubles and the singles: the bootstrap 95% interval resamples
    candidates; the negative control shuffles the expected gains among candidates (mean and 95%
    range of Spearman over ``boot`` shuffles). Also the per-candidate standard error of the
    realised reduction over SVI seeds (with two or more seeds).
    """
    from scipy.stats import spearmanr

    exp, real = np.mean(expected, 0), np.asarray(realised, dtype=float)
    seeds = real.shape[0]
    real_se = real.std(0, ddof=1) / np.sqrt(seeds) if seeds > 1 else np.full(len(pool), np.nan)
    real = real.mean(0)
    rng = np.random.default_rng(0)
    is_double = np.array(["+" in lab for lab in pool])

    def rho_ci(sel):
        e, y = exp[sel], real[sel]
        bs = []
        for _ in range(boot):
            i = rng.integers(0, e.size, e.size)
            if np.unique(e[i]).size > 2:
                bs.append(spearmanr(e[i], y[i]).statistic)
        shuf = [spearmanr(rng.permutation(e), y).statistic for _ in range(boot)]
        return {"spearman": float(spearmanr(e, y).statistic),
                "bootstrap_95": [float(x) for x in np.nanquantile(bs, [0.025, 0.975])],
                "shuffled_mean": float(np.mean(shuf)),
                "shuffled_95": [float(x) for x in np.quantile(shuf, [0.025, 0.975])],
                "n": int(e.size)}

    return {"candidates": list(pool), "expected": exp.tolist(), "realised": real.tolist(),
            "realised_se": real_se.tolist(), "all": rho_ci(np.ones(len(pool), bool)), "doubles": rho_ci(is_double),
            "singles": rho_ci(~is_double), "realised_per_seed": np.asarray(realised).tolist()}


def _loss_summary(changes):
    return {"max_abs": float(np.max(np.abs(changes))), "median_abs": float(np.median(np.abs(changes)))}


def _converged(fit):
    """Relative change of the mean loss, last 100 steps against the 100 before (NUTS: the fraction of
    divergent transitions)."""
    if fit.method == "nuts":
        return float(np.mean(np.asarray(fit.sample_stats["diverging"])))
    loss = np.asarray(fit.losses, dtype=float)
    return float((loss[-100:].mean() - loss[-200:-100].mean()) / abs(loss[-200:-100].mean()))


def _summed_var(fit, labels):
    p = sm.predict(fit, labels, rng_key=0)
    return float(np.sum(np.var(np.asarray(p.draws["mean"], dtype=np.float64), axis=0, ddof=1)))


def ranking_cost(steps, n=1000):
    """Seconds to rank ``n`` unseen combinations of a Norman fit (predictive and information)."""
    from heldout_tasks import norman_doubles

    fold = norman_doubles(quick=False)[0]
    fit = _fit(fold.train, 0, steps)
    d = fit.design
    seen = sorted({t for p in d.observed_perturbations() for t in d.targets_of(p)})
    have = {frozenset(d.targets_of(p)) for p in d.observed_perturbations()}
    cands = [a + "+" + b for a, b in itertools.combinations(seen, 2) if frozenset((a, b)) not in have]
    cands += ["+".join(c) for c in itertools.combinations(seen, 3)][: max(0, n - len(cands))]
    cands = cands[:n]
    out = {"candidates": len(cands), "genes": len(d.genes), "draws": 256}
    # predictive (Gaussian update): every candidate, the summed variance of all 1,000, budget 10
    # information (reweighting): cost ~ candidates x outcomes x draws x quantities x genes per pick,
    # so the ranking alone (budget 1) about the interactions of 10 of the candidates, 32 outcomes
    runs = (("predictive", dict(budget=10)),
            ("information", dict(budget=1, targets=cands[:10], num_outcomes=32)))
    for obj, kw in runs:
        for rep in range(2):  # the first includes compilation
            t0 = time.perf_counter()
            recommend(fit, cands, objective=obj, rng_key=rep, **kw)
            out[f"{obj}_s_{'first' if rep == 0 else 'warm'}"] = time.perf_counter() - t0
            print(obj, rep, out[f"{obj}_s_{'first' if rep == 0 else 'warm'}"], flush=True)
    out["settings"] = {k: {a: (len(b) if isinstance(b, list) else b) for a, b in kw.items()} for k, kw in runs}
    return out


TASKS = {"norman_cells": norman_cells, "norman_doubles": norman_unmeasured_doubles, "norman_singles": norman_singles,
         "hepg2_pool": hepg2_pool}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the result here (required unless --plot-from)")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first..first+seeds-1 (a long run split over fresh processes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--contexts", type=int, default=10, help="hepg2_pool: contexts used")
    ap.add_argument("--noise", choices=("pooled", "per-line"), default="pooled",
                    help="hepg2_pool: one replicate noise prior and sd for all cell lines (default), or one per line")
    ap.add_argument("--labels", choices=("per-context", "shared"), default="per-context",
                    help="hepg2_pool: each inhibitor a target of its own per context (default), or one target shared "
                         "by all contexts (contexts pooled; with --noise per-line, context_noise off)")
    ap.add_argument("--fit", choices=("svi", "nuts"), default="svi", help="how every fit is made (see the docstring)")
    ap.add_argument("--nuts-warmup", type=int, default=300)
    ap.add_argument("--nuts-samples", type=int, default=300)
    ap.add_argument("--nuts-depth", type=int, default=8)
    ap.add_argument("--ceiling", action="store_true",
                    help="also fit each seed with every round-0 pool candidate added once (hepg2_pool, norman_doubles, norman_singles: the whole pool)")
    ap.add_argument("--objectives", nargs="*", default=["random", "predictive", "information"])
    ap.add_argument("--extras", action="store_true", help="also the expected-vs-realised correlation and cost")
    ap.add_argument("--correlation", action="store_true", help="the expected-vs-realised correlation")
    ap.add_argument("--correlation-from", help="the correlation's statistics from a .partial file of a stopped run")
    ap.add_argument("--cost", action="store_true", help="the cost of ranking 1,000 candidates only (with --tasks)")
    ap.add_argument("--corr-steps", type=int, default=5000, help="correlation: SVI steps per fit (converged)")
    ap.add_argument("--corr-seeds", type=int, default=3, help="correlation: SVI seeds averaged (paired)")
    ap.add_argument("--plot", help="write a PNG of error and coverage per round")
    ap.add_argument("--plot-from", nargs="*", help="only plot (to --plot) the results of these JSON files")
    args = ap.parse_args(argv)
    if args.plot_from:
        _plot([r for f in args.plot_from for r in json.loads(pathlib.Path(f).read_text())["results"]], args.plot)
        return
    if not args.json:
        ap.error("--json is required (unless --plot-from)")
    FIT.update(method=args.fit, warmup=args.nuts_warmup, samples=args.nuts_samples, depth=args.nuts_depth)
    if args.labels == "shared" and args.noise == "per-line":  # noise per line and per context both set a row's noise
        MODEL_OPTIONS["context_noise"] = False
    out = {"platform": platform.platform(), "python": platform.python_version(), "results": []}
    t0 = time.perf_counter()
    for name in args.tasks:
        make = TASKS[name] if name != "hepg2_pool" else (lambda s: hepg2_pool(s, contexts=args.contexts,
                                                                               noise=args.noise, labels=args.labels))
        try:
            res = run_task(make, seeds=args.seeds, rounds=args.rounds, budget=args.budget, steps=args.steps,
                           objectives=args.objectives, ceiling=args.ceiling,
                           progress=f"{args.json}.{name}.partial", first_seed=args.first_seed)
        except sm.datasets.DatasetNotFoundError as err:
            print(f"{name}: skipped ({str(err).splitlines()[0]})")
            continue
        if name == "hepg2_pool":
            res["contexts"], res["noise"], res["labels"] = args.contexts, args.noise, args.labels
        out["results"].append(res)
        print(json.dumps({k: res[k] for k in ("task", "ratio_last_round_vs_random")}))
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))  # each task as soon as it is done
    if args.correlation_from:
        raw = json.loads(pathlib.Path(args.correlation_from).read_text())
        out["correlation"] = correlation_stats(raw["candidates"], raw["expected"], raw["realised"])
        out["correlation"].update(v_pilot_per_seed=raw["v_pilot"], svi_seeds=len(raw["realised"]), from_partial=True,
                                  loss_change_last100=_loss_summary(raw["loss_change"]))
        print("expected vs realised:", {k: out["correlation"][k] for k in ("all", "doubles", "singles")})
    if args.extras or args.correlation:
        out["correlation"] = realised_vs_expected(args.corr_steps, svi_seeds=args.corr_seeds,
                                                 progress=args.json + ".partial")
        print("expected vs realised:", {k: out["correlation"][k] for k in ("all", "doubles", "singles")})
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    if args.extras or args.cost:
        out["cost"] = ranking_cost(args.steps)
        print("cost:", out["cost"])
    out["wall_s"] = time.perf_counter() - t0
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    if args.plot:
        _plot(out["results"], args.plot)


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, max(1, len(results)), figsize=(4.5 * max(1, len(results)), 6), squeeze=False)
    for j, res in enumerate(results):
        for obj, errs in res["error"].items():
            e, c = np.asarray(errs), np.asarray(res["coverage_90"][obj])
            x = np.arange(e.shape[1])
            axes[0, j].errorbar(x, e.mean(0), e.std(0), label=obj, capsize=3)
            axes[1, j].plot(x, c.mean(0), marker="o", label=obj)
        title = res["task"] + (f" ({res['contexts']} contexts)" if "contexts" in res else "")
        axes[0, j].set(title=title, ylabel="held-out RMSE")
        axes[1, j].set(xlabel="round", ylabel="90% coverage", ylim=(0.5, 1.0))
        axes[1, j].axhspan(0.85, 0.95, color="0.9")
        axes[0, j].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
