"""Does the comparison of assumptions agree with held-out evidence, and what does it cost?

    python benchmarks/compare_cv.py TASK [--design train|full|factor] [--unit U] [--k K] [--steps 2000] [--refit-steps N]
                                         [--method svi|auto] [--heldout-json PATH | --heldout NAME=VALUE ...]
                                         [--heldout-steps STEPS] [--heldout-seeds 3] [--seed 0] [--restarts K] [--json PATH]
    python benchmarks/compare_cv.py TASK --heldout-only [--heldout-seeds 3] [--heldout-steps STEPS] [--restarts K] --json PATH

Tasks (from ``benchmarks/heldout_tasks.py``): ``norman_doubles`` (shipped data),
``hepg2_combinations``, ``sachs_loco``. For each, every registered static model
(``semimech.models.REGISTRY``) is fitted once on the comparison design — the training design of
the held-out task (Norman, HepG2), or every condition (Sachs, whose held-out task is itself
leave-one-condition-out) — and :func:`semimech.evaluate.compare` cross-validates them over held-out
units (fits and refits with ``--seed``, default 0). The held-out number of each model is the task's
metric from ``benchmarks/heldout.py``, **the mean over seeds** (the held-out contract: ``value`` is
the mean over seeds 0..N-1, ``--heldout-seeds`` N, default 3; ``sd_over_seeds`` and ``per_seed``
are kept in the JSON's ``held_out_detail`` and the agreement is also reported against each seed alone,
``agreement_per_seed``). It is read from ``--heldout-json`` (``heldout.py``'s JSON, e.g. the one
``--heldout-only`` writes; the configuration ``MODEL/svi (as compared)`` is used where present, else
``MODEL/svi``, else ``MODEL/default``, and the key used is recorded), or computed here: each model fitted
as the comparison's fits (``sm.fit_svi``, its default guide, ``--heldout-steps``, ``--draws``) on the
task's training design, one fit per seed. ``--heldout-seeds 1`` on the training design reuses the
comparison's own fits instead (one seed, ``--seed``: short of the contract). HepG2 ``--design
factor*`` and Sachs take their held-out value from the comparison's own refits (one seed, the
comparison's). ``--heldout NAME=VALUE ...`` beside ``--heldout-json``: those values are a reference
(e.g. one seed's) with their own agreement (``agreement_reference``). ``--heldout-only`` computes the
held-out values alone (no comparison) and writes ``heldout.py``'s JSON to ``--json``. Reported:

- the comparison table (rank, ties, elpd and its SE, calibration, checks), or why it cannot rank;
- agreement: Spearman(elpd, held-out score oriented so that higher is better) over models with
  both numbers, whether the first-ranked model's held-out error is within 10% of the best, and
  whether the comparison separates any models at all (if not, it says it cannot tell them apart);
- cost: wall and CPU seconds of the fits and of the comparison, with the machine's load
  (``os.getloadavg``) at the start and end: wall times on a shared machine are inflated by
  the load, CPU seconds much less so.

HepG2 with ``--design factor``: every row (training and held-out) as the factor design of
``benchmarks/heldout_factorial.py`` (stimulus, inhibitor; cell lines as contexts) with the task's
replicate noise prior (``Design.with_noise``), so that ``signalling_network`` (on the HepG2 PKN,
its ``network`` option built from the training rows only) and the other models share one design;
the unit is the multi-inhibitor set of a row (``IKKi+MEK12i``, ...: 4 units of 50 rows, every
cell line and stimulus), left out one at a time: the held-out task's question (inhibitor
combinations not seen together), with the other combinations in training. ``--design
factor-pairs`` drops the triple-inhibitor rows, so that a left-out pair is seen in no training row
(3 units; its held-out task: the 150 pair rows from the 200 training rows).
``--method auto`` fits each model as ``sm.fit`` chooses (NUTS for the additive model on this
unreplicated design, SVI for the cut-posterior and steady-state models); refits take the same path.

Sachs: every model with a ``residual`` option gets the per-condition misfit (``residual=True``, the
signalling network's option there since session 8; the steady-state models predicted its unseen single targets
better so, session 17); ``--default-misfit`` keeps the steady-state models' default per-target misfit.

``--restarts K`` (SVI): every fit is ``sm.fit_svi(..., restarts=K)``, the best of K runs by the final training
loss; the comparison's refits inherit it (``semimech.evaluate.cv``), and the held-out values are computed (or read
from ``--heldout-json``) under the configuration ``MODEL/svi (as compared, restarts=K)``: the same settings for the
comparison and the held out. A held-out JSON without that configuration gives no value (no fallback to single runs).

Writes JSON (default ``benchmarks/results/compare_TASK.json``) and prints a Markdown block for
``benchmarks/RESULTS_compare.md``.
"""

from __future__ import annotations

import os
# scipy's OpenBLAS (the LAPACK behind jax's CPU lu/solve kernels) threads every call; on a busy machine its
# threads' hand-offs cost 16x linear_steady_state's SVI step (RESULTS_compare.md, session 5). Override by
# setting OPENBLAS_NUM_THREADS yourself. Must be set before numpy/scipy load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import heldout  # noqa: E402
import heldout_tasks as ht  # noqa: E402
from heldout_models import MODELS, Budget, svi_config  # noqa: E402

import semimech as sm  # noqa: E402
from semimech import evaluate as ev  # noqa: E402
from semimech.errors import DesignError, SemimechError  # noqa: E402
from semimech.evaluate.compare import reading  # noqa: E402
from semimech.models import REGISTRY  # noqa: E402

#: Cross-validation unit per task: the closest question the comparison design can ask.
UNITS = {"norman_doubles": "combination", "hepg2_combinations": "combinable", "sachs_loco": "perturbation"}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def comparison_design(task: str, folds, *, full: bool = False) -> sm.Design:
    """The design every model is fitted on for the comparison.

    Norman / HepG2: the held-out task's training design, or with ``full`` the whole table
    (training and held-out rows: cross-validation then asks the held-out question itself, over
    every combination, with refits; the held-out values come from separate fits of the training
    design). Sachs: every condition (its held-out task is itself leave-one-condition-out).
    """
    if full in ("factor", "factor-pairs") and task != "hepg2_combinations":
        raise SystemExit("--design factor is the HepG2 factor design (hepg2_combinations only).")
    if task == "hepg2_combinations" and full in ("factor", "factor-pairs"):
        import heldout_factorial as hf

        frame = folds[0].frame
        if full == "factor-pairs":  # no row with three inhibitors: a left-out pair is seen nowhere
            frame = frame[frame.inhibitors.astype(str).str.count(r"\+") < 2]
        design = sm.Design.from_frame(frame, readouts=list(folds[0].readouts), factors=hf.FACTORS,
                                      context_key="cell_line")
        return design.with_noise(folds[0].meta["noise"])
    if task == "hepg2_combinations" and full:
        wide = ht._hepg2_frame()
        readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors")]
        wide["context"] = wide.cell_line + "|" + wide.stimuli
        wide["label"] = ht._context_labels(wide, "inhibitors", wide.context)
        wide.index = wide.context + "|" + wide.inhibitors
        return sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none",
                                    batch_key="context")
    if task == "norman_doubles" and full:
        from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel

        adata = norman19_devel()
        test_mask = adata.obs["perturbation"].isin(NORMAN19_COMBINABLE_DOUBLES).to_numpy()
        genes = ht.norman_genes(adata, ~test_mask)
        return sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control",
                                      genes=genes).pseudobulk()
    if task != "sachs_loco":
        return folds[0].train
    import anndata as ad

    from semimech.datasets import read_sachs2005

    raw = read_sachs2005()
    obs = raw.obs.assign(target=[ht.SACHS_LABELS[c] for c in raw.obs.condition])
    logged = ad.AnnData(X=np.log(raw.X), obs=obs, var=raw.var.copy())
    return sm.Design.from_anndata(logged, perturbation_key="target", control="cd3_cd28").pseudobulk()


def hepg2_factor_units(design, inhibitors) -> np.ndarray:
    """The multi-inhibitor set of each row of the HepG2 factor design (None: no or one inhibitor)."""
    out = []
    for p in np.asarray(design.perturbations, dtype=object)[design.perturbation_index]:
        held = sorted(set(design.targets_of(p)) & set(inhibitors))
        out.append("+".join(held) if len(held) >= 2 else None)
    return np.asarray(out, dtype=object)


def model_options(task: str, name: str, design, *, train_rows=None, default_misfit: bool = False) -> dict:
    """Model options per task: the signalling network's PKN (HepG2, Sachs), as in ``heldout_signalling.py``;
    on Sachs the per-condition misfit (``residual=True``) of every model that has a ``residual`` option, or,
    with ``default_misfit`` (``--default-misfit``), of the signalling network only (its option on this task
    since session 8), the steady-state models keeping their default per-target misfit.

    The ``network`` option's readout centres and spreads come from ``train_rows`` only (the held-out
    task's training rows), so no held-out unit informs any fold's priors through them.
    """
    import inspect

    from semimech.models import REGISTRY

    opts = {}
    if (task == "sachs_loco" and "residual" in inspect.signature(REGISTRY[name].model).parameters
            and (name == "signalling_network" or not default_misfit)):
        # each condition edits one target and every held-out target is unseen: the signalling network's misfit
        # per condition since session 8; the steady-state models' default per-target misfit predicted these
        # worse (session 17, RESULTS_compare.md)
        opts["residual"] = True
    if name != "signalling_network" or task not in ("hepg2_combinations", "sachs_loco"):
        return opts
    import heldout_signalling as hs

    from semimech.models import signalling_network as sn

    y = design.dense_y()
    y = y if train_rows is None else y[train_rows]
    if task == "hepg2_combinations":
        net = hs.hepg2_network(list(design.genes))
        return {"network": sn.network_option(net, targets=list(design.targets), genes=list(design.genes), y=y)}
    net = hs.sachs_network()
    return {"network": sn.network_option(net, targets=list(design.targets), genes=list(design.genes), y=y),
            "off_target": False, "readout_block": False, **opts}


def held_out_by_refit(fit, train_rows: np.ndarray, *, refit_steps: int | None, warm: bool = False,
                      key: int = 7) -> tuple[float, np.ndarray]:
    """The held-out task as one more fold of the comparison's own refits: RMSE of the leave-out
    predictive mean of every non-training row (pooled over rows x readouts), and each row's RMSE.

    The fold is refit exactly as a cross-validation fold (same fit path and start, latents of
    unseen entries drawn from their prior given the rest; ``semimech.evaluate.cv``), so the held-out
    number belongs to the same model configuration as the comparison's. ``key``: the refit's random
    key (7, the first, was the only one before the held out took 3 seeds).
    """
    import jax

    from semimech.evaluate._pointwise import RowEngine
    from semimech.evaluate.cv import _Folds, _steps

    engine = RowEngine(fit)
    row_unit = np.where(train_rows, -1, 0)
    folds = _Folds(fit, engine, row_unit, num_steps=_steps(fit, refit_steps, warm=warm),
                   refit_options={"warm_start": True} if warm else None,
                   key=jax.random.PRNGKey(key), max_pit_rows=10**6)
    folds._fold(np.array([0]))
    rows = np.flatnonzero(~train_rows)
    pred = np.stack([folds.mean[int(r)] for r in rows])
    y = np.asarray(fit.design.dense_y(), float)[rows]
    return float(np.sqrt(np.mean((pred - y) ** 2))), np.sqrt(np.mean((pred - y) ** 2, axis=1))


def held_out_from_cv(table, design) -> dict:
    """Sachs: the cross-validation over conditions *is* the held-out task (leave one condition out,
    one pseudobulk row each): pooled RMSE of each model's leave-out predictive means (``cv.l2`` per
    unit is that row's Euclidean error over the readouts)."""
    cvs = table.attrs.get("cross_validations", {})
    return {n: float(np.sqrt(np.mean(np.asarray(cv.l2, float) ** 2) / design.n_genes)) for n, cv in cvs.items()
            if cv.l2 is not None and np.isfinite(cv.l2).all()}


#: Configurations looked up in a ``heldout.py`` JSON, first found is used: the comparison's own fit
#: configuration, then sm.fit_svi's default, then sm.fit's default.
HELDOUT_KEYS = ("{}/svi (as compared)", "{}/svi", "{}/default")


def as_compared(name: str, restarts: int = 1) -> str:
    """The ``heldout.py`` configuration fitting ``name`` as the comparison's fits (sm.fit_svi, default guide;
    ``restarts > 1``: the best of that many runs by the training loss)."""
    cfg = f"{name}/svi (as compared)" if restarts == 1 else f"{name}/svi (as compared, restarts={restarts})"
    if cfg not in MODELS:
        from heldout_models import register_model

        register_model(cfg)(svi_config(name, restarts=restarts))
    return cfg


def read_heldout_json(path: str, names, *, restarts: int = 1) -> tuple[dict, dict]:
    """Held-out ``value`` (the mean over seeds) per model from ``heldout.py``'s JSON, and the detail
    (configuration used, sd over seeds, per-seed values); a model with none of :data:`HELDOUT_KEYS` gets None.
    ``restarts > 1``: only the configuration ``MODEL/svi (as compared, restarts=K)`` is read."""
    res = json.loads(pathlib.Path(path).read_text())
    keys = HELDOUT_KEYS if restarts == 1 else (f"{{}}/svi (as compared, restarts={restarts})",)
    values, detail = {}, {}
    for name in names:
        key = next((k.format(name) for k in keys if k.format(name) in res["models"]), None)
        m = res["models"].get(key) or {}
        values[name] = m.get("value")
        detail[name] = {"config": key, "value": m.get("value"), "sd_over_seeds": m.get("sd_over_seeds"),
                        "per_seed": m.get("per_seed"), "per_condition_per_seed": m.get("per_condition_per_seed"),
                        "conditions": res.get("conditions"), "seeds": (res.get("config") or {}).get("seeds"),
                        "num_steps": (res.get("config") or {}).get("num_steps"),
                        "num_samples": (res.get("config") or {}).get("num_samples")}
    return values, detail


def held_out_values(task_name: str, folds, fits: dict, *, path: str | None, steps: int, log,
                    same_design: bool = True, seeds: int = 3, draws: int = 200,
                    restarts: int = 1) -> tuple[dict, dict]:
    """Held-out value per model, by the contract of ``benchmarks/heldout.py``: the mean over ``seeds`` seeds.

    From its JSON when given (:func:`read_heldout_json`). Else, with ``seeds == 1`` and one fold whose
    training design is the comparison design (Norman, HepG2), from the comparison's own fits (one
    seed, the comparison's: the same fit predicts the held-out conditions). Else each model fitted as the comparison's fits
    (:func:`as_compared`) on the task's training design(s) for seeds 0..seeds-1 (Sachs: one refit per
    held-out condition; ``--design full``: fits of the training design). Returns (values, detail).
    """
    if path:
        return read_heldout_json(path, fits, restarts=restarts)
    task = ht.TASKS[task_name]
    truth, ref = heldout._stack(folds, "truth"), heldout._stack(folds, "reference")
    out, detail = {}, {}
    if seeds == 1 and len(folds) == 1 and task_name != "sachs_loco" and same_design:
        from heldout_models import NotApplicable, predict_labels

        for name, fit in fits.items():
            try:
                p = predict_labels(fit, folds[0], seed=0, seconds=0.0)
                out[name] = heldout.aggregate(task, truth, p.point, ref)
            except NotApplicable as err:
                log(f"  held-out: {name} cannot predict: {err}")
                out[name] = None
            detail[name] = {"config": "the comparison's own fit (--seed)", "value": out[name],
                            "per_seed": [out[name]]}
        return out, detail
    budget = Budget(num_steps=steps, num_samples=draws)
    for name in fits:
        cfg = as_compared(name, restarts)
        r = heldout.run_model(task, folds, cfg, seeds=list(range(seeds)), budget=budget, log=log)
        out[name] = r["value"]
        detail[name] = {"config": cfg, "value": r["value"], "sd_over_seeds": r.get("sd_over_seeds"),
                        "per_seed": r.get("per_seed"), "per_condition_per_seed": r.get("per_condition_per_seed"),
                        "seeds": list(range(seeds)), "num_steps": steps,
                        "num_samples": draws, "notes": r.get("notes")}
    return out, detail


def per_unit(table, design) -> dict:
    """Per model and held-out unit: elpd, CRPS, L2, targets seen nowhere else; per held-out row x gene: the
    leave-out predictive mean and sd and the observed value (for the diagnosis in RESULTS_compare.md)."""
    y = np.asarray(design.dense_y(), float)
    out = {}
    for n, cv in table.attrs.get("cross_validations", {}).items():
        rows = [] if cv.pit_rows is None else [int(r) for r in cv.pit_rows]
        out[n] = {"units": list(cv.units), "elpd": [float(v) for v in cv.pointwise],
                  "crps": None if cv.crps is None else [float(v) for v in cv.crps],
                  "l2": None if cv.l2 is None else [float(v) for v in cv.l2],
                  "unseen_targets": [list(u) for u in cv.unseen_targets], "rows": rows,
                  "row_names": [str(design.obs_names[r]) for r in rows],
                  "pred_mean": None if cv.pred_mean is None else np.round(cv.pred_mean, 6).tolist(),
                  "pred_sd": None if cv.pred_sd is None else np.round(cv.pred_sd, 6).tolist(),
                  "y": np.round(y[rows], 6).tolist()}
    return out


def _spearman(a, b) -> float | None:
    """Spearman correlation; None where one side is constant (every model tied: no ranking to correlate)."""
    from scipy import stats

    a = np.asarray(a, float)
    return None if np.ptp(a) == 0 else float(stats.spearmanr(a, b).statistic)


def held_out_separation(per_condition: dict, *, higher_is_better: bool) -> dict | None:
    """Does the held out itself separate the models? Its per-condition errors (mean over seeds) ranked by
    the comparison's rule: better by more than 2 SE of the paired difference over the held-out conditions.

    The held-out seeds vary the fit, not the conditions, so a held-out mean apart by more than 10% on a
    few conditions can still be within the spread over conditions. Returns None without per-condition values.
    """
    from semimech.evaluate.compare import _ranks

    vals = {n: np.mean(np.asarray(v, float), axis=0) for n, v in per_condition.items() if v}
    if len(vals) < 2 or len({len(v) for v in vals.values()}) != 1 or not all(np.isfinite(v).all() for v in vals.values()):
        return None
    rank, tied, above = _ranks({n: (v if higher_is_better else -v) for n, v in vals.items()}, 2.0)
    return {"rank": rank, "tied_with": tied, "n_conditions": int(len(next(iter(vals.values())))),
            "below": {n: [{"model": b, "difference": d, "se": se} for b, d, se in above[n]] for n in vals}}


def agreement(table, held: dict, *, higher_is_better: bool, held_per_condition: dict | None = None) -> dict:
    """Spearman(elpd, held-out score), first-ranked within 10% of the best held-out value, separation.

    With ``held_per_condition`` (model -> per seed, per held-out condition), also whether every
    first-ranked model that is not within 10% is one the held out itself cannot separate from its best
    (:func:`held_out_separation`): then the comparison's tie says what the held-out evidence says."""
    from scipy import stats

    ranked = table[table["rank"].notna()].set_index("model")
    names = [n for n in ranked.index if held.get(n) is not None]
    out = {"separates_any": bool(ranked["rank"].nunique() > 1), "n_ranked": int(len(ranked)),
           "n_with_held_out": len(names)}
    if len(names) < 2:
        return out
    value = np.array([held[n] for n in names], float)
    good = value if higher_is_better else -value                  # higher is better
    best = float(value[np.argmax(good)])
    if len(names) >= 3:  # on the point scores, and on the ranks the table reports (ties share a rank)
        out["spearman"] = float(stats.spearmanr(ranked.loc[names, "elpd_cv"].astype(float), good).statistic)
        out["spearman_ranks"] = _spearman(-ranked.loc[names, "rank"].astype(float), good)
    cvs = table.attrs.get("cross_validations", {})
    for what in ("l2", "crps"):  # cross-validated from the same refits, ranked by them (2 SE of paired differences)
        v = {n: getattr(cvs[n], what) for n in names if n in cvs and getattr(cvs[n], what) is not None
             and np.isfinite(getattr(cvs[n], what)).all()}
        if len(v) != len(names) or len(names) < 2:
            continue
        from semimech.evaluate.compare import _ranks

        rank_v, _, _ = _ranks({n: -x for n, x in v.items()}, 2.0)
        first_v = [n for n in names if rank_v[n] == 1]
        out[f"rank_{what}"] = rank_v
        out[f"first_ranked_{what}"] = first_v
        out[f"first_within_10pct_{what}"] = bool(all((held[n] >= best - 0.1 * abs(best)) if higher_is_better
                                                     else (held[n] <= 1.1 * best) for n in first_v))
        if len(names) >= 3:
            out[f"spearman_cv_{what}"] = float(stats.spearmanr([-v[n].mean() for n in names], good).statistic)
            out[f"spearman_ranks_cv_{what}"] = _spearman([-float(rank_v[n]) for n in names], good)
    first = [n for n in names if ranked.loc[n, "rank"] == 1]
    within = [(held[n] >= best - 0.1 * abs(best)) if higher_is_better else (held[n] <= 1.1 * best) for n in first]
    out.update({"best_held_out_model": names[int(np.argmax(good))], "best_held_out": best, "first_ranked": first,
                "first_within_10pct": bool(all(within)) if first else None})
    sep = held_out_separation({n: held_per_condition.get(n) for n in names}, higher_is_better=higher_is_better) \
        if held_per_condition else None
    if sep is not None:
        out["held_out_separation"] = sep
        # first-ranked and beyond 10% of the best held out, yet tied with the held out's best by its own rule
        beyond = [n for n, w in zip(first, within) if not w]
        out["first_beyond_10pct_separated_by_held_out"] = [n for n in beyond if sep["rank"][n] > 1]
        out["first_within_10pct_or_held_out_tie"] = bool(first) and not out["first_beyond_10pct_separated_by_held_out"]
    return out


def run(task_name: str, *, unit: str | None, k: int | None, score: str = "means", steps: int, draws: int, refit_steps: int | None,
        heldout_json: str | None, heldout_steps: int, models, full: bool | str = False, method: str = "svi",
        heldout: dict | None = None, warm: bool = False, rank_by: str = "crps", fold_form: bool = True,
        heldout_seeds: int = 3, seed: int = 0, restarts: int = 1, refits: int = 1, default_misfit: bool = False,
        log=print) -> dict:
    task = ht.TASKS[task_name]
    folds = task.build(quick=False)
    design = comparison_design(task_name, folds, full=full)
    kind = full if isinstance(full, str) else ("full" if full else "train")
    train_rows = None
    if kind.startswith("factor"):
        inhibitors = {x for v in folds[0].frame.inhibitors for x in str(v).split("+") if x != "none"}
        units = hepg2_factor_units(design, inhibitors)
        train_rows = np.array([u is None for u in units])
        unit_arg, unit = units, unit or "inhibitor set"
    else:
        unit = unit or UNITS[task_name]
        unit_arg = unit
    log(f"[{task_name}] comparison design {design}; unit {unit!r}; load {os.getloadavg()[0]:.1f}")
    result = {"task": task_name, "unit": unit, "score": score, "rank_by": rank_by, "design_kind": kind, "cold_refits": not warm, "design": repr(design), "metric": task.metric,
              "higher_is_better": task.higher_is_better, "method": method, "load_start": os.getloadavg()[0],
              "fold_form_fits": fold_form, "restarts": restarts, "refits": refits, "default_misfit": default_misfit}
    t0, c0 = time.time(), cpu_seconds()
    fits, fit_notes, fit_s = {}, {}, {}
    for name in models:
        opts = model_options(task_name, name, design, train_rows=train_rows, default_misfit=default_misfit)
        t_m, c_m = time.time(), cpu_seconds()
        # an SVI fit with every row kept by a row mask is the same fit (the mask keeps all rows, the fold's
        # data-centred priors are the design's) compiled in the form of a cross-validation refit, so the
        # comparison's refits reuse its compiled init, step and draws instead of compiling them again
        # (RESULTS_compare.md, session 9); NUTS fits are left as they were
        keep_all = {"row_mask": np.ones(design.n_obs, bool)} if fold_form else {}
        if restarts > 1:  # best of `restarts` SVI runs by the training loss; the refits inherit it
            keep_all["restarts"] = restarts
        try:
            if method == "auto":  # as sm.fit chooses (NUTS: one chain of `draws`)
                chosen, _ = sm.choose_method(REGISTRY[name], design, **opts)
                fits[name] = sm.fit(REGISTRY[name], design, rng_key=seed, num_steps=steps, num_samples=draws, num_chains=1,
                                    progress_bar=False, **opts, **(keep_all if chosen == "svi" else {}))
            else:
                fits[name] = sm.fit_svi(REGISTRY[name], design, rng_key=seed, num_steps=steps, num_samples=draws,
                                        progress_bar=False, **opts, **keep_all)
        except SemimechError as err:
            fit_notes[name] = str(err)
        fit_s[name] = {"wall": time.time() - t_m, "cpu": cpu_seconds() - c_m,
                       "method": getattr(fits.get(name), "method", None)}
        log(f"  fitted {name} ({fit_s[name]['method']}, {fit_s[name]['wall']:.0f}s wall, {fit_s[name]['cpu']:.0f}s CPU)")
    result["fit_seconds"] = fit_s
    result["fit_wall_s"], result["fit_cpu_s"] = time.time() - t0, cpu_seconds() - c0
    t1, c1 = time.time(), cpu_seconds()
    try:
        table = ev.compare(fits, unit=unit_arg, k=k, score=score, num_steps=refit_steps, rank_by=rank_by,
                           refit_options={"warm_start": True} if warm else None, refits=refits, rng_key=seed)
        result["cannot_rank"] = None
    except DesignError as err:
        table, result["cannot_rank"] = None, str(err)
        log(f"  the comparison cannot ask this question: {err}")
    result["compare_wall_s"], result["compare_cpu_s"] = time.time() - t1, cpu_seconds() - c1
    result["load_end"] = os.getloadavg()[0]
    if kind.startswith("factor"):  # the held-out task as one more refit of each compared model
        t2, c2 = time.time(), cpu_seconds()
        held, result["held_out_detail"] = {}, {}
        for name, fit in fits.items():  # seeds = the refit's key: 7 (the one seed before), 8, 9, ...
            per_seed, per_row = [], []
            for i in range(heldout_seeds):
                try:
                    v, rows = held_out_by_refit(fit, train_rows, refit_steps=refit_steps, warm=warm, key=7 + i)
                except SemimechError as err:
                    log(f"  held-out refit of {name} (seed {i}) failed: {err}")
                    per_seed, per_row = [], []
                    break
                per_seed.append(v)
                per_row.append(rows.tolist())
            held[name] = float(np.mean(per_seed)) if per_seed else None
            result["held_out_detail"][name] = {
                "config": "one more refit of the comparison's fit without the combination rows (key 7 + seed)",
                "value": held[name], "per_seed": per_seed, "per_condition_per_seed": per_row or None,
                "sd_over_seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None}
            log(f"  held-out (refit without the {int((~train_rows).sum())} combination rows) {name}: {per_seed}")
        result["heldout_wall_s"], result["heldout_cpu_s"] = time.time() - t2, cpu_seconds() - c2
        result["held_out_reference"] = heldout
    elif task_name == "sachs_loco" and table is not None:
        held = held_out_from_cv(table, design)
        result["held_out_detail"] = {  # each held-out condition's RMSE over the readouts (one seed: --seed)
            n: {"config": "the comparison's own leave-one-condition-out refits", "value": held[n], "per_seed": [held[n]],
                "per_condition_per_seed": [(np.asarray(cv.l2, float) / np.sqrt(design.n_genes)).tolist()]}
            for n, cv in table.attrs.get("cross_validations", {}).items() if n in held}
        result["held_out_reference"] = heldout
        log(f"  held-out (pooled RMSE of the leave-one-condition-out refits): {held}")
    elif heldout is not None and not heldout_json:
        held = {name: heldout.get(name) for name in fits}
    else:
        held, result["held_out_detail"] = held_out_values(task_name, folds, fits, path=heldout_json,
                                                          steps=heldout_steps, log=log, same_design=not full,
                                                          seeds=heldout_seeds, draws=draws, restarts=restarts)
        if heldout is not None:  # --heldout beside --heldout-json: a reference set (e.g. one seed's)
            result["held_out_reference"] = heldout
    result["held_out"] = held
    if table is not None:
        cols = ["model", "rank", "tied_with", "below", "elpd_cv", "se", "elpd_diff", "dse", "weight", "p_cv",
                "left_out", "n_refits", "n_units_unseen", "cv_coverage_90", "cv_calibration", "cv_crps", "cv_l2", "loo_rows_status",
                "steady_state", "note"]
        result["table"] = json.loads(table[cols].to_json(orient="records"))
        per_cond = {n: (d or {}).get("per_condition_per_seed") for n, d in (result.get("held_out_detail") or {}).items()}
        result["agreement"] = agreement(table, held, higher_is_better=task.higher_is_better,
                                        held_per_condition={n: v for n, v in per_cond.items() if v} or None)
        if result.get("held_out_reference"):
            result["agreement_reference"] = agreement(table, {n: result["held_out_reference"].get(n) for n in fits},
                                                      higher_is_better=task.higher_is_better)
        per_seed = {n: (d or {}).get("per_seed") for n, d in (result.get("held_out_detail") or {}).items()}
        n_seeds = {len(v) for v in per_seed.values() if v}
        if len(n_seeds) == 1 and n_seeds != {1}:  # every model scored on the same number of seeds (> 1)
            result["agreement_per_seed"] = [
                agreement(table, {n: (v[i] if v else None) for n, v in per_seed.items()},
                          higher_is_better=task.higher_is_better,
                          held_per_condition={n: [v[i]] for n, v in per_cond.items() if v and len(v) > i} or None)
                for i in range(n_seeds.pop())]
        result["per_unit"] = per_unit(table, design)
        result["warm_resets"] = {n: [dict(r) for r in cv.resets] for n, cv in table.attrs.get("cross_validations", {}).items()}
        result["refit_losses"] = {n: [list(r) for r in cv.refit_losses]
                                  for n, cv in table.attrs.get("cross_validations", {}).items()}
        result["refit_l2"] = {n: [list(r) for r in cv.refit_l2]
                              for n, cv in table.attrs.get("cross_validations", {}).items()}
        for n, r in result["warm_resets"].items():
            log(f"  {n}: entries started cold per refit (informed by the held-out rows only): {r}")
        log(table[[c for c in cols if c not in ("left_out", "cv_calibration", "below")]][:15].to_string(index=False))
        log(reading(table))
    result["fit_notes"] = fit_notes
    result["config"] = {"steps": steps, "draws": draws, "refit_steps": refit_steps, "k": k,
                        "heldout_steps": heldout_steps, "heldout_json": heldout_json, "heldout_seeds": heldout_seeds,
                        "seed": seed, "restarts": restarts, "refits": refits, "semimech": sm.__version__,
                        "python": platform.python_version(), "cpus": os.cpu_count()}
    return result


def markdown(r: dict) -> str:
    lines = [f"### {r['task']} (unit: {r['unit']}, comparison design: {r.get('design_kind', 'train')}, "
             f"score: {r.get('score', 'cells')})", "",
             f"fits {r['fit_wall_s']:.0f} s wall / {r['fit_cpu_s']:.0f} s CPU; comparison {r['compare_wall_s']:.0f} s wall "
             f"/ {r['compare_cpu_s']:.0f} s CPU; load {r['load_start']:.1f} -> {r['load_end']:.1f} on {r['config']['cpus']} cores", ""]
    if r.get("cannot_rank"):
        lines += [f"**Cannot rank**: {r['cannot_rank']}", ""]
    if "table" in r:
        lines += ["| model | rank | elpd_cv | se | dse | cov90 | cv L2 | held-out |", "|---|---|---|---|---|---|---|---|"]
        for row in r["table"]:
            h = r["held_out"].get(row["model"])

            def f(x, p=1):
                return "-" if x is None else f"{x:.{p}f}"

            sd = ((r.get("held_out_detail") or {}).get(row["model"]) or {}).get("sd_over_seeds")
            lines.append(f"| {row['model']} | {row['rank'] or '-'} | {f(row['elpd_cv'])} | {f(row['se'])} | "
                         f"{f(row['dse'])} | {f(row['cv_coverage_90'], 2)} | {f(row.get('cv_l2'), 3)} | {f(h, 3)}"
                         + (f" (sd {sd:.3f})" if sd is not None else "") + " |")
        a = r["agreement"]
        lines += ["", f"agreement: {json.dumps(a)}"]
        for i, a_s in enumerate(r.get("agreement_per_seed") or []):
            lines += ["", f"agreement with held-out seed {i} alone: {json.dumps(a_s)}"]
        if r.get("agreement_reference"):
            lines += ["", f"reference held-out values {json.dumps(r['held_out_reference'])}; "
                          f"agreement with them: {json.dumps(r['agreement_reference'])}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(UNITS))
    ap.add_argument("--unit", default=None)
    ap.add_argument("--design", choices=("train", "full", "factor", "factor-pairs"), default="train",
                    help="fit the comparison on the task's training design (default) or on all its rows "
                         "(factor: HepG2 as a factor design, see the module docstring)")
    ap.add_argument("--method", choices=("svi", "auto"), default="svi",
                    help="svi: sm.fit_svi for every model; auto: as sm.fit chooses (refits follow)")
    ap.add_argument("--heldout", nargs="*", default=None, metavar="NAME=VALUE",
                    help="held-out values per model (e.g. from RESULTS_heldout.md) instead of computing them")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--score", choices=("means", "cells"), default="means",
                    help="what a held-out unit is scored on (semimech.evaluate.cross_validate)")
    ap.add_argument("--rank-by", choices=("crps", "elpd", "l2"), default="crps",
                    help="what the table's rank is on (semimech.evaluate.compare; every score is reported)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--refit-steps", type=int, default=None)
    ap.add_argument("--heldout-json", default=None)
    ap.add_argument("--heldout-steps", type=int, default=None, help="default: --steps")
    ap.add_argument("--heldout-seeds", type=int, default=3,
                    help="held-out value = mean over seeds 0..N-1 of fits made as the comparison's (default 3, the "
                         "held-out contract; 1 on the training design: the comparison's own fits)")
    ap.add_argument("--heldout-only", action="store_true",
                    help="compute the held-out values only (no comparison); write heldout.py's JSON to --json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the comparison's fits and refits (default 0)")
    ap.add_argument("--restarts", type=int, default=1,
                    help="SVI fits (and the refits, and the held-out fits) as the best of K runs by the training loss "
                         "(sm.fit_svi(..., restarts=K)); default 1")
    ap.add_argument("--refits", type=int, default=1,
                    help="independent refits per fold, their draws pooled (evaluate.compare(refits=)); with --k 1 "
                         "(every unit out at once) the comparison refits the held-out question itself")
    ap.add_argument("--models", nargs="*", default=list(REGISTRY))
    ap.add_argument("--warm", action="store_true",
                    help="warm-started refits (refit_options={'warm_start': True}; a third of the steps by default); "
                         "refits start cold by default (the warm start leaked on Sachs)")
    ap.add_argument("--cold", action="store_true", help="the default now (kept for old command lines)")
    ap.add_argument("--no-fold-form", action="store_true",
                    help="fit without the all-rows row mask (the refits then compile their own programs: the "
                         "cost before session 9)")
    ap.add_argument("--default-misfit", action="store_true",
                    help="Sachs: the steady-state models keep their default per-target misfit (residual='population')")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.heldout_seeds < 1:
        ap.error("--heldout-seeds must be >= 1")
    if args.restarts < 1:
        ap.error("--restarts must be >= 1")
    if args.refits < 1:
        ap.error("--refits must be >= 1")
    if args.heldout_only:
        if not args.json:
            ap.error("--heldout-only writes heldout.py's JSON: give --json PATH")
        budget = Budget(num_steps=args.heldout_steps or args.steps, num_samples=args.draws)
        load0, t0, c0 = os.getloadavg()[0], time.time(), cpu_seconds()
        res = heldout.run(args.task, models=[as_compared(n, args.restarts) for n in args.models],
                          seeds=list(range(args.heldout_seeds)), budget=budget)
        res["config"].update({"load_start": load0, "load_end": os.getloadavg()[0], "wall_s": time.time() - t0,
                              "cpu_s": cpu_seconds() - c0, "cpus": os.cpu_count(),
                              "fitted_as": "compare_cv.py's fits: sm.fit_svi, default guide"
                              + (f", best of {args.restarts} runs by the training loss" if args.restarts > 1 else ""),
                              "restarts": args.restarts})
        print(heldout.table(res))
        out = pathlib.Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(heldout._finite(res), indent=1))
        print(f"wrote {out}")
        return 0
    r = run(args.task, unit=args.unit, k=args.k, score=args.score, steps=args.steps, draws=args.draws, refit_steps=args.refit_steps,
            heldout_json=args.heldout_json, heldout_steps=args.heldout_steps or args.steps, models=args.models,
            full=args.design if args.design.startswith("factor") else args.design == "full", method=args.method,
            warm=args.warm and not args.cold, rank_by=args.rank_by, fold_form=not args.no_fold_form,
            heldout_seeds=args.heldout_seeds, seed=args.seed, restarts=args.restarts, refits=args.refits,
            default_misfit=args.default_misfit, heldout=None if args.heldout is None else {kv.split("=")[0]: float(kv.split("=")[1]) for kv in args.heldout})
    stem = (f"compare_{args.task}" + ("" if args.design == "train" else f"_{args.design}") + f"_{args.score}"
            + (f"_seed{args.seed}" if args.seed else "") + (f"_restarts{args.restarts}" if args.restarts > 1 else "")
            + (f"_k{args.k}" if args.k else "") + (f"_refits{args.refits}" if args.refits > 1 else "")
            + ("_default-misfit" if args.default_misfit else ""))
    out = pathlib.Path(args.json or pathlib.Path(__file__).resolve().parent / "results" / f"{stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(heldout._finite(r), indent=1, default=str))
    print(markdown(r))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
