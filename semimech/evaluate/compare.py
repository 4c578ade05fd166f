"""Comparison of model assumptions: PSIS-LOO next to held-out metrics, in one tidy table.

Two questions, two columns of evidence:

- *How well does each model predict a left-out row of its own training data?* PSIS-LOO
  (Vehtari, Gelman & Gabry 2017) through arviz-stats, from the posterior draws: ``elpd_loo``
  (higher is better), its standard error, the effective number of parameters ``p_loo``, and the
  Pareto k-hat diagnostics (k-hat above ``good_k`` means the importance sampling is unreliable
  for that row and the elpd estimate is optimistic).
- *How well does it predict perturbations it never saw?* The held-out metrics of
  :func:`semimech.evaluate.score` on a test design (L2, Pearson-delta, coverage, CRPS, lpd).

The unit of LOO is a **row** of the training design (a cell, or a pseudobulk sample): the
pointwise log-likelihood of row ``i`` is the log-density of all its readouts, summed over
genes. For Gaussian pseudobulk rows that carry their within-group sum of squares the row's
log-likelihood includes the within-group term (the ``y_within`` factor of
:func:`semimech.measurement.observe`) and its constant, so it equals the joint log-density
of the row's cells: leaving a pseudobulk row out is leaving its group of cells out. Other
factor sites (penalties, rejected solves) are part of the prior and are not counted.

LOO values compare only between fits of the **same rows** with the **same likelihood**;
:func:`compare` checks both and raises :class:`~semimech.errors.DesignError` otherwise.

SVI fits: the draws come from the variational approximation, not the exact posterior; they
are used as posterior draws (independent, so ``reff = 1``). Large k-hat values then also flag
a poor approximation.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech._rng import as_key
from semimech.data.design import Design
from semimech.errors import DesignError, PredictionError
from semimech.infer import _arviz
from semimech.infer.idata import posterior_tree
from semimech.infer.loglik import pointwise_log_likelihood  # public here too (moved to semimech.infer.loglik)

__all__ = ["compare", "loo", "pointwise_log_likelihood", "reading"]

#: Held-out metrics (the ``"mean"`` row of :func:`score`) shown next to LOO.
TEST_COLUMNS = ("l2", "pearson_delta", "mse_top_de", "direction", "coverage_90", "crps", "lpd")
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
        return {c: np.nan for c in TEST_COLUMNS}, f"cannot predict the test set: {err}"
    return {c: float(row[c]) for c in TEST_COLUMNS}, ""


def compare(fits: Mapping, *, test: Design | None = None, reference=None, batch: str | None = None,
            subsample: int | str | None = "auto", rng_key=0) -> pd.DataFrame:
    """Compare fitted models: PSIS-LOO on the training rows next to held-out metrics.

    Parameters
    ----------
    fits
        ``{name: Fit}``, every fit on the same training Design with the same likelihood.
    test
        Optional held-out design: each model predicts its held-out perturbations and is scored
        with :func:`semimech.evaluate.score` (the ``"mean"`` row).
    reference, batch
        Passed to :func:`score` (``reference=train`` uses training controls and centroids;
        ``batch`` scores within one context).
    subsample
        LOO subsampling, see :func:`loo` (the same rows are used for every fit).
    rng_key
        Int seed for the LOO subsample and the predictive draws.

    Returns
    -------
    pandas.DataFrame
        One row per model, best LOO first: ``model``, ``rank``, ``elpd_loo``, ``se``, ``elpd_diff``
        and ``dse`` (difference from the best and its standard error, from the pointwise
        values), ``p_loo``, ``weight`` (stacking), ``khat_max``, ``n_khat_bad`` (rows with k-hat
        above ``good_k``), ``loo_warning``, ``loo`` (``"psis"`` or ``"psis-subsample(m)"``),
        ``n_rows``, ``method``, then the held-out metrics (``test_l2``, ``test_pearson_delta``,
        ``test_mse_top_de``, ``test_direction``, ``test_coverage_90``, ``test_crps``,
        ``test_lpd``; NaN without ``test``), ``note`` and ``assumes`` (the model's
        assumption in one sentence). A difference is clear when ``elpd_diff`` is several ``dse``.

    Raises
    ------
    DesignError
        When fits differ in rows, readouts or likelihood (their LOO values are not comparable).
    """
    if not isinstance(fits, Mapping) or not fits:
        raise DesignError("compare needs a non-empty dict {name: Fit}.")
    bad = [n for n, f in fits.items() if not (hasattr(f, "design") and hasattr(f, "spec") and hasattr(f, "samples"))]
    if bad:
        raise DesignError(f"not a semimech Fit: {bad}. Pass {{name: fit}} with fits from fit_svi / fit_nuts.")
    _check_comparable(fits)
    key = as_key(rng_key)
    k_pred = jax.random.split(key, len(fits))
    elpds, rows = {}, []
    for (name, fit), kp in zip(fits.items(), k_pred):
        res, s = loo(fit, subsample=subsample, rng_key=rng_key)
        elpds[str(name)] = res
        row = {"model": str(name), **{k: s[k] for k in ("elpd_loo", "se", "p_loo", "khat_max", "n_khat_bad")},
               "loo_warning": s["warning"],
               "loo": "psis" if s["subsample"] is None else f"psis-subsample({s['subsample']})",
               "n_rows": s["n_rows"], "method": fit.method}
        note = ""
        if test is not None:
            metrics, note = _held_out(fit, test, reference=reference, batch=batch, rng_key=kp)
            row.update({f"test_{k}": v for k, v in metrics.items()})
        else:
            row.update({f"test_{k}": np.nan for k in TEST_COLUMNS})
        if s["warning"]:
            note = "; ".join(x for x in (note, f"{s['n_khat_bad']} rows with k-hat > {s['good_k']:.2f}: "
                                         "LOO unreliable there (optimistic)") if x)
        row["note"] = note
        row["assumes"] = fit.spec.assumes
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    finite = np.isfinite(table.elpd_loo.to_numpy(float))
    for name in table.index[~finite]:
        table.loc[name, "note"] = "; ".join(x for x in (table.loc[name, "note"], "PSIS failed (non-finite elpd): "
                                            "the draws are far from the posterior; refit longer or use NUTS") if x)
    if len(elpds) > 1 and not finite.all():
        # arviz-stats cannot rank non-finite values: rank the finite ones, the rest last
        order = table.elpd_loo.fillna(-np.inf).rank(ascending=False, method="first").astype(int) - 1
        table["rank"] = order
        table["elpd_diff"] = np.nanmax(table.elpd_loo) - table.elpd_loo
        table["dse"], table["weight"] = np.nan, np.nan
    elif len(elpds) > 1:
        cmp = _arviz.compare_elpd(elpds)
        table["rank"] = cmp["rank"].astype(int)
        table["elpd_diff"] = cmp["elpd_diff"].astype(float)
        table["dse"] = cmp["dse"].astype(float)
        table["weight"] = cmp["weight"].astype(float)
    else:
        table["rank"], table["elpd_diff"], table["dse"], table["weight"] = 0, 0.0, 0.0, 1.0
    table = table.sort_values("rank").reset_index()
    first = ["model", "rank", "elpd_loo", "se", "elpd_diff", "dse", "p_loo", "weight"]
    return table[first + [c for c in table.columns if c not in first]]


def reading(table: pd.DataFrame) -> str:
    """A plain-language reading of a :func:`compare` table (one line per model)."""
    lines = []
    best = table.iloc[0]
    for _, r in table.iterrows():
        if not np.isfinite(r.elpd_loo):
            verdict = "no LOO estimate (PSIS failed)"
        elif r["rank"] == 0:
            verdict = "best by LOO"
        elif not np.isfinite(r.dse):
            verdict = f"below {best.model!r} by {r.elpd_diff:.1f} (no se of the difference)"
        elif r["dse"] > 0 and r["elpd_diff"] > 2 * r["dse"]:
            verdict = f"worse than {best.model!r} by {r.elpd_diff:.1f} (> 2 se of the difference, {r.dse:.1f})"
        else:
            verdict = f"indistinguishable from {best.model!r} (difference {r.elpd_diff:.1f}, se {r.dse:.1f})"
        held = "" if np.isnan(r.get("test_l2", np.nan)) else f"; held-out L2 {r.test_l2:.3f}"
        lines.append(f"{r.model}: {verdict}{held}. Assumes: {r.assumes}.")
    return "\n".join(lines)

