"""How held-out units are scored in :mod:`semimech.evaluate.cv` (fold assignment, PSIS PIT, ``score="means"``),
and the refits behind the scores (``refits=`` checked, the refits' draws pooled, their final losses).

The public path of :func:`check_refits` and :func:`pooled` is :mod:`semimech.evaluate.cv`, which imports them from here.
"""

from __future__ import annotations

import jax
import numpy as np

from semimech.errors import DesignError, InferenceError
from semimech.infer import _arviz
from semimech.infer.idata import posterior_tree

#: Bound on held-out entries x draws for ``score="means"`` (the entries' log densities are held in memory).
MAX_ENTRY_VALUES = 50_000_000


def kfold_scheme(k: int) -> str:
    """The name of a K-fold scheme: ``"all-out"`` for ``k=1`` (every unit out at once), else ``"K-fold"``."""
    return "all-out" if k == 1 else f"{k}-fold"


def fold_of_unit(n_u: int, k: int, key) -> np.ndarray:
    """Fold (``1..k``) of each unit: a random permutation dealt round-robin."""
    order = np.random.default_rng(np.asarray(key, dtype=np.uint32)).permutation(n_u)
    assign = np.empty(n_u, int)
    assign[order] = np.arange(n_u) % k + 1
    return assign


def psis_pit(engine, folds, row_unit, lw, *, key) -> None:
    """PIT of every held-out row under the full fit's draws, weighted by its unit's PSIS weights."""
    rows = np.flatnonzero(row_unit >= 0)[: folds.max_pit_rows]
    rep = engine.replicates(jax.random.fold_in(key, 2), folds.full, rows=rows)
    folds.pit_rows(rows, rep, None if lw is None else lw[row_unit[rows]])


def entry_values(fit, engine, folds, row_unit) -> np.ndarray:
    """``(draws, entries)``: the full fit's log density of every held-out row x readout (sets the
    entries' rows and genes on ``folds``). The first evaluation of the model for ``score="means"``."""
    design = fit.design
    rows = np.flatnonzero(row_unit >= 0)
    g = design.n_genes
    n_e = rows.size * g
    if n_e * fit.num_draws > MAX_ENTRY_VALUES:
        raise DesignError(f"score='means' scores every held-out row x readout ({rows.size} x {g} under "
                          f"{fit.num_draws} draws): too many values. Fit a pseudobulk (design.pseudobulk()) so that a "
                          "row is a perturbation's mean, or pass score='cells'.")
    folds.entry_row, folds.entry_gene = np.repeat(rows, g), np.tile(np.arange(g), rows.size)
    ll = engine.entry_log_likelihood(folds.full, rows).reshape(-1, n_e)
    if not np.all(np.isfinite(ll)):
        raise InferenceError(f"the log density of {fit.spec.name!r}'s held-out means is not finite for some draws; "
                             "the fit did not converge or a draw is degenerate. Refit with more steps.")
    return ll


def score_means(fit, engine, folds, row_unit, units, k, ll, *, key, reff):
    """``score="means"``: the held-out log density of each row x readout's observed value (a pseudobulk
    row's mean), each entry scored marginally, summed per unit; ``ll`` from :func:`entry_values`.
    Returns ``(ELPDData over units, scheme, units scored by PSIS, largest k-hat)``."""
    from scipy.special import logsumexp

    n_u, n_e = len(units), ll.shape[1]
    entry_unit = row_unit[folds.entry_row]
    lpd_full = logsumexp(ll, axis=0) - np.log(ll.shape[0])
    tree = posterior_tree(fit)
    if k == n_u:  # PSIS over units (the weights of leaving a unit out), then exact refits where k-hat is bad
        ll_u = np.stack([ll[:, entry_unit == p].sum(1) for p in range(n_u)], axis=-1)
        dt = _arviz.with_log_likelihood(tree, {"y": ll_u.reshape(fit.num_chains, fit.num_draws, n_u)},
                                        obs_dim="units", obs_coords=units)
        loo_u, _ = _arviz.loo(dt, var_name="y", reff=reff)
        khat = np.asarray(loo_u.pareto_k, dtype=float).ravel()
        lw = _arviz.loo_log_weights(loo_u)
        psis_pit(engine, folds, row_unit, lw, key=key)
        elpd_e = logsumexp(lw[entry_unit] + ll.T, axis=1)
        # a cut posterior's leave-out weights are not 1 / its predictive density: refit every unit
        bad = khat > float(loo_u.good_k) if not engine.cut else np.ones(n_u, bool)
        for p in np.flatnonzero(bad):
            pos = np.flatnonzero(entry_unit == p)
            lli = folds.entries(pos)[0]
            elpd_e[pos] = logsumexp(lli, axis=0) - np.log(lli.shape[0])
        res = _arviz.grouped_elpd(loo_u, elpd_e, entry_unit, obs_dim="units", coords=units,
                                  p=float((lpd_full - elpd_e).sum()), pareto_k=loo_u.pareto_k)
        return res, "leave-one-out", int((~bad).sum()), float(np.nanmax(khat))
    dt = _arviz.with_log_likelihood(tree, {"y": ll.reshape(fit.num_chains, fit.num_draws, n_e)},
                                    obs_dim="entries", obs_coords=np.arange(n_e))
    res_e = _arviz.kfold(dt, var_name="y", obs_dim="entries", folds=fold_of_unit(n_u, k, key)[entry_unit],
                         refit=folds.entries)
    elpd_e = _arviz.pointwise_elpd(res_e)
    res = _arviz.grouped_elpd(res_e, elpd_e, entry_unit, obs_dim="units", coords=units, p=float((lpd_full - elpd_e).sum()))
    return res, kfold_scheme(k), 0, float("nan")


def check_refits(refits) -> int:
    """``refits`` as an int, or a DesignError naming the problem (a whole number of at least 1)."""
    ok = isinstance(refits, (int, np.integer, float, np.floating)) and not isinstance(refits, (bool, np.bool_))
    if not ok or not np.isfinite(refits) or int(refits) != refits or int(refits) < 1:
        raise DesignError(f"refits must be a whole number of at least 1 (independent refits per fold), got {refits!r}.")
    return int(refits)


def _final_loss(fit) -> float:
    """The training loss an SVI fit ended at: the mean of its last tenth of steps (their finite values)."""
    tail = np.asarray(fit.losses, dtype=float)[-max(1, len(fit.losses) // 10):]
    return float(np.mean(tail[np.isfinite(tail)])) if np.isfinite(tail).any() else float("nan")


def pooled(draws: list[dict]) -> dict:
    """Independent fits' draws (``{site: (draws, ...)}`` each, the same number) as one set of as many draws.

    The draws are dealt in turn from each fit (draw ``i`` of the result is fit ``i % R``'s draw
    ``i // R``), so the result is an equal mixture of the fits' posteriors. One fit: returned as is.
    """
    if len(draws) == 1:
        return draws[0]
    n = min(next(iter(d.values())).shape[0] for d in draws)
    out = {}
    for name in draws[0]:
        stacked = np.stack([np.asarray(d[name])[:n] for d in draws], axis=1)  # (draws, fits, ...)
        out[name] = stacked.reshape((-1,) + stacked.shape[2:])[:n]
    return out
