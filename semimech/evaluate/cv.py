"""Cross-validation at the level of the question: leave out whole perturbations, combinations or contexts.

"Which assumption predicts perturbations I have not measured?" is answered by leaving
perturbations out, not rows: with pseudobulk rows a row *is* a perturbation, and with cells,
leaving one cell out keeps everything the model knows about its perturbation.
:func:`cross_validate` estimates the expected log predictive density (elpd) of held-out
**units** — a perturbation label, a combination, a single, a context, or any grouping of rows —
with the unit's rows scored jointly (their log-likelihoods summed within each draw).

How:

- Leave-one-unit-out (``k`` equal to the number of units): PSIS-LOO over units from the full
  fit (``arviz_stats.loo`` on the unit-level log-likelihood), then **exact refits** for every
  unit whose Pareto k-hat is above the threshold (``arviz_stats.reloo``), so no number rests
  on an unreliable importance-sampling estimate.
- Grouped K-fold (``k`` smaller): exact refits of every fold (``arviz_stats.loo_kfold``).

A refit keeps every row and masks the held-out rows' likelihood (``fit_svi(row_mask=...)``),
so all folds share array shapes (and compiled code), and starts as a fresh fit starts (the prior
medians; as many SVI steps as the full fit). An SVI fit made with ``row_mask=np.ones(design.n_obs,
bool)`` keeps every row (the same fit: equal draws to float rounding) but is compiled in the refits'
form (the fold's data-centred priors are inputs, not constants), so the refits reuse its init, step
and draws programs: on Norman doubles that compilation took 31 s (additive) and 48 s
(linear_steady_state) of wall time at load 8, against 2 and 12 s for a refit's 2,000 steps
(``benchmarks/RESULTS_compare.md``, session 9). A warm start at the full fit's posterior medians
(``refit_options={"warm_start": True}``, a third of the steps) leaks the left-out data: measured on
Sachs (leave one condition out, ``benchmarks/RESULTS_compare.md``), signalling_network's held-out
RMSE was 1.051 from warm-started refits, 1.169 from cold ones and 1.166 from fresh fits. The warm
start resets the entries only the held-out rows inform (zero gradient of the kept rows'
log-likelihood there, non-zero of the held-out rows'; :mod:`semimech.evaluate._warm`), but that
left the Sachs numbers unchanged to the last digit: what leaks sits in latents the kept rows
also inform (shared edges, scales) or in the basin the full fit sits in (which one: not measured),
and a refit of a third of the steps from there stays near it.
Latents of held-out perturbations, unseen targets, pairs of levels or
contexts (sites over those plates) get no information from the masked rows; their draws are replaced by draws
from the prior given the fold's other latents, which is exactly their posterior in the fold
(and removes any trace of a warm start from them). The held-out predictive is then the
fold's posterior predictive for those units.

What is scored (``score=``). The question is how well a model predicts what an unmeasured
perturbation's measurement will be: its observed mean profile, the quantity the held-out
contract (``benchmarks/heldout.py``) compares predictions with. The default ``"means"`` scores
each held-out row x readout's observed value (a pseudobulk row's mean) under its marginal
leave-out predictive, ``log E[p(y_rg | draw)]``, and sums over the unit's entries (the unit
stays the left-out and resampled thing: its standard error is over units). It replaced the
joint density of the unit's cells (``"cells"``, kept for comparison) after measuring on Norman
doubles (pseudobulk rows of 100 cells x 105 genes, leaving out each of the 5 combinable doubles;
``benchmarks/compare_diagnose.py``, ``benchmarks/RESULTS_compare.md``): the cells' scatter around
their mean (the ``y_within`` term) was 98-101% of every model's score and depends only on the
noise scale, so the noise posterior, not the prediction, moved the ranking; and the joint
density over 105 genes of a mean known to within ``sigma / sqrt(100)`` rested on one or two
posterior draws (effective number of draws behind the estimate 1.0-1.9), a number that cannot
be trusted. A marginal entry's density is a one-dimensional average over draws, well
estimated. What it does not see: correlation between readouts in the predictive.

The log score measures the whole predictive distribution, not only the predicted mean: with
many readouts that barely change, sharp honest intervals on them weigh as much as the error on
the few that change. On Norman doubles every model's median error is ~0.01 and the held-out L2
is carried by a handful of genes, so the elpd of the means and the L2 can rank models
differently (the additive model: best L2, widest intervals, lowest elpd). For the point error,
the comparison also reports ``l2`` per unit (the leave-out predictive mean against the observed
rows) and :func:`semimech.evaluate.compare` can rank on it (``rank_by="l2"``).

The CRPS of each held-out entry under the same leave-out predictive (``crps`` per unit, summed
over readouts) is what :func:`semimech.evaluate.compare` ranks on by default. Measured on Norman
doubles with cold refits (``benchmarks/RESULTS_compare.md``, session 8): on the training design
one entry (AVP in the left-out double SGK1+TBX3, induced to 3.7 where every model predicts ~0.07
with sd ~0.03: z > 100) made up 81-87% of every model's log-score misfit, so its unit set every
standard error and all five models tied; the CRPS of that unit was 5.3-5.9 of 34-43 in all.

Calibration comes with it: the PIT of every held-out row x gene under its leave-out predictive
(PSIS weights for units scored by PSIS, the refit's draws otherwise) and the interval coverage
it implies (:func:`semimech.evaluate.probabilistic.pit_calibration`).

Cut posteriors (``ModelSpec.cut_sites``, e.g. ``signalling_network``'s ``misfit_cut`` with a given
measurement noise): refits take the fit's own path (``fit.method``, SVI as ``sm.fit`` chooses);
held-out rows are scored as new observations (the model sees the data flag
:data:`~semimech.evaluate._pointwise.PREDICTIVE_FLAG` and observes with its total predictive sd,
as ``sm.predict`` does, not the measurement part it is fitted with), and leave-one-out refits
every unit (PSIS weights from that density are not the cut posterior's leave-out weights).

SVI fits: the draws are from the variational approximation; they are treated as posterior
draws (``reff = 1``), and large k-hat values also flag a poor approximation.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from semimech._blas import limited_blas
from semimech._rng import as_key
from semimech.errors import DesignError, InferenceError
from semimech.evaluate._cv_scores import (
    _final_loss,
    check_refits,
    entry_values,
    fold_of_unit,
    kfold_scheme,
    pooled,
    psis_pit,
    score_means,
)
from semimech.evaluate._pointwise import RowEngine, flat_latent
from semimech.evaluate._warm import event_dims, gradient_fn, reset_mask, warm_values
from semimech.evaluate.probabilistic import CalibrationReport, pit_calibration
from semimech.evaluate.probabilistic import crps as draws_crps
from semimech.infer import _args, _arviz
from semimech.infer.fit import fold_summaries, is_fit  # noqa: F401 - is_fit public here too
from semimech.infer.idata import posterior_tree

__all__ = ["UNITS", "CrossValidation", "cross_validate", "unit_labels"]

#: Named units of cross-validation (or pass one label per row).
UNITS = ("perturbation", "combination", "combinable", "single", "context")
#: What is scored for a held-out unit (see the module docstring).
SCORES = ("means", "cells")
#: A model that turns traced model data into Python / numpy constants raises one of these.
_CONSTANT_ERRORS = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
                    jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)
#: Plates whose entries lose all their data when their rows are held out.
MASKABLE = ("perturbations", "targets", "batches", "contexts", "target_pairs", "context_targets", "context_pairs")


@dataclasses.dataclass(frozen=True)
class CrossValidation:
    """Cross-validated elpd of one fit over held-out units.

    Attributes
    ----------
    model
        The model's name.
    unit
        What a held-out unit is (``"combination"``, ``"perturbation"``, ..., ``"custom"``).
    scheme
        ``"leave-one-out"``, ``"K-fold"`` with K, or ``"all-out"`` (``k=1``: every unit out at once).
    units
        The unit labels, in the order of the pointwise values.
    elpd
        arviz-stats ``ELPDData`` (``elpd``, ``se``, ``p``, pointwise ``elpd_i`` over ``units``).
    pit
        PIT of each held-out row x gene under its leave-out predictive, ``(rows, genes)``.
    calibration
        Interval coverage implied by ``pit`` (:func:`pit_calibration`).
    n_psis, n_refits
        Units scored by PSIS from the full fit, and refits made.
    score
        What each unit was scored on (``"means"`` or ``"cells"``, see :func:`cross_validate`).
    l2
        Per unit, the Euclidean distance over genes between its rows' leave-out predictive mean
        and their observed values (averaged over the unit's rows; NaN past ``max_pit_rows``):
        the held-out contract's error, cross-validated.
    khat_max
        Largest Pareto k-hat of the PSIS stage over units (NaN for K-fold, which uses none).
    resets
        Per refit, the latent entries started cold because only its held-out rows inform them
        (site -> count; empty for cold refits, the default).
    crps
        Per unit, the continuous ranked probability score of its rows' observed values under their
        leave-out predictive (from the replicate draws), summed over readouts and averaged over the
        unit's rows (lower is better; NaN past ``max_pit_rows``). In the readouts' units: about the
        absolute error where the error is large against the predictive spread, about a fraction of
        the spread where it is small.
    unseen_targets
        Per unit, the targets of its rows that no row outside the unit has (left out alone, the
        unit's prediction for them rests on the prior / effect population, not on their data).
    pit_rows, pred_mean, pred_sd
        The held-out rows behind ``pit`` (design row indices, same order) and their leave-out
        predictive mean and sd, ``(rows, genes)``.
    refit_losses
        Per fold, the final training loss of each of its ``refits`` independent refits (SVI: the mean
        of the last tenth of the steps; empty for NUTS and for PSIS-only scores). Refits of one fold that
        end far apart landed in different optima: the pooled predictive holds both.
    refit_l2
        Per fold, the L2 of each refit's own predictive mean for the fold's held-out rows (averaged over
        the rows, the first ``max_pit_rows``), from its share of the pooled draws. Refits of one fold
        whose errors differ a lot predict the left-out units differently: the model's answer depends
        on which optimum a fit reaches.
    """

    model: str
    unit: str
    scheme: str
    units: tuple[str, ...]
    elpd: Any
    pit: np.ndarray
    calibration: CalibrationReport
    n_psis: int
    n_refits: int
    khat_max: float
    score: str = "means"
    l2: np.ndarray | None = None
    resets: tuple = ()
    crps: np.ndarray | None = None
    unseen_targets: tuple = ()
    pit_rows: np.ndarray | None = None
    pred_mean: np.ndarray | None = None
    pred_sd: np.ndarray | None = None
    refit_losses: tuple = ()
    refit_l2: tuple = ()

    @property
    def pointwise(self) -> np.ndarray:
        """Pointwise elpd per unit (same order as ``units``)."""
        return _arviz.pointwise_elpd(self.elpd)

    def __repr__(self) -> str:
        # a notebook's last line shows this: the numbers a reader wants, not every per-row array
        cov = self.calibration.table.set_index("nominal")["empirical"]
        cov90 = f", 90% intervals cover {cov[0.9]:.3f} ({self.calibration.verdict})" if 0.9 in cov.index else ""
        l2 = "" if self.l2 is None or not np.isfinite(self.l2).any() else f", mean L2 {np.nanmean(self.l2):.4g}"
        return (f"CrossValidation(model={self.model!r}, unit={self.unit!r}, {self.scheme}, {len(self.units)} units: "
                f"elpd {float(self.elpd.elpd):.2f} (se {float(self.elpd.se):.2f}){cov90}{l2})")

    def describe(self) -> str:
        """What was left out and how it was scored, in words."""
        how = (f"PSIS for {self.n_psis}, exact refits for {self.n_refits}" if self.scheme == "leave-one-out"
               else f"{self.n_refits} refits")
        per_fold = {len(x) for x in self.refit_l2}   # one entry per refit, SVI or NUTS
        if per_fold and max(per_fold) > 1:
            how += f", {max(per_fold)} independent refits per fold, their draws pooled"
        what = ("log density of each held-out row x readout's observed mean" if self.score == "means"
                else "joint log density of each held-out unit's cells")
        n_new = sum(bool(u) for u in self.unseen_targets)
        new = (f"; {n_new} of {len(self.units)} units hold a target seen in no other row, so their scores are about "
               "predicting a target whose own effect no kept row measures, not only about the unit's other parts"
               if n_new else "")
        return f"{self.unit} left out ({self.scheme} over {len(self.units)} units; {how}; score: {what}{new})"


def unit_labels(design, unit: str | Sequence) -> np.ndarray:
    """The held-out unit of each row (``None``: the row is always in training).

    ``unit``: ``"perturbation"`` (each non-control label), ``"combination"`` (labels with two or
    more targets; singles stay in training), ``"combinable"`` (combinations each of whose targets
    is also observed as a single perturbation, so it stays seen when the combination is left
    out: the question of :func:`semimech.evaluate.split_combinations`), ``"single"`` (labels with one target),
    ``"context"`` (the treated rows of each context of a factor design, built with ``context_key=``, whose
    untreated rows stay in training; without contexts, the perturbed rows of each batch), or
    one label per row (``None`` or ``""`` for rows never left out). Control rows are never left
    out: they are the reference of every change.
    """
    ctrl = np.asarray(design.perturbation_index) == 0
    labels = np.asarray(design.perturbations, dtype=object)[design.perturbation_index]
    n_targets = np.asarray(design.target_matrix).sum(1)[design.perturbation_index]
    if isinstance(unit, str):
        if unit == "perturbation":
            out = np.where(ctrl, None, labels)
        elif unit == "combination":
            out = np.where(n_targets >= 2, labels, None)
        elif unit == "combinable":
            out = np.where(n_targets >= 2, labels, None)
            ok = _combinable(design)
            out = np.where([u in ok for u in out], out, None)
        elif unit == "single":
            out = np.where(n_targets == 1, labels, None)
        elif unit == "context":
            if design.contexts is not None:  # a factor design's contexts (cell lines): each context's untreated stay
                ctx = np.asarray(design.contexts, dtype=object)[np.asarray(design.perturbation_context)]
                out = np.where(n_targets == 0, None, ctx[design.perturbation_index])
            elif design.batch_index is not None:
                out = np.where(ctrl, None, np.asarray(design.batches, dtype=object)[design.batch_index])
            else:
                raise DesignError("unit='context' needs contexts: build the Design with context_key= (a factor "
                                  "design's cell lines) or batch_key= (the context column).")
        else:
            raise DesignError(f"unknown unit {unit!r}; choose one of {UNITS} or pass one label per row.")
    else:
        out = np.asarray([None if u is None or str(u) == "" else str(u) for u in unit], dtype=object)
        if out.shape != (design.n_obs,):
            raise DesignError(f"unit labels must have one entry per row ({design.n_obs}), got {out.shape}.")
        out = np.where(ctrl, None, out)
    n_units = len({u for u in out if u is not None})
    if n_units < 2:
        name = unit if isinstance(unit, str) else "custom"
        raise DesignError(f"cross-validation over {name!r} units needs at least two units in the training design, "
                          f"found {n_units}. Choose another unit (e.g. 'perturbation').")
    return out


def _combinable(design) -> set:
    observed = design.observed_perturbations()
    singles = {design.targets_of(p)[0] for p in observed if len(design.targets_of(p)) == 1}
    return {p for p in observed if len(design.targets_of(p)) >= 2 and set(design.targets_of(p)) <= singles}


def _unseen(design, data: dict, train_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per maskable plate: True for entries with no training row in the fold."""
    n_p = len(design.perturbations)
    seen_p = np.zeros(n_p, bool)
    seen_p[np.asarray(design.perturbation_index)[train_rows]] = True
    out = {"perturbations": ~seen_p, "targets": np.asarray(design.target_matrix)[seen_p].sum(0) == 0}
    if design.batch_index is not None:
        out["batches"] = np.bincount(np.asarray(design.batch_index)[train_rows], minlength=len(design.batches)) == 0
    if data.get("perturbation_context") is not None:
        ctx = np.asarray(data["perturbation_context"])
        seen_c = np.zeros(int(data.get("n_contexts", ctx.max() + 1)), bool)
        seen_c[ctx[seen_p]] = True
        out["contexts"] = ~seen_c
    # treatment structure (Design.model_data): pairs of levels and (context, level / pair) cells
    for plate, rows, cols, n in (("target_pairs", "pair_rows", "pair_cols", "pair_index"),
                                 ("context_targets", "level_rows", "level_context_col", "context_targets"),
                                 ("context_pairs", "pair_rows", "pair_context_col", "context_pairs")):
        if data.get(n) is not None and data.get(rows) is not None and data.get(cols) is not None:
            seen = np.zeros(len(data[n]), bool)
            seen[np.asarray(data[cols])[seen_p[np.asarray(data[rows])]]] = True
            out[plate] = ~seen
    return out


def _entry_mask(dims: tuple[str, ...], shape: tuple[int, ...], unseen: dict) -> np.ndarray:
    m = np.zeros(shape, bool)
    for axis, dim in enumerate(dims):
        if dim in unseen and len(unseen[dim]) == shape[axis]:
            view = [1] * len(shape)
            view[axis] = shape[axis]
            m = m | unseen[dim].reshape(view)
    return m


class _Folds:
    """Refits of one fit with held-out units masked; collects the PIT of held-out rows."""

    def __init__(self, fit, engine: RowEngine, row_unit: np.ndarray, *, num_steps, refit_options, key, max_pit_rows,
                 refits: int = 1):
        self.fit, self.engine, self.row_unit, self.key, self.refits = fit, engine, row_unit, key, int(refits)
        self.refit_losses: list[tuple[float, ...]] = []
        self.refit_l2: list[tuple[float, ...]] = []
        self.num_steps, self.options, self.max_pit_rows = num_steps, dict(refit_options or {}), max_pit_rows
        self.warm_start = bool(self.options.pop("warm_start", False))
        self.full = flat_latent(fit, engine.latent)
        self.warm = {k: np.median(v, axis=0) for k, v in self.full.items()}
        self.resets: list[dict[str, int]] = []   # per refit: entries started cold (informed by held-out rows only)
        if self.warm_start:
            self._event = event_dims(engine.model, engine.data, self.warm)
            self._grad = gradient_fn(engine._ll)
        self.resample = [n for n in engine.latent if set(fit.dims.get(n, ())) & set(MASKABLE)]
        kept = [n for n in engine.latent if n not in self.resample]
        self.kept = kept
        model, data, resample = engine.model, engine.data, self.resample

        @jax.jit
        def prior_given(chunk, summaries):  # one key per draw; a chunk draws with its first draw's key
            chunk = dict(chunk)
            key = chunk.pop("__key")[0]
            pred = Predictive(model, posterior_samples=chunk, return_sites=resample)
            return pred(key, {**data, **summaries})

        self._prior_given = prior_given
        self.pit: dict[int, np.ndarray] = {}
        self.mean: dict[int, np.ndarray] = {}    # leave-out predictive mean of each held-out row
        self.crps: dict[int, np.ndarray] = {}    # CRPS of each held-out row x gene under its leave-out predictive
        self.sd: dict[int, np.ndarray] = {}      # leave-out predictive sd of each held-out row x gene
        self.y = np.asarray(engine.y)
        self.n_refits = 0

    def pit_rows(self, rows: np.ndarray, rep: np.ndarray, log_w: np.ndarray | None) -> None:
        """Store the PIT of ``rows`` from replicate draws ``rep`` (draws, rows, genes), weighted."""
        y = self.y[rows]
        below = (rep < y[None]) + 0.5 * (rep == y[None])
        if log_w is None:
            w = np.full((len(rows), rep.shape[0]), 1.0 / rep.shape[0])
            vals, mean = below.mean(0), rep.mean(0)
        else:
            w = np.exp(log_w)  # (rows, draws), normalised
            vals, mean = np.einsum("rs,srg->rg", w, below), np.einsum("rs,srg->rg", w, rep)
        for i, r in enumerate(rows):
            self.pit[int(r)] = vals[i]
            self.mean[int(r)] = mean[i]
            self.crps[int(r)] = draws_crps(y[i], rep[:, i], weights=w[i])[0]
            self.sd[int(r)] = np.sqrt(np.maximum(np.einsum("s,sg->g", w[i], (rep[:, i] - mean[i]) ** 2), 0.0))

    def start(self, train_rows: np.ndarray, summaries: dict | None = None) -> dict:
        """The warm start of a fold: the full fit's medians, with the entries only the held-out rows
        inform (zero training, non-zero held-out log-likelihood gradient there) set to NaN, i.e.
        started as a fresh fit starts them (:mod:`semimech.evaluate._warm`)."""
        s = self.engine._summaries(summaries)
        values = {k: jnp.asarray(v) for k, v in self.warm.items()}
        w = np.asarray(train_rows, np.float32)
        mask = reset_mask(self._grad(values, jnp.asarray(w), s), self._grad(values, jnp.asarray(1.0 - w), s),
                          self._event)
        self.resets.append({k: int(m.sum()) for k, m in mask.items() if m.any()})
        return warm_values(self.warm, mask)

    def _refit(self, train_rows: np.ndarray, key, summaries: dict | None = None):
        from semimech.infer.fit import UnreplicatedWarning, fit_svi
        from semimech.infer.nuts import fit_nuts

        fit = self.fit
        init = self.start(train_rows, summaries) if self.warm_start else None   # None: start as a fresh fit does
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreplicatedWarning)  # said once, by the full fit
            if fit.method == "nuts":
                kw = {"num_warmup": 300, "num_samples": fit.num_draws, "num_chains": fit.num_chains,
                      **self.options}
                return fit_nuts(fit.spec, fit.design, rng_key=key, progress_bar=False, row_mask=train_rows,
                                init_values=init, **kw, **fit.options)
            kw = svi_refit_options(fit, self.num_steps, self.options)
            return fit_svi(fit.spec, fit.design, rng_key=key, progress_bar=False, row_mask=train_rows,
                           init_values=init, **kw, **fit.options)

    def _fold(self, positions: np.ndarray) -> tuple[dict, dict, np.ndarray]:
        """Refit without the units at ``positions``: ``(draws, the fold's prior constants, held-out rows)``.

        Also stores the PIT of the held-out rows under the fold's predictive.
        """
        held = np.isin(self.row_unit, positions)
        train_rows = ~held
        key = jax.random.fold_in(self.key, int(positions.min()) + 1)
        k_fit, k_prior, k_rep = jax.random.split(key, 3)
        summaries = self.engine._summaries(fold_summaries(self.fit.design, train_rows))
        keys = [k_fit] if self.refits == 1 else list(jax.random.split(k_fit, self.refits))
        refits = [self._refit(train_rows, k, summaries) for k in keys]
        self.n_refits += len(refits)
        self.refit_losses.append(tuple(_final_loss(r) for r in refits if r.losses is not None))
        samples = pooled([flat_latent(r, self.engine.latent) for r in refits])
        if self.resample:
            unseen = _unseen(self.fit.design, self.engine.data, train_rows)
            drawn = self.engine.apply(lambda part: self._prior_given(part, summaries), samples, self.kept,
                                      key=k_prior)
            for name in self.resample:
                m = _entry_mask(self.fit.dims[name], samples[name].shape[1:], unseen)
                if m.any():
                    samples[name] = np.where(m[None], drawn[name], samples[name])
        rows = np.flatnonzero(held)
        rep = self.engine.replicates(k_rep, samples, rows=rows[: self.max_pit_rows], summaries=summaries)
        self.pit_rows(rows[: self.max_pit_rows], rep, None)
        y = self.y[rows[: self.max_pit_rows]]   # refit j's draws are every R-th of the pooled ones (see pooled)
        self.refit_l2.append(tuple(float(np.mean(np.sqrt(((rep[j::len(refits)].mean(0) - y) ** 2).sum(-1))))
                                   for j in range(len(refits))))
        return samples, summaries, rows

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Refit without the units at ``positions``; their log-likelihood ``(1, draws, len(positions))``
        (``score="cells"``: each unit's rows, their cells' joint density)."""
        positions = np.atleast_1d(np.asarray(positions, dtype=int))
        samples, summaries, _ = self._fold(positions)
        ll = self.engine.log_likelihood(samples, summaries)
        out = np.stack([ll[:, self.row_unit == p].sum(1) for p in positions], axis=-1)
        return out[None]

    def entries(self, positions: np.ndarray) -> np.ndarray:
        """``score="means"``: refit without the units of the entries at ``positions`` (indices into
        :attr:`entry_row` / :attr:`entry_gene`); their log density ``(1, draws, len(positions))``."""
        positions = np.atleast_1d(np.asarray(positions, dtype=int))
        samples, summaries, _ = self._fold(np.unique(self.row_unit[self.entry_row[positions]]))
        rows = np.unique(self.entry_row[positions])
        ll = self.engine.entry_log_likelihood(samples, rows, summaries)
        return ll[:, np.searchsorted(rows, self.entry_row[positions]), self.entry_gene[positions]][None]


def svi_refit_options(fit, num_steps: int, options: dict) -> dict:
    """``fit_svi`` keywords of an SVI refit: the fit's draws and restarts (a fit made with ``restarts=k``,
    the best of ``k`` runs by the training loss, is refitted the same way), then ``options`` (the caller's)."""
    restarts = {"restarts": int(fit.restarts["k"])} if fit.restarts is not None else {}
    return {"num_steps": num_steps, "num_samples": fit.num_draws, **restarts, **options}


MIN_PSIS_DRAWS = 25


def check_psis_draws(fit, what: str, *, alternative: str = "") -> None:
    """A ``DesignError`` saying that ``what`` (a Pareto-smoothed importance sampling estimate) needs at least
    :data:`MIN_PSIS_DRAWS` draws: arviz-stats fails deep inside with fewer ("n_draws_tail must be at least 5")."""
    draws = fit.num_chains * fit.num_draws
    if draws < MIN_PSIS_DRAWS:
        raise DesignError(f"{what} needs at least {MIN_PSIS_DRAWS} posterior draws (it fits a tail to the largest "
                          f"~20% of the importance weights); this fit has {draws}. Refit with more draws "
                          f"(num_samples){alternative}.")


@limited_blas()
def cross_validate(fit, *, unit: str | Sequence = "perturbation", k: int | None = None, score: str = "means",
                   num_steps: int | None = None,
                   refit_options: dict | None = None, max_pit_rows: int = 2000, refits: int = 1,
                   rng_key=0) -> CrossValidation:
    """Cross-validated elpd of a fit over held-out units (see the module docstring).

    Parameters
    ----------
    fit
        A :class:`semimech.Fit` on the training design (all units present).
    unit
        What to leave out: see :func:`unit_labels`.
    k
        Number of folds. ``None`` (default): leave-one-unit-out up to 10 units, else 10-fold.
        Equal to the number of units: leave-one-unit-out (PSIS, with exact refits where
        k-hat is bad). Smaller: grouped K-fold, every fold refit. ``1``: every unit left out at
        once (``"all-out"``: one refit on the rows outside every unit, each unit scored on its own,
        the standard error over units), the question "predict all of them from the rest", e.g.
        every combination from the singles alone.
    score
        What a held-out unit is scored on. ``"means"`` (default): the log predictive density of
        each of its rows' observed values at each readout (for a pseudobulk row, its cells'
        *mean*: what a prediction of an unmeasured perturbation is compared with), each entry
        scored under its marginal predictive and summed over the unit. ``"cells"``: the joint
        log density of the unit's cells (for a Gaussian pseudobulk row including their scatter
        around the mean, the ``y_within`` term) — mostly a score of the noise model, see the
        module docstring.
    num_steps
        SVI steps of each refit (default: as many as the full fit's; with a warm start a third of
        them, at least 300).
    refit_options
        Other keywords for the refits' ``fit_svi`` (e.g. ``guide``, ``learning_rate``) or
        ``fit_nuts`` (``num_warmup``); give the ones the full fit used. ``warm_start=True``: start
        each refit at the full fit's posterior medians, except the entries only the held-out rows
        inform (see the module docstring): three times cheaper, but it leaked the left-out
        condition on Sachs (held-out RMSE 1.051 warm against 1.169 cold, 1.166 from fresh fits).
        An SVI fit made with ``fit_svi(..., restarts=k)`` is refitted with ``restarts=k`` (each refit
        the best of ``k`` runs by its own training loss) unless ``refit_options`` says otherwise.
    max_pit_rows
        Held-out rows per refit whose PIT is computed (all units' rows up to this many).
    refits
        Independent refits of each fold (keys split from the fold's), their draws pooled into an
        equal mixture of as many draws as the fit has (default 1: one refit). An SVI refit lands in
        one optimum; where the optimum a refit finds varies from key to key, one refit scores the
        model by the luck of its key, and the pooled predictive holds every optimum found (their
        final training losses: ``refit_losses``). Exact refits only: units scored by PSIS use the
        full fit's draws.
    rng_key
        Int seed or key for fold assignment, refits and replicate draws.

    Raises
    ------
    DesignError
        Fewer than two units, an unknown unit, ``k`` out of range.
    InferenceError
        The fit or a refit gives a non-finite log-likelihood: the model cannot be scored.
    """
    units, row_unit, k, steps = plan(fit, unit=unit, k=k, score=score, num_steps=num_steps,
                                     refit_options=refit_options)
    design, n_u = fit.design, len(units)
    refits = check_refits(refits)
    key = as_key(rng_key)
    engine = RowEngine(fit)
    folds = _Folds(fit, engine, row_unit, num_steps=steps, refit_options=refit_options,
                   key=jax.random.fold_in(key, 1), max_pit_rows=max_pit_rows, refits=refits)
    try:  # the first evaluation of the model at the fold-wise (traced) prior constants
        if score == "means":
            ll_rows = entry_values(fit, engine, folds, row_unit)
        else:
            ll_rows = engine.log_likelihood(folds.full)
    except _CONSTANT_ERRORS as err:
        raise InferenceError(
            f"{fit.spec.name!r} cannot be cross-validated with masked rows: it reads its data-centred prior "
            f"constants ({', '.join(sorted(engine.summaries))}) as fixed numbers while building the model, but each "
            "fold computes them from its own kept rows (they are traced). The model would need to take them as "
            f"arrays (jnp, not np.asarray / float). ({type(err).__name__})") from None
    if not np.all(np.isfinite(ll_rows)):
        raise InferenceError(f"the log-likelihood of {fit.spec.name!r} is not finite for some draws and rows; the fit "
                             "did not converge or a draw is degenerate. Refit with more steps.")
    reff = 1.0 if fit.method == "svi" else None
    unit_name = unit if isinstance(unit, str) else "custom"
    if score == "means":
        res, scheme, n_psis, khat_max = score_means(fit, engine, folds, row_unit, units, k, ll_rows, key=key, reff=reff)
    else:
        ll_units = np.stack([ll_rows[:, row_unit == p].sum(1) for p in range(n_u)], axis=-1)
        dt = _arviz.with_log_likelihood(posterior_tree(fit), {"y": ll_units.reshape(fit.num_chains, fit.num_draws, n_u)},
                                        obs_dim="units", obs_coords=units)
        if k == n_u:
            res, _ = _arviz.loo(dt, var_name="y", reff=reff)
            khat = np.asarray(res.pareto_k, dtype=float).ravel()
            psis_pit(engine, folds, row_unit, _arviz.loo_log_weights(res), key=key)
            thr = float(res.good_k) if not engine.cut else -np.inf   # a cut posterior: refit every unit
            bad = khat > thr
            if bad.any():
                res = _arviz.reloo(dt, res, var_name="y", obs_dim="units", refit=folds, k_threshold=thr)
            scheme, n_psis, khat_max = "leave-one-out", int((~bad).sum()), float(np.nanmax(khat))
        else:
            res = _arviz.kfold(dt, var_name="y", obs_dim="units", folds=fold_of_unit(n_u, k, key), refit=folds)
            scheme, n_psis, khat_max = kfold_scheme(k), 0, float("nan")
    elpd_i = _arviz.pointwise_elpd(res)
    if not np.all(np.isfinite(elpd_i)):
        bad_units = [u for u, e in zip(units, elpd_i) if not np.isfinite(e)]
        raise InferenceError(f"the held-out log predictive density of {fit.spec.name!r} is not finite for units "
                             f"{bad_units[:5]}: a refit failed or predicts them with zero density.")
    pit = np.stack([folds.pit[r] for r in sorted(folds.pit)]) if folds.pit else np.empty((0, design.n_genes))
    y = np.asarray(design.dense_y(), dtype=float)
    row_l2 = {r: float(np.sqrt(((m - y[r]) ** 2).sum())) for r, m in folds.mean.items()}
    l2 = np.array([np.mean([row_l2[r] for r in np.flatnonzero(row_unit == p) if r in row_l2] or [np.nan])
                   for p in range(n_u)])
    crps = np.array([np.mean([folds.crps[r].sum() for r in np.flatnonzero(row_unit == p) if r in folds.crps]
                             or [np.nan]) for p in range(n_u)])
    return CrossValidation(model=fit.spec.name, unit=unit_name, scheme=scheme, units=units, elpd=res, pit=pit,
                           calibration=pit_calibration(pit), n_psis=n_psis, n_refits=folds.n_refits,
                           khat_max=khat_max, score=score, l2=l2, resets=tuple(folds.resets), crps=crps,
                           unseen_targets=unseen_targets(design, row_unit), pit_rows=np.array(sorted(folds.pit), int),
                           pred_mean=np.stack([folds.mean[r] for r in sorted(folds.pit)]) if folds.pit else None,
                           pred_sd=np.stack([folds.sd[r] for r in sorted(folds.pit)]) if folds.pit else None,
                           refit_losses=tuple(folds.refit_losses), refit_l2=tuple(folds.refit_l2))


def unseen_targets(design, row_unit: np.ndarray) -> tuple[tuple[str, ...], ...]:
    """Per unit (``row_unit`` values ``0..n-1``), the targets of its rows that no row outside it has."""
    tm = np.asarray(design.target_matrix, bool)[np.asarray(design.perturbation_index)]   # rows x targets
    names = np.asarray(design.targets, dtype=object)
    out = []
    for p in range(int(row_unit.max()) + 1):
        inside = row_unit == p
        mine = tm[inside].any(0) & ~tm[~inside].any(0)
        out.append(tuple(str(t) for t in names[mine]))
    return tuple(out)


def plan(fit, *, unit, k, score: str = "means", num_steps=None, refit_options=None):
    """The checked arguments of :func:`cross_validate`, before any refit: ``(units, row_unit, k, steps)``.

    Raises the ``DesignError`` of a caller's mistake (not a fit, an unknown unit or score, ``k`` out of range, too
    few draws for leave-one-out, bad refit steps, a refit option neither the fit nor the model takes), so that
    :func:`semimech.evaluate.compare` refuses it before refitting any model instead of noting it for each."""
    if not is_fit(fit):
        raise DesignError(f"cross_validate needs a semimech Fit (from fit_svi, fit_nuts, sm.fit or sm.load), got "
                          f"{type(fit).__name__}.")
    if score not in SCORES:
        raise DesignError(f"unknown score {score!r}; choose 'means' (the held-out observed means, default) or 'cells'.")
    labels = unit_labels(fit.design, unit)
    units = tuple(dict.fromkeys(u for u in labels if u is not None))
    pos = {u: i for i, u in enumerate(units)}
    row_unit = np.array([pos[u] if u is not None else -1 for u in labels])
    n_u = len(units)
    if k is not None and (isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer))):
        raise DesignError(f"k must be None or an integer number of folds, got {k!r}.")  # int(2.5) was 2 folds
    k = min(n_u, 10) if k is None else int(k)
    if not 1 <= k <= n_u:
        raise DesignError(f"k must be between 1 (every unit out at once) and the number of units ({n_u}), got {k}.")
    if k == n_u:  # leave-one-out is estimated by PSIS
        check_psis_draws(fit, f"leave-one-out (k = the {n_u} units), estimated by Pareto-smoothed importance sampling,",
                         alternative=f", or pass k < {n_u} for K-fold refits")
    if refit_options is not None and not isinstance(refit_options, Mapping):
        raise DesignError(f"refit_options must be a dict of keywords for the refits, got "
                          f"{type(refit_options).__name__}.")
    _check_refit_names(fit, dict(refit_options or {}))
    steps = _steps(fit, num_steps, warm=bool((refit_options or {}).get("warm_start", False)))
    return units, row_unit, k, steps


def _check_refit_names(fit, options: dict) -> None:
    """Every refit keyword is one of the refit's own (``fit_svi``'s or ``fit_nuts``' as the fit was made, or
    ``warm_start``): the refits take the model's options from the fit (a model option here would refit another
    model, or collide with the fit's own)."""
    from semimech.infer.fit import fit_svi
    from semimech.infer.nuts import fit_nuts

    runner = fit_nuts if fit.method == "nuts" else fit_svi
    set_here = {"rng_key", "progress_bar", "row_mask", "init_values"}  # the refit sets these itself
    allowed = sorted({n for n, p in inspect.signature(runner).parameters.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY} - set_here | {"warm_start"})
    for name in options:
        if name in allowed:
            continue
        if name in set_here:
            raise DesignError(f"refit_options cannot set {name!r}: each refit sets it itself.")
        if name in getattr(fit, "options", {}) or name in inspect.signature(fit.spec.model).parameters:
            raise DesignError(f"refit_options holds the model option {name!r}: refits use the fit's own model options "
                              "(fit.options). To compare another configuration, fit it and compare the two fits.")
        close = difflib.get_close_matches(name, allowed, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise DesignError(f"unknown refit option {name!r} for a {fit.method} fit.{hint} refit_options takes "
                          f"{runner.__name__}'s keywords {allowed}; the refits take the model's options from the fit.")


def _steps(fit, num_steps: int | None, *, warm: bool = False) -> int:
    """Refit steps: as given, else the full fit's (cold start) or a third of them, at least 300 (warm)."""
    if num_steps is not None:
        return _args.count("num_steps", num_steps, what="refit SVI steps", error=DesignError)
    full = len(fit.losses) if fit.losses is not None else 900
    return max(300, full // 3) if warm else max(300, full)
