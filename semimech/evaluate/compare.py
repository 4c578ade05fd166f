"""Comparison of model assumptions: cross-validation at the level of the question, with checks beside it.

The question users ask is "which assumption predicts perturbations I have not measured?". The
comparison answers it with :func:`semimech.evaluate.cv.cross_validate`: the continuous ranked
probability score (CRPS, the default rank) and the expected log predictive density (elpd) of
held-out **units** (perturbations, combinations, contexts) — by
default of their observed means, each row x readout under its marginal predictive, the
quantity a prediction of an unmeasured perturbation is compared with (``score=``) — by
PSIS-LOO over units with exact refits wherever Pareto k-hat is bad, or by grouped K-fold
refits. The models are then compared with arviz-stats (``arviz_stats.compare``: differences
from the best, their standard errors from the paired pointwise values, stacking weights), and
ranked only where the evidence separates them: a model's rank is one plus the number of models
whose score (CRPS by default, ``rank_by=``) is better by more than two standard errors of the
paired per-unit difference, so models closer than that share a rank (a tie). Rank 1 also needs
the point predictions: a model tied first by the score whose cross-validated L2 is worse than
another first-ranked model's by more than two standard errors ranks below it (a proper score can
tie a model first on its intervals alone, :func:`point_separation`). A model that could
not be scored (its fit or a refit gives no finite log-likelihood) gets no rank and the reason.
The table says which unit was left out, and how many left-out units hold a target that no other
row has (their scores are about predicting an unseen target, whatever the unit's name).

Beside the elpd, per model: the calibration of its held-out predictive (coverage of the
central intervals implied by the leave-out PIT), PSIS-LOO over the training rows where every
row's k-hat allows it (a different question: a new row of a seen perturbation), the
assumption checks (a unique, stable steady state per condition for steady-state models, from
:meth:`semimech.Fit.diagnostics`; control drift), and held-out metrics on a test design.

Every comparison needs fits of the same rows with the same likelihood; :func:`compare`
checks both and raises :class:`~semimech.errors.DesignError` otherwise.

The row log-likelihood (:func:`pointwise_log_likelihood`): row ``i``'s value is the
log-density of all its readouts, summed over genes; for Gaussian pseudobulk rows that carry
their within-group sum of squares it includes the within-group term (the ``y_within`` factor
of :func:`semimech.measurement.observe`) and its constant, so it equals the joint
log-density of the row's cells. Other factor sites (penalties, rejected solves) are part of
the prior and are not counted.

SVI fits: the draws come from the variational approximation, not the exact posterior; they
are used as posterior draws (independent, so ``reff = 1``).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech._blas import limited_blas
from semimech._rng import as_key
from semimech.data.design import Design
from semimech.errors import DesignError, PredictionError
from semimech.evaluate._ranking import POINT_GAP, _pairwise_se  # noqa: F401 - public here too, as all the ranking rules
from semimech.evaluate._ranking import _ranks, below_text, point_gap_notes, point_separation
from semimech.infer import _args, _arviz
from semimech.infer.idata import posterior_tree
from semimech.infer.loglik import pointwise_log_likelihood  # public here too (moved to semimech.infer.loglik)

__all__ = ["compare", "loo", "pointwise_log_likelihood", "reading"]

#: Held-out metrics (the ``"mean"`` row of :func:`score`) shown next to LOO.
TEST_COLUMNS = ("l2", "pearson_delta", "mse_top_de", "direction", "coverage_90", "crps", "lpd")
#: What :func:`compare` can rank on (all cross-validated from the same refits).
RANK_BY = ("elpd", "crps", "l2")
#: Above this many rows, ``subsample="auto"`` uses subsampled PSIS-LOO.
AUTO_SUBSAMPLE_ROWS = 10_000


def _idata_with_ll(fit, ll: np.ndarray):
    return _arviz.with_log_likelihood(posterior_tree(fit), {"y": ll}, obs_dim="cells", obs_coords=fit.design.obs_names)


def _resolve_subsample(subsample, n_rows: int) -> int | None:
    if subsample == "auto":
        return min(2000, n_rows) if n_rows > AUTO_SUBSAMPLE_ROWS else None
    if subsample is None:
        return None
    m = int(subsample)
    if not 0 < m <= n_rows:
        raise DesignError(f"subsample must be between 1 and the number of rows ({n_rows}), got {subsample}.")
    return None if m == n_rows else m


def loo(fit, *, subsample: int | str | None = "auto", rng_key=0):
    """PSIS-LOO of one fit over its training rows.

    Parameters
    ----------
    fit
        A :class:`semimech.Fit`.
    subsample
        ``None``: full PSIS-LOO; an int ``m``: subsampled PSIS-LOO on ``m`` random rows
        (``arviz_stats.loo_subsample``, the "lpd" approximation elsewhere); ``"auto"`` (default):
        subsample 2000 rows above 10,000 rows.
    rng_key
        Int seed choosing the subsample (use the same for every fit you compare).

    Returns
    -------
    ``(elpd_data, summary)``: the arviz-stats ``ELPDData`` (pointwise) and a dict of plain numbers
    (``elpd_loo``, ``se``, ``p_loo``, ``n_rows``, ``khat_max``, ``n_khat_bad``, ``good_k``, ``subsample``).
    """
    from semimech.evaluate.cv import check_psis_draws

    check_psis_draws(fit, "PSIS-LOO")
    ll = pointwise_log_likelihood(fit)
    if not np.all(np.isfinite(ll)):
        raise DesignError(f"the log-likelihood of {fit.spec.name!r} is not finite for some draws and rows; "
                          "the fit did not converge or a draw is degenerate. Refit with more steps.")
    m = _resolve_subsample(subsample, fit.design.n_obs)
    reff = 1.0 if fit.method == "svi" else None
    seed = int(np.asarray(as_key(rng_key))[-1])
    res, warned = _arviz.loo(_idata_with_ll(fit, ll), var_name="y", reff=reff, subsample=m, seed=seed)
    summary = _arviz.loo_summary(res)
    summary["warning"] = bool(warned or summary["n_khat_bad"] > 0)
    return res, summary


def _same_data(a: Design, b: Design) -> str | None:
    if a is b:
        return None
    if tuple(a.obs_names) != tuple(b.obs_names):
        return "different rows (obs_names differ)"
    if tuple(a.genes) != tuple(b.genes):
        return "different genes"
    if not np.array_equal(a.n_cells, b.n_cells):
        return "different cells per row (one is a pseudobulk of the other?)"
    ya, yb = a.y, b.y
    if sp.issparse(ya) or sp.issparse(yb):
        ya, yb = sp.csr_matrix(ya), sp.csr_matrix(yb)
        same = ya.shape == yb.shape and (ya != yb).nnz == 0
    else:
        same = np.array_equal(np.asarray(ya), np.asarray(yb))
    return None if same else "different readouts"


def _check_comparable(fits: Mapping) -> None:
    names = list(fits)
    first = fits[names[0]]
    for name in names[1:]:
        fit = fits[name]
        why = _same_data(first.design, fit.design)
        if why is not None:
            raise DesignError(
                f"LOO of {names[0]!r} and {name!r} cannot be compared: they were fitted on {why}. LOO compares "
                "only fits of the same rows; fit every model on the same training Design (same split, same "
                "pseudobulk).")
        if fit.likelihood != first.likelihood:
            raise DesignError(
                f"LOO of {names[0]!r} (likelihood {first.likelihood!r}) and {name!r} ({fit.likelihood!r}) cannot be "
                "compared: densities of different likelihoods are on different scales. Fit both with the same "
                "likelihood= option.")


def _check_test(fits: Mapping, test: Design | None) -> None:
    if test is None:
        return
    if not isinstance(test, Design) or test.y is None:
        raise DesignError("test must be a data Design with readouts (the held-out rows of a split).")
    train = next(iter(fits.values())).design
    shared = sorted(set(train.observed_perturbations()) & set(test.observed_perturbations()) - {train.control})
    if shared:
        raise DesignError(
            f"the test design shares perturbations with the training design ({shared[:5]}{'...' if len(shared) > 5 else ''}): "
            "held-out scores of seen perturbations measure recall, not prediction. Split with "
            "semimech.evaluate.split_combinations / leave_one_perturbation_out and fit on the training side only.")


def _held_out(fit, test: Design, *, reference, batch, rng_key) -> tuple[dict, str]:
    from semimech.evaluate._align import cell_counts, held_out_labels
    from semimech.evaluate.score import score
    from semimech.infer.predict import predict

    try:
        labels = list(held_out_labels(test, None, batch=batch))
        counts = cell_counts(test, labels)
        pred = predict(fit, labels, rng_key=rng_key, num_cells=counts, batch=batch)
        row = score(pred, test, reference=reference, batch=batch).iloc[-1]
    except PredictionError as err:
        return {}, f"no held-out score: {err}"
    vals = {c: float(row[c]) for c in TEST_COLUMNS}
    bad = [c for c, v in vals.items() if not np.isfinite(v)]
    return {c: v for c, v in vals.items() if np.isfinite(v)}, (f"held-out {bad} not finite" if bad else "")


def _assumption_checks(fit) -> dict:
    """Unique stable steady states (steady-state models, ``fit.diagnostics()``) and the control's own."""
    from semimech.checks import is_steady_state_model

    if not is_steady_state_model(fit.spec):
        return {"steady_state": None, "control_stable": None,
                "assumption_checks": "no dynamics: no steady state or control drift to check"}
    d = fit.diagnostics()
    frac, worst = d.get("steady_state_all"), d.get("steady_state_worst")
    ctrl = d.get("steady_state_by_condition", {}).get(fit.design.control)
    text = (f"stable unique steady state for every condition in {frac:.0%} of checked draws "
            f"(worst condition {worst!r}: {d.get('steady_state_min_fraction', float('nan')):.0%}); control drift: "
            "the control is a fixed point of the fitted dynamics by construction, stable and unique in "
            f"{'-' if ctrl is None else f'{ctrl:.0%}'} of draws (else it would drift away)")
    return {"steady_state": frac, "control_stable": ctrl, "assumption_checks": text}


def _scored_table(cvs: Mapping) -> pd.DataFrame:
    """arviz-stats' comparison of the cross-validated elpds: elpd_diff and dSE vs the best, stacking weights."""
    if len(cvs) == 1:
        (name,) = cvs
        return pd.DataFrame({"elpd_diff": [0.0], "dse": [0.0], "weight": [1.0]}, index=[name])
    cmp = _arviz.compare_elpd({n: cv.elpd for n, cv in cvs.items()})
    return pd.DataFrame({"elpd_diff": cmp["elpd_diff"].astype(float), "dse": cmp["dse"].astype(float),
                         "weight": cmp["weight"].astype(float)})


@limited_blas()
def compare(fits: Mapping, *, unit: str = "perturbation", k: int | None = None, score: str = "means",
            rank_by: str = "crps", test: Design | None = None,
            reference=None, batch: str | None = None, num_steps: int | None = None,
            refit_options: dict | None = None, row_loo: bool = True, checks: bool = True, tie_se: float = 2.0,
            refits: int = 1, rng_key=0) -> pd.DataFrame:
    """Compare fitted models by cross-validation over held-out units, with their checks beside it.

    Parameters
    ----------
    fits
        ``{name: Fit}``, two or more, every fit on the same training Design with the same likelihood.
        SVI fits made with ``row_mask=np.ones(design.n_obs, bool)`` (every row kept: the same fit) are
        compiled in the form of the cross-validation refits, which then reuse their programs instead of
        compiling their own (see :mod:`semimech.evaluate.cv`).
    unit, k, num_steps, refit_options
        What is left out and how (:func:`semimech.evaluate.cv.cross_validate`): ``unit`` is
        ``"perturbation"`` (default), ``"combination"``, ``"combinable"`` (combinations whose every
        target is also seen alone), ``"single"``, ``"context"`` or one label per row; ``k`` folds
        (default leave-one-unit-out up to 10 units). ``k=1`` leaves every unit out at once (one refit
        per model: e.g. every combination predicted from the singles alone).
    refits
        Independent refits per fold, their draws pooled (:func:`~semimech.evaluate.cv.cross_validate`):
        a model whose refits land in different optima is scored on all of them, not on one key's luck.
    score
        ``"means"`` (default): a held-out unit is scored on the log predictive density of its
        observed means (each pseudobulk row x readout); ``"cells"``: on its cells' joint density,
        which is mostly a score of the noise model (see :mod:`semimech.evaluate.cv`).
    rank_by
        ``"crps"`` (default): rank on ``cv_crps``, the cross-validated continuous ranked
        probability score of the held-out observed means (a proper score of the whole predictive
        distribution, in the readouts' units: it grows with the error linearly, so one entry no
        model predicts cannot outweigh every other unit). ``"elpd"``: rank on the cross-validated
        log score (arviz-stats' ``elpd_diff``/``dse``/``weight`` are reported either way); on
        Norman doubles it was decided by one such entry (z > 100 under every model, all models
        tied) or by the sharpness of ~100 barely-changing genes, and agreed less with held-out
        error (benchmarks/RESULTS_compare.md, session 8). ``"l2"``: rank on ``cv_l2``, the
        distance between the leave-out predictive mean and the observed means, i.e. the held-out
        contract's point error alone. Either way ties are within ``tie_se`` SE of the paired
        per-unit difference.
    test
        Optional held-out design (no perturbation shared with training): each model predicts
        it and is scored with :func:`semimech.evaluate.score` (``test_*`` columns).
    reference, batch
        Passed to :func:`score`.
    row_loo
        Also PSIS-LOO over the training rows (cells, or pseudobulk rows): reported only where
        every row's Pareto k-hat is acceptable (a different question: a new row of a seen
        perturbation).
    checks
        Assumption checks as columns (``fit.diagnostics()``: unique stable steady states).
    tie_se
        Models closer than ``tie_se`` standard errors of their paired difference share a rank.
    rng_key
        Int seed.

    Returns
    -------
    pandas.DataFrame
        One row per model, best first; models that could not be scored last, with ``rank``
        missing (``<NA>``) and the reason in ``note``. Columns: ``model``, ``rank`` (1 + the
        number of models better by more than ``tie_se`` SE; with ``rank_by`` ``"crps"`` or ``"elpd"``,
        a model tied first by the score but worse on points than another first-ranked model by more
        than ``tie_se`` SE of the paired per-unit L2 ranks below it: :func:`point_separation`),
        ``tied_with``, ``below`` (the models
        that separate it: better by more than ``tie_se`` SE, with the paired difference and its SE;
        ties are not transitive, so a model tied with the best can still rank 2), ``elpd_cv``,
        ``se``, ``elpd_diff`` and ``dse`` (vs the best, arviz-stats), ``weight`` (stacking),
        ``p_cv``, ``left_out`` (the unit and scheme), ``n_units``, ``n_refits``, ``cv_coverage_90``
        and ``cv_calibration`` (held-out PIT), ``cv_crps`` (mean over units of the held-out CRPS: the
        rank with the default ``rank_by``), ``cv_l2`` (mean over units of the L2 distance between
        the leave-out predictive mean and the observed rows: the held-out contract's error,
        cross-validated; the rank with ``rank_by="l2"``, and otherwise what separates first-ranked
        models on points), ``n_units_unseen`` (left-out units holding a target that no other row has),
        ``elpd_loo_rows``/``loo_rows_se``/``loo_rows_status``
        (PSIS-LOO over rows), ``steady_state`` (fraction of checked draws where every
        condition has a stable, unique steady state), ``control_stable`` (the same for the
        control alone) and ``assumption_checks`` (in words), ``test_*``,
        ``method``, ``note``, ``assumes``. Numbers that could not be estimated are ``<NA>``
        (nullable dtypes), never NaN.

    Raises
    ------
    DesignError
        Fewer than two fits, objects that are not fits, fits on different rows / readouts /
        likelihoods, a test design that shares perturbations with training.
    """
    from semimech.errors import InferenceError, SemimechError
    from semimech.evaluate.cv import SCORES, check_refits, cross_validate, is_fit, plan

    if not isinstance(fits, Mapping) or not fits:
        raise DesignError("compare needs a non-empty dict {name: Fit}.")
    bad = [n for n, f in fits.items() if not is_fit(f)]
    if bad:
        raise DesignError(f"not a semimech Fit: {bad}. Pass {{name: fit}} with fits from fit_svi / fit_nuts.")
    if len(fits) < 2:
        raise DesignError("compare needs two or more fits to compare; to score one model use "
                          "semimech.evaluate.cross_validate(fit, unit=...).")
    _check_comparable(fits)
    _check_test(fits, test)
    if score not in SCORES:
        raise DesignError(f"unknown score {score!r}; choose one of {SCORES}.")
    if rank_by not in RANK_BY:
        raise DesignError(f"unknown rank_by {rank_by!r}; choose one of {RANK_BY}.")
    _args.number("tie_se", tie_se, strict=False, error=DesignError)
    refits = check_refits(refits)
    for fit in fits.values():  # the caller's mistakes (a unit, k, steps, refit options) refused before any refit
        plan(fit, unit=unit, k=k, score=score, num_steps=num_steps, refit_options=refit_options)
    key = as_key(rng_key)
    cvs, rows = {}, []
    for i, (name, fit) in enumerate(fits.items()):
        name = str(name)
        row, notes = {"model": name, "method": fit.method}, []
        try:
            cv = cross_validate(fit, unit=unit, k=k, score=score, num_steps=num_steps, refit_options=refit_options,
                                refits=refits, rng_key=jax.random.fold_in(key, 0))
        except (SemimechError, InferenceError) as err:
            notes.append(f"not ranked: cross-validation failed ({err})")
            cv = None
        except Exception as err:  # noqa: BLE001 - one model's failure must not lose the others' scores
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            notes.append(f"not ranked: cross-validation failed with an unexpected {type(err).__name__}: {first} "
                         "(a bug: please report it)")
            cv = None
        if cv is not None:
            cvs[name] = cv
            cal = cv.calibration.table.set_index("nominal")
            row.update({"elpd_cv": float(cv.elpd.elpd), "se": float(cv.elpd.se), "p_cv": float(cv.elpd.p),
                        "left_out": cv.describe(), "n_units": len(cv.units), "n_refits": cv.n_refits,
                        "cv_coverage_90": float(cal.loc[0.9, "empirical"]) if 0.9 in cal.index else None,
                        "cv_l2": float(np.nanmean(cv.l2)) if cv.l2 is not None and np.isfinite(cv.l2).any() else None,
                        "cv_crps": (float(np.nanmean(cv.crps)) if cv.crps is not None and np.isfinite(cv.crps).any()
                                    else None),
                        "n_units_unseen": sum(bool(u) for u in cv.unseen_targets),
                        "cv_calibration": cv.calibration.verdict})
            note = refit_note(cv)
            if note:
                notes.append(note)
        if row_loo:
            row.update(_row_loo(fit, rng_key=rng_key))
        if checks:
            row.update(_assumption_checks(fit))
        if test is not None:
            metrics, note = _held_out(fit, test, reference=reference, batch=batch,
                                      rng_key=jax.random.fold_in(key, i + 1))
            row.update({f"test_{c}": metrics.get(c) for c in TEST_COLUMNS})
            if note:
                notes.append(note)
        row["note"] = "; ".join(notes)
        row["assumes"] = fit.spec.assumes
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    on_points = {}   # model -> the first-ranked models that separate it on points
    if cvs:
        scored = _scored_table(cvs)
        for name in cvs:
            for c in ("elpd_diff", "dse", "weight"):
                table.loc[name, c] = scored.loc[name, c]
        values = {n: cv.pointwise for n, cv in cvs.items()}
        if rank_by in ("l2", "crps"):
            values = {n: -getattr(cv, rank_by) for n, cv in cvs.items()
                      if getattr(cv, rank_by) is not None and np.all(np.isfinite(getattr(cv, rank_by)))}
            for name in set(cvs) - set(values):
                _append_note(table, name, f"not ranked: no {rank_by} for every unit (raise max_pit_rows)")
        if rank_by != "elpd":  # differences of per-unit means (the column's scale): same ranks as of sums
            values = {n: v / len(v) for n, v in values.items()}
        rank, ties, above = _ranks(values, tie_se)
        fmt = ".1f" if rank_by == "elpd" else ".3f"
        for name in values:
            table.loc[name, "rank"] = rank[name]
            table.loc[name, "tied_with"] = ", ".join(ties[name])
            table.loc[name, "below"] = below_text(above[name], fmt=fmt)
        if rank_by != "l2":
            points = {n: cvs[n].l2 for n in values if rank[n] == 1}
            demoted = point_separation(points, tie_se)
            on_points = {n: [b for b, _, _ in below] for n, (below, _) in demoted.items()}
            for name, (below, note) in demoted.items():
                table.loc[name, "rank"] = 1 + len(below)
                table.loc[name, "below"] = "; ".join(filter(None, [table.loc[name, "below"],
                                                                   below_text(below, on=" on points")]))
                _append_note(table, name, note)
                for b, _, _ in below:  # separated on points: no longer tied either way
                    ties[name] = [t for t in ties[name] if t != b]
                    ties[b] = [t for t in ties[b] if t != name]
            for name in points:
                table.loc[name, "tied_with"] = ", ".join(ties[name])
        if len(values) == 1:
            table.loc[next(iter(values)), "note"] = "the only model that could be scored: nothing to rank it against"
        elif rank_by != "l2":
            for name, note in point_gap_notes(table.loc[list(values)], rank_by=rank_by).items():
                _append_note(table, name, note)
    out = _tidy(table, has_test=test is not None, rank_by=rank_by)
    out.attrs.update({"rank_by": rank_by, "score": score, "cross_validations": cvs,
                      "below_on_points": on_points})
    return out


def _append_note(table: pd.DataFrame, name: str, note: str) -> None:
    """Add ``note`` to model ``name``'s notes (``"; "``-separated)."""
    table.loc[name, "note"] = "; ".join(filter(None, [table.loc[name, "note"], note]))


#: Refits of one fold whose held-out L2 differ by more than this factor are reported as disagreeing.
REFIT_DISAGREEMENT = 1.5


def refit_note(cv) -> str:
    """A note when a fold's independent refits predict its held-out units very differently (``""`` if not).

    The factor :data:`REFIT_DISAGREEMENT` (max over min of the refits' held-out L2 in one fold) is a
    reporting threshold, not a test: on Norman doubles the refits of stable models agree within a
    few percent, production_decay's good and bad optima differ 2-3x.
    """
    spread = [(min(f), max(f)) for f in getattr(cv, "refit_l2", ()) if len(f) > 1 and min(f) > 0]
    bad = [(lo, hi) for lo, hi in spread if hi > REFIT_DISAGREEMENT * lo]
    if not bad:
        return ""
    lo, hi = max(bad, key=lambda b: b[1] / b[0])
    return (f"its refits disagree: the held-out L2 of single refits of one fold ranges from {lo:.3f} to {hi:.3f} "
            "(fits landing in different optima); its score is that of their mixture, and with few refits it depends on "
            "how many land in each: pool more (refits=) before trusting its rank")


def _row_loo(fit, *, rng_key) -> dict:
    try:
        _, s = loo(fit, rng_key=rng_key)
    except (DesignError, PredictionError) as err:
        return {"loo_rows_status": f"not estimated: {err}"}
    if s["n_khat_bad"] > 0:
        return {"loo_rows_status": f"not reported: Pareto k-hat above {s['good_k']:.2f} on {s['n_khat_bad']} of "
                                   f"{s['n_rows']} rows (max {s['khat_max']:.1f}); the importance weights are "
                                   "unreliable there"}
    return {"elpd_loo_rows": s["elpd_loo"], "loo_rows_se": s["se"],
            "loo_rows_status": f"psis over {s['n_rows']} rows, every k-hat <= {s['good_k']:.2f}"}


COLUMNS = ("model", "rank", "tied_with", "below", "elpd_cv", "se", "elpd_diff", "dse", "weight", "p_cv", "left_out", "n_units",
           "n_refits", "n_units_unseen", "cv_coverage_90", "cv_calibration", "cv_crps", "cv_l2", "elpd_loo_rows", "loo_rows_se", "loo_rows_status",
           "steady_state", "control_stable", "assumption_checks")
_NUMERIC = ("elpd_cv", "se", "elpd_diff", "dse", "weight", "p_cv", "cv_coverage_90", "cv_crps", "cv_l2", "elpd_loo_rows", "loo_rows_se",
            "steady_state", "control_stable") + tuple(f"test_{c}" for c in TEST_COLUMNS)


def _tidy(table: pd.DataFrame, *, has_test: bool, rank_by: str = "elpd") -> pd.DataFrame:
    cols = list(COLUMNS) + ([f"test_{c}" for c in TEST_COLUMNS] if has_test else []) + ["method", "note", "assumes"]
    table = table.reset_index().reindex(columns=cols)
    for c in cols:
        if c in _NUMERIC:
            table[c] = pd.array([None if v is None or not np.isfinite(v) else float(v)
                                 for v in pd.to_numeric(table[c], errors="coerce").astype(float)], dtype="Float64")
        elif c in ("rank", "n_units", "n_refits", "n_units_unseen"):
            table[c] = pd.array([None if pd.isna(v) else int(v) for v in table[c]], dtype="Int64")
        else:
            table[c] = [("" if c in ("tied_with", "below", "note") else "-") if (v is None or (isinstance(v, float) and np.isnan(v)))
                        else v for v in table[c]]
    second = -table["elpd_cv"].fillna(-np.inf) if rank_by == "elpd" else table[f"cv_{rank_by}"].fillna(np.inf)
    order = table.assign(_r=table["rank"].fillna(10**6), _e=second)
    order = order.sort_values(["_r", "_e"], kind="stable")
    return table.loc[order.index].reset_index(drop=True)


def reading(table: pd.DataFrame) -> str:
    """A plain-language reading of a :func:`compare` table (one line per model, no more than it shows)."""
    lines = []
    ranked = table[table["rank"].notna()]
    best = ranked.iloc[0] if len(ranked) else None
    for _, r in table.iterrows():
        if pd.isna(r["rank"]):
            verdict = f"no rank ({r.note or 'not scored'})"
        elif r["model"] == best["model"]:
            others = r.tied_with
            what = {"l2": "lowest cross-validated L2", "crps": "lowest cross-validated CRPS"}.get(
                table.attrs.get("rank_by"), "best cross-validated elpd")
            behind = [n for n, above in table.attrs.get("below_on_points", {}).items() if r["model"] in above]
            if behind:  # models tied with it by the score, separated on points
                what = "first"
                ahead = (f", ahead of {', '.join(behind)} on points (tied by the score) and of the others by the score"
                         if len(behind) < len(ranked) - 1 else f", ahead of {', '.join(behind)} on points (tied by the score)")
            else:
                ahead = ", clearly ahead of the others"
            verdict = what + (f", but not separable from {others} (within 2 SE)" if others else ahead)
        elif r["rank"] == 1:
            verdict = (f"tied with {best.model!r} (within 2 SE of the paired difference): the evidence cannot "
                       "separate them")
        else:  # name the models that separate it (> 2 SE), not the best: ties are not transitive
            sep = r.get("below", "")
            verdict = (f"rank {r['rank']}: below {sep} (paired difference, its SE)" if sep else
                       f"rank {r['rank']}: below {best.model!r} by {r.elpd_diff:.1f} (SE of the difference {r.dse:.1f})")
            if r.tied_with:
                verdict += f"; within 2 SE of {r.tied_with}"
        extra = []
        if not pd.isna(r.get("cv_crps", pd.NA)):
            extra.append(f"cross-validated CRPS {r.cv_crps:.3f}")
        if not pd.isna(r.get("cv_l2", pd.NA)):
            extra.append(f"cross-validated L2 {r.cv_l2:.3f}")
        if not pd.isna(r.get("cv_coverage_90", pd.NA)):
            extra.append(f"held-out 90% intervals cover {r.cv_coverage_90:.0%} ({r.cv_calibration})")
        if "test_l2" in r and not pd.isna(r["test_l2"]):
            extra.append(f"test L2 {r.test_l2:.3f}")
        if not pd.isna(r.get("steady_state", pd.NA)):
            extra.append(f"stable unique steady state in {r.steady_state:.0%} of draws")
        note = r.get("note")
        if not pd.isna(r["rank"]) and isinstance(note, str) and note not in ("", "-"):
            extra.append(note)   # e.g. refits that disagree: part of what the rank means
        lines.append(f"{r.model}: {verdict}" + (f"; {'; '.join(extra)}" if extra else "") + f". Assumes: {r.assumes}.")
    if len(table):
        lines.append(f"Left out: {table.left_out.iloc[0] if table.left_out.iloc[0] != '-' else 'see notes'}.")
    return "\n".join(lines)
