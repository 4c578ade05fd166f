r"""Which experiment next: rank candidate conditions by what they would teach a fitted model.

:func:`recommend` takes a fit and a pool of candidate conditions, and returns the best batch of
``budget`` conditions with the expected gain of each, plus the controls the batch needs:

- ``objective="predictive"``: expected reduction of the posterior variance of the population
  means of the conditions you care about (``targets``; default: every candidate), summed over
  conditions and genes (data units squared);
- ``objective="information"``: expected information gain (nats) about chosen latent quantities
  (``about``: the interaction terms of the targets, their effects, their means, or a site of the
  model such as a network's edges), with a Monte Carlo standard error;
- ``objective="discriminate"``: expected log Bayes factor between two fitted models (``other``),
  i.e. which experiment best tells the two assumptions apart.

The batch is chosen greedily: each pick maximises the gain *given the picks before it*, whose
outcomes are simulated from the same posterior draws (a near-duplicate of an earlier pick teaches
little, so it gains little). The estimators and their error are documented in
:mod:`semimech.design._gain`. The design tools' rule applies to every batch: controls in every
batch, with the number of control cells (or replicate rows) that
:func:`~semimech.design.recommend_control_allocation` suggests (Dunnett: about ``sqrt(K)`` times
a condition's cells for ``K`` conditions per batch); they are returned as rows of the batch with
the reason.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import jax
import numpy as np
import pandas as pd

from semimech._rng import as_key
from semimech.design import _gain
from semimech.design.allocation import recommend_control_allocation
from semimech.errors import DesignError, PredictionError
from semimech.infer import _args

__all__ = ["OBJECTIVES", "RecommendationWarning", "recommend"]

OBJECTIVES = ("predictive", "information", "discriminate")
_ESTIMATORS = {"predictive": ("gaussian", "reweight"), "information": ("reweight",), "discriminate": ("mixture",)}
_DERIVED = ("interactions", "effects", "means")


def recommend(fit, candidates, *, budget: int, objective: str = "predictive", rng_key, targets=None,
              about: str | Sequence[str] = "interactions", other=None, num_cells: int | None = None,
              batches: int = 1, estimator: str | None = None, num_draws: int = 256, num_outcomes: int = 64,
              greedy: bool = True) -> pd.DataFrame:
    r"""Rank candidate conditions and return the best batch of ``budget``, with its controls.

    Parameters
    ----------
    fit
        A :class:`semimech.Fit`.
    candidates
        The pool: condition labels (``["KLF1+TGFBR2", "SET"]``; combinations of seen targets may be
        new), or a DataFrame with a ``condition`` (or ``perturbation``) column. Labels already
        measured are allowed (a replicate is an experiment too).
    budget
        How many candidate conditions the batch holds (at most the pool's size).
    objective
        ``"predictive"``, ``"information"`` or ``"discriminate"`` (see the module docstring).
    rng_key
        Int seed or JAX key (thinning is deterministic; the key drives the predictive draws and
        the simulated outcomes).
    targets
        The conditions whose predictions you care about (labels); default: the candidates.
        ``"predictive"`` sums their variance; ``"information"`` with ``about="interactions"``,
        ``"effects"`` or ``"means"`` learns about theirs.
    about
        ``"information"`` only: ``"interactions"`` (default: each target combination's deviation
        from the sum of its parts on the model's latent scale: identity for ``normal``, log for
        ``negbin``), ``"effects"`` (each target's effect alone, latent scale), ``"means"``, or
        the name(s) of posterior sites of the model (``"edges"``: every site over a network's
        ``edges``). A quantity the model does not have is an error.
    other
        ``"discriminate"`` only: the second :class:`semimech.Fit`, on the same genes.
    num_cells
        Cells (or replicate rows) per candidate condition; default: the median of the training
        conditions'. The allocation rule may adjust it (returned in ``num_cells``).
    batches
        Batches the experiment runs in; candidates are dealt round-robin, controls go in each.
    estimator
        ``"predictive"``: ``"gaussian"`` (default; ensemble Kalman update, fast) or
        ``"reweight"`` (importance reweighting; sees hyperparameters being learned, has Monte Carlo
        error). ``"information"``: ``"reweight"``. ``"discriminate"``: ``"mixture"``.
    num_draws, num_outcomes
        Posterior draws used (thinned evenly; ``S``) and simulated outcomes per candidate (``J``,
        Monte Carlo estimators only): cost grows as ``S * J``, bias falls with ``S``, the
        standard error with ``J``.
    greedy
        ``False``: take the ``budget`` best candidates by their gain alone (no conditioning on
        earlier picks; near-duplicates are then all taken). For comparison only.

    Returns
    -------
    pandas.DataFrame
        One row per picked candidate (in pick order) then one control row per batch. Columns:
        ``condition``, ``role`` (``"candidate"``/``"control"``), ``pick`` (1..budget; 0 for
        controls), ``expected_gain`` (given the earlier picks), ``gain_se`` (Monte Carlo standard
        error; NaN for the Gaussian update), ``gain_alone`` (measured on its own),
        ``num_cells``, ``batch``, ``population_only`` (an unseen target answered from the
        model's population of effects), ``reason``. ``frame.attrs`` holds ``objective``,
        ``unit``, ``estimator``, ``ranking`` (every candidate's gain alone, best first: a dict of
        lists, ``pd.DataFrame(frame.attrs["ranking"])`` makes it a table),
        ``total_before`` (predictive: the targets' summed variance before the experiment),
        ``min_ess`` (reweighting: the smallest mean effective sample size) and ``allocation``
        (the control allocation's explanation).

    Raises
    ------
    DesignError
        Unknown objective or estimator, a budget outside 1..pool size, duplicate candidates, the
        control among the candidates, candidates naming targets the model cannot answer.
    PredictionError
        An objective the model cannot serve (``about`` names a quantity it does not have; no
        combination to learn interactions about; ``other`` missing or on other genes).

    Notes
    -----
    The gains assume the batch's controls remove its batch offsets (hence the controls); they
    are computed for observed means of ``num_cells`` new cells under the fitted measurement
    model. Cost: one prediction over candidates and targets, then ``budget`` greedy rounds;
    the Gaussian update costs ``O(G S C)`` per round after an ``O(G S^2 (C + Q))`` start.
    """
    key = as_key(rng_key)
    if objective not in OBJECTIVES:
        raise DesignError(f"objective {objective!r} is not one of {OBJECTIVES}.")
    estimator = estimator or _ESTIMATORS[objective][0]
    if estimator not in _ESTIMATORS[objective]:
        raise DesignError(f"estimator {estimator!r} does not serve objective {objective!r}; "
                          f"choose one of {_ESTIMATORS[objective]}.")
    labels = _labels(candidates, what="candidates")
    budget = _budget(budget, len(labels))
    design = fit.design
    population = _check_targets(fit, labels, what="candidates")
    _same_condition(design, labels)
    tlabels = labels if targets is None else _labels(targets, what="targets")
    if targets is not None:
        _check_targets(fit, tlabels, what="targets")
    if objective == "discriminate":
        _check_other(fit, other)
    alloc, n_p = _allocation(fit, budget=budget, batches=batches, num_cells=num_cells)

    phi_spec = _about(fit, about, tlabels) if objective == "information" else None
    parts = phi_spec.parts if phi_spec is not None and phi_spec.kind in _DERIVED else []
    union = list(dict.fromkeys(labels + tlabels + parts + [design.control]))
    k_pred, k_other = jax.random.split(key)
    thin = _thin(fit, num_draws)
    _args.count("num_outcomes", num_outcomes, what="simulated outcomes per candidate", error=DesignError)
    draws = _predict(thin, union, n_p, k_pred)
    idx = {lab: i for i, lab in enumerate(union)}
    # the candidates come first in union (their labels are unique), so their columns are a slice:
    # views of the draws, not copies (three S x C x G arrays, seconds for 1,000 candidates); read only
    mean_c, var_c, out_c = (a[:, :len(labels)] for a in draws)

    if objective == "predictive":
        phi = draws[0][:, [idx[lab] for lab in tlabels]]
        if estimator == "gaussian":
            rank = _gain.gaussian_predictive(mean_c, var_c, phi, budget=budget, greedy=greedy)
        else:
            rank = _gain.reweight(mean_c, var_c, out_c, phi, budget=budget, kind="variance",
                                  num_outcomes=num_outcomes, greedy=greedy)
        unit = "summed variance of the targets' population means (data units^2)"
    elif objective == "information":
        phi, joint = _quantities(thin, phi_spec, draws[0], idx)
        rank = _gain.reweight(mean_c, var_c, out_c, phi, budget=budget, kind="information",
                              num_outcomes=num_outcomes, joint=joint, greedy=greedy)
        unit = f"nats (about {phi_spec.description})"
    else:
        b = _predict(_thin(other, num_draws), labels, n_p, k_other)
        rank = _gain.discriminate((mean_c, var_c, out_c), b, budget=budget, num_outcomes=num_outcomes,
                                  greedy=greedy)
        unit = f"nats (expected log Bayes factor, {fit.spec.name!r} vs {other.spec.name!r})"
    if not math.isnan(rank.min_ess) and rank.min_ess < 10:
        warnings.warn(f"the importance weights degenerate (smallest mean effective sample size {rank.min_ess:.1f} "
                      f"of {thin.num_chains * thin.num_draws} draws): the gains are biased upward. Raise num_draws, "
                      "or use fewer quantities/genes.", RecommendationWarning, stacklevel=2)
    return _frame(rank, labels, population, alloc, n_p, batches, objective, unit, estimator, design.control)


class RecommendationWarning(UserWarning):
    """The gains of a recommendation are less reliable than usual (the message says why)."""


# ------------------------------------------------------------------------------ input
def _labels(obj, *, what: str) -> list[str]:
    if isinstance(obj, pd.DataFrame):
        cols = [c for c in ("condition", "perturbation") if c in obj.columns]
        if not cols:
            raise DesignError(f"{what} table needs a 'condition' (or 'perturbation') column of labels; "
                              f"columns: {list(obj.columns)}.")
        obj = obj[cols[0]]
    if isinstance(obj, str):
        obj = [obj]
    labels = [str(x) for x in obj]
    if not labels:
        raise DesignError(f"{what} is empty: give at least one condition label.")
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise DesignError(f"{what} list {dup} more than once; list each condition once (ask for more cells "
                          "with num_cells=).")
    return labels


def _budget(budget, pool: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise DesignError(f"budget must be a whole number >= 1, got {budget!r}.")
    if budget > pool:
        raise DesignError(f"budget {int(budget)} is larger than the pool of {pool} candidate(s); lower the budget or "
                          "add candidates.")
    return int(budget)


def _check_targets(fit, labels, *, what: str) -> list[bool]:
    """Which labels need a population answer; an error naming targets the model cannot answer."""
    design = fit.design
    untreated = [lab for lab in labels if not design.targets_of(lab)]
    if untreated and what == "candidates":
        raise DesignError(f"the control {untreated[0]!r} is among the candidates: every batch gets controls by "
                          "the allocation rule (returned as control rows); remove it from the candidates.")
    seen = {t for p in design.observed_perturbations() for t in design.targets_of(p)}
    known = set(design.targets) | set(design.genes)
    unknown, unseen, population = {}, {}, []
    for lab in labels:
        ts = design.targets_of(lab)
        for t in ts:
            if t not in known:
                unknown.setdefault(t, lab)
            elif t not in seen:
                unseen.setdefault(t, lab)
        population.append(any(t not in seen for t in ts))
    if unknown:
        raise DesignError(f"{what} name targets unknown to the fitted design: "
                          + ", ".join(f"{t!r} (in {lab!r})" for t, lab in unknown.items())
                          + f". Known targets: {list(design.targets)[:20]}{' ...' if len(design.targets) > 20 else ''}.")
    if unseen and not fit.spec.predicts_unseen_targets:
        raise DesignError(f"{what} name targets never perturbed in training: "
                          + ", ".join(f"{t!r} (in {lab!r})" for t, lab in unseen.items())
                          + f"; the {fit.spec.name!r} model cannot predict them. Drop those conditions, or use a "
                          "model that answers unseen targets (from a network or a population of effects).")
    return population


def _same_condition(design, labels) -> None:
    """Two labels naming one condition (``"A+B"`` and ``"B+A"``) are one candidate."""
    first = {}
    for lab in labels:
        key = (frozenset(design.targets_of(lab)), _context(design, lab))
        if key in first:
            raise DesignError(f"candidates {first[key]!r} and {lab!r} are the same condition; list it once (ask for "
                              "more cells with num_cells=).")
        first[key] = lab


def _check_other(fit, other) -> None:
    if other is None or not hasattr(other, "spec") or not hasattr(other, "design"):
        raise PredictionError("objective='discriminate' needs other=<a second semimech Fit> to tell apart from fit.")
    if tuple(other.design.genes) != tuple(fit.design.genes):
        raise PredictionError("the two fits model different genes; fit both on the same genes to discriminate them.")


def _allocation(fit, *, budget: int, batches: int, num_cells):
    """The design tools' rule: controls in every batch, Dunnett's share, for this batch."""
    design = fit.design
    if num_cells is None:
        code = np.asarray(design.perturbation_index)
        per = [float(np.sum(np.asarray(design.n_cells)[code == i])) for i in np.unique(code) if i != 0]
        num_cells = max(1, int(round(np.median(per)))) if per else 1
    if isinstance(num_cells, bool) or int(num_cells) != num_cells or num_cells < 1:
        raise DesignError(f"num_cells must be a whole number >= 1, got {num_cells!r}.")
    if isinstance(batches, bool) or int(batches) != batches or batches < 1:
        raise DesignError(f"batches must be a whole number >= 1, got {batches!r}.")
    batches = int(batches)
    k_b = math.ceil(budget / batches)
    n_p = int(num_cells)
    cells = k_b * n_p + max(1, int(round(math.sqrt(k_b) * n_p)))
    sigma, tau = _noise_scales(fit)
    alloc = recommend_control_allocation(max(budget, k_b), n_batches=batches, sigma=sigma, tau=tau,
                                         cells_per_batch=cells, perturbations_per_batch=k_b)
    return alloc, alloc.cells_per_perturbation


def _noise_scales(fit) -> tuple[float, float]:
    site = fit.spec.noise_site(fit.likelihood)
    if fit.likelihood == "normal" and site in fit.samples:
        sigma = float(np.median(np.mean(fit.flat(site), axis=0)))
    else:
        sigma = 1.0
    tau = float(np.mean(fit.flat("batch_sd"))) if "batch_sd" in fit.samples else 0.0
    return (sigma if np.isfinite(sigma) and sigma > 0 else 1.0), (tau if np.isfinite(tau) else 0.0)


# ------------------------------------------------------------------------------ draws
def _thin(fit, num_draws: int):
    """The fit with at most ``num_draws`` evenly spaced draws (chains merged)."""
    if isinstance(num_draws, bool) or int(num_draws) != num_draws or num_draws < 4:
        raise DesignError(f"num_draws must be a whole number >= 4, got {num_draws!r}.")
    total = fit.num_chains * fit.num_draws
    keep = np.unique(np.linspace(0, total - 1, min(int(num_draws), total)).round().astype(int))
    samples = {k: fit.flat(k)[keep][None] for k in fit.samples}
    return dataclasses.replace(fit, samples=samples, sample_stats=None, losses=None, idata=None)


def _predict(fit, labels, n_p: int, key):
    """Population means, per-draw observation variances and simulated outcomes, each (S, L, G)."""
    from semimech.infer.predict import predict
    from semimech.measurement.likelihoods import total_sd

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*population.*")  # marked in the result instead
        pred = predict(fit, list(labels), rng_key=key, num_cells=n_p)
    mean = np.asarray(pred.draws["mean"], dtype=np.float64)
    noise = np.asarray(pred.noise, dtype=np.float64)  # what the observations were drawn with (per context too)
    design_noise = fit.design.noise
    if design_noise is not None and design_noise.grouped:  # a candidate's batch is not named: predict drew a
        # group per draw; the expected gain takes the groups' mixture variance instead (no extra Monte Carlo noise)
        sd = np.asarray(fit.flat(fit.spec.noise_site(fit.likelihood)), dtype=np.float64)  # (draws, groups, genes)
        w = design_noise.row_group_weights(fit.design)
        noise = np.asarray(total_sd(np.sqrt(np.einsum("g,sgj->sj", w, sd**2))[:, None, :], fit.design.model_data(),
                                    mean), dtype=np.float64)
    if fit.likelihood == "normal":
        var = np.broadcast_to(noise**2, mean.shape) / n_p
    else:
        var = (mean + mean**2 / noise) / n_p
    var = np.maximum(var, 1e-12 * (1.0 + np.mean(mean**2)))
    return mean, np.ascontiguousarray(var), np.asarray(pred.draws["observed_mean"], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class _About:
    kind: str  # "interactions", "effects", "means" or "sites"
    parts: list  # labels to predict besides candidates and targets
    description: str
    targets: list
    sites: list = dataclasses.field(default_factory=list)


def _about(fit, about, tlabels) -> _About:
    """What ``information`` learns about."""
    design = fit.design
    if isinstance(about, str) and about in _DERIVED:
        if about == "means":
            return _About("means", [], f"the means of {len(tlabels)} target condition(s)", tlabels)
        if about == "effects":
            singles = list(dict.fromkeys(_single(design, t, lab) for lab in tlabels for t in design.targets_of(lab)))
            if not singles:
                raise PredictionError("about='effects' needs targets that perturb something (only the control given).")
            controls = [_untreated(design, _context(design, lab)) for lab in singles]
            return _About("effects", singles + controls, f"the effects of {len(singles)} target(s)", singles)
        combos = [lab for lab in tlabels if len(design.targets_of(lab)) >= 2]
        if not combos:
            raise PredictionError("about='interactions' needs combinations (two or more targets) among the targets; "
                                  "none given. Pass targets=[...] with combinations, or about='effects'/'means'.")
        parts = [_single(design, t, lab) for lab in combos for t in design.targets_of(lab)]
        parts += [_untreated(design, _context(design, lab)) for lab in combos]
        return _About("interactions", list(dict.fromkeys(parts)), f"the interactions of {len(combos)} combination(s)",
                      combos)
    names = [about] if isinstance(about, str) else list(about)
    sites = []
    for name in names:
        if name in fit.samples:
            sites.append(name)
            continue
        over = [s for s, dims in fit.dims.items() if name in dims and s in fit.samples]
        if not over:
            have = sorted(set(d for dims in fit.dims.values() for d in dims))
            raise PredictionError(
                f"the {fit.spec.name!r} model has no {name!r} to learn about (no site of that name, no site over a "
                f"{name!r} dimension). about= takes {list(_DERIVED)}, a site ({sorted(fit.samples)[:12]} ...) or a "
                f"dimension ({have}).")
        sites += over
    sites = list(dict.fromkeys(sites))
    return _About("sites", [], "the sites " + ", ".join(sites), tlabels, sites)


def _quantities(fit, about: _About, mean, idx):
    """The quantities' draws, (S, K, G) per gene or (S, K, 1) with no gene axis; and ``joint``."""
    design = fit.design
    if about.kind == "means":
        return mean[:, [idx[lab] for lab in about.targets]], False
    if about.kind in ("effects", "interactions"):
        lat = np.log(np.maximum(mean, 1e-30)) if fit.likelihood == "negbin" else mean
        out = []
        for lab in about.targets:
            ctrl = lat[:, idx[_untreated(design, _context(design, lab))]]
            if about.kind == "effects":
                out.append(lat[:, idx[lab]] - ctrl)
                continue
            ts = design.targets_of(lab)
            out.append(lat[:, idx[lab]] - sum(lat[:, idx[_single(design, t, lab)]] for t in ts) + (len(ts) - 1) * ctrl)
        return np.stack(out, axis=1), False
    per_gene = all(fit.dims[s] and fit.dims[s][-1] == "genes" for s in about.sites)
    arrays = []
    for s in about.sites:
        a = np.asarray(fit.flat(s), dtype=np.float64)
        arrays.append(a.reshape(a.shape[0], -1, a.shape[-1]) if per_gene else a.reshape(a.shape[0], -1, 1))
    return np.concatenate(arrays, axis=1), not per_gene


def _context(design, lab: str):
    """The context a label names (factor designs with contexts), else None."""
    if getattr(design, "contexts", None) is None:
        return None
    from semimech.data._factors import split_context

    return split_context(lab, design.contexts)[1]


def _single(design, target: str, lab: str) -> str:
    """The label of ``target`` alone, in the context of ``lab``."""
    ctx = _context(design, lab)
    return target if ctx is None else f"{target}@{ctx}"


def _untreated(design, ctx) -> str:
    return design.control if ctx is None else f"{design.untreated_label}@{ctx}"


# ------------------------------------------------------------------------------ output
def _frame(rank, labels, population, alloc, n_p, batches, objective, unit, estimator, control) -> pd.DataFrame:
    rows = []
    for k, pick in enumerate(rank.picks):
        lab = labels[pick.index]
        why = ("largest expected gain on its own" if k == 0 else
               f"largest expected gain given picks 1-{k}" if rank.picks else "")
        rows.append(dict(condition=lab, role="candidate", pick=k + 1, expected_gain=pick.gain, gain_se=pick.se,
                         gain_alone=float(rank.alone[pick.index]), num_cells=n_p, batch=k % batches,
                         population_only=bool(population[pick.index]), reason=why))
    for b in range(batches):
        rows.append(dict(condition=control, role="control", pick=0, expected_gain=np.nan, gain_se=np.nan,
                         gain_alone=np.nan, num_cells=alloc.controls_per_batch, batch=b, population_only=False,
                         reason="controls in every batch (design tools' rule): " + alloc.explanation))
    frame = pd.DataFrame(rows)
    order = np.argsort(-np.asarray(rank.alone), kind="stable")
    ranking = {"condition": [labels[i] for i in order],
               "gain_alone": [float(x) for x in np.asarray(rank.alone)[order]],
               "gain_se": [float(x) for x in np.asarray(rank.alone_se)[order]],
               "population_only": [bool(population[i]) for i in order]}
    frame.attrs.update(objective=objective, unit=unit, estimator=estimator, ranking=ranking,
                       total_before=rank.total_before, min_ess=rank.min_ess, allocation=alloc.explanation)
    return frame
