"""Posterior prediction for seen and unseen perturbations, aligned by label."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import pandas as pd
from numpyro.infer import Predictive

from semimech._blas import limited_blas
from semimech._rng import as_key, host_rng
from semimech.checks import is_steady_state_model, solve_fractions
from semimech.data.design import Design
from semimech.errors import PopulationOnlyWarning, PredictionError, UnsolvedWarning
from semimech.infer import _args
from semimech.infer._alignment import alignment, fresh_normal
from semimech.infer._compiled import Recent, cache_key, signature
from semimech.infer._sources import condition_sources, warn_population_only
from semimech.infer.fit import DATA_SUMMARIES, is_fit
from semimech.measurement import mean_of_cells
from semimech.measurement.likelihoods import total_sd

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclasses.dataclass(frozen=True, eq=False)
class Prediction:
    """Posterior predictive draws per perturbation x gene.

    Attributes
    ----------
    perturbations, genes
        Row and column labels of every draw array.
    draws
        ``"mean"``: population mean on the data scale, ``(draws, perturbations, genes)``;
        ``"observed_mean"`` (when ``num_cells`` was given): the mean of that many new cells,
        i.e. what a pseudobulk of a new experiment would show.

        **Compare intervals with data using** ``"observed_mean"``, the default ``kind`` of
        :meth:`summary`, :meth:`interval`, :meth:`to_frame` and :meth:`to_anndata` (as of
        :func:`semimech.evaluate.score` and :mod:`semimech.plots`): it adds the sampling noise of
        the observed cells. ``kind="mean"`` is the uncertainty about the population mean only;
        its intervals are narrower and under-cover observations. Asking for the default of a prediction made without
        ``num_cells`` is an error that says so.
    control
        The control label (its row, when requested, gives the reference for deltas).
    model
        Name of the model that made the prediction.
    steady_state
        Steady-state models: one row per perturbation with ``solved``, the fraction of all posterior
        draws whose steady state the model found for it (a draw that fails is replaced by one of the
        condition's solved draws, with an :class:`~semimech.errors.UnsolvedWarning`: the answer is
        conditioned on a steady state existing, as the fit is), and, with ``steady_state_draws``,
        ``converged`` and ``stable``, the fractions of re-solved draws whose solve from the control
        state converged (and was stable), and ``draws`` (see :func:`semimech.checks.solve_fractions`);
        ``None`` for other models.
    sources
        One row per perturbation: ``source`` — where its answer comes from: ``data`` (targets
        perturbed in training), ``side information`` (an unseen target covered by an embedding),
        ``network`` (an unseen gene propagated through a learned network), ``population`` (an
        unseen target's effect drawn from the learned population alone), joined by ``+`` when its
        parts differ — ``parts`` (``target: source`` per target) and ``population_only``.
    noise
        With ``num_cells``: what ``"observed_mean"`` was drawn with, per draw, condition and gene
        (broadcastable to ``(draws, perturbations, genes)``; ``(draws, 1, genes)`` when it is the same
        for every condition): the sd of one observation (Gaussian: learned, known and
        floor parts together; per context or batch group where the model has one) or the
        negative-binomial concentration; ``None`` without ``num_cells``.
    """

    perturbations: tuple[str, ...]
    genes: tuple[str, ...]
    draws: dict
    control: str
    model: str
    steady_state: pd.DataFrame | None = None
    sources: pd.DataFrame | None = None
    noise: np.ndarray | None = None

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in self.draws.items())
        return (f"Prediction(model={self.model!r}, {len(self.perturbations)} conditions x {len(self.genes)} genes; "
                f"draws: {kinds})")

    def summary(self, *, kind: str = "observed_mean") -> dict[str, np.ndarray]:
        """Posterior mean, sd and quantiles (``QUANTILES``) of the ``kind`` draws (see the class docstring)."""
        d = self._get(kind)
        out = {"mean": d.mean(0), "sd": d.std(0)}
        for q, val in zip(QUANTILES, np.quantile(d, QUANTILES, axis=0)):
            out[f"q{int(round(q * 100)):02d}"] = val
        return out

    def _get(self, kind: str) -> np.ndarray:
        if kind not in self.draws:
            if kind == "observed_mean":
                raise PredictionError(
                    "this prediction has no 'observed_mean' draws, the interval to compare with observed data: "
                    "predict(..., num_cells=...) draws the mean of that many new cells (for a test design, "
                    "num_cells=semimech.evaluate.cell_counts(test)). For the population mean alone (narrower; it "
                    "under-covers observations) pass kind='mean'.")
            raise PredictionError(f"no {kind!r} draws; available: {sorted(self.draws)}.")
        return self.draws[kind]

    def interval(self, prob: float = 0.9, *, kind: str = "observed_mean") -> tuple[np.ndarray, np.ndarray]:
        """Central ``prob`` predictive interval of the ``kind`` draws, each ``(perturbations, genes)``.

        The default, ``"observed_mean"``, is the interval for an observed mean of ``num_cells``
        new cells: the one to compare with data. ``kind="mean"``: the population mean's.
        """
        d = self._get(kind)
        lo, hi = np.quantile(d, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return lo, hi

    def to_frame(self, *, kind: str = "observed_mean") -> pd.DataFrame:
        """Tidy table of the ``kind`` draws: one row per perturbation x gene with mean, sd, q05..q95.

        The default, ``"observed_mean"``, gives quantiles to compare with an observed pseudobulk.
        """
        s = self.summary(kind=kind)
        P, G = len(self.perturbations), len(self.genes)
        frame = pd.DataFrame({"perturbation": np.repeat(self.perturbations, G), "gene": np.tile(self.genes, P)})
        for k, v in s.items():
            frame[k] = np.asarray(v).ravel()
        if self.sources is not None:
            frame["source"] = np.repeat(self.sources["source"].to_numpy(), G)
        return frame

    def to_datatree(self):
        """The draws as an ArviZ ``DataTree`` with a ``predictions`` group.

        ``mean`` (and ``observed_mean``) over ``(chain, draw, perturbations, genes)``, one chain
        (the fit's chains merged), the predicted labels as coordinates. Add it to the fit's own
        tree with :func:`semimech.add_predictions`.
        """
        from semimech.infer.idata import predictions_tree

        return predictions_tree(self)

    def to_anndata(self, *, kind: str = "observed_mean"):
        """AnnData (perturbations x genes): X = posterior mean, layers = sd and quantiles."""
        import anndata as ad

        s = self.summary(kind=kind)
        a = ad.AnnData(X=np.asarray(s.pop("mean"), dtype=np.float32),
                       obs=pd.DataFrame(index=pd.Index(self.perturbations, name="perturbation")),
                       var=pd.DataFrame(index=pd.Index(self.genes, name="gene")))
        for k, v in s.items():
            a.layers[k] = np.asarray(v, dtype=np.float32)
        return a


@limited_blas()
def predict(fit, design: Design | Sequence[str], *, rng_key, num_cells=None, batch: str | None = None,
            new_contexts: str = "error", steady_state_draws: int = 8) -> Prediction:
    """Predict perturbation means, with posterior predictive draws.

    Parameters
    ----------
    fit
        A :class:`semimech.Fit`.
    design
        What to predict: a list of labels (``["KLF1+MAP2K6", "control"]``; with contexts
        ``"TGFa+MEK12i@HepG2"``), a prediction design from ``Design.with_perturbations`` or
        ``Design.with_conditions``, a data design (its observed conditions are predicted), or,
        for a factor design, a table of conditions across contexts in one call: a DataFrame
        with the factor and context columns, or a list of dicts (see
        :meth:`semimech.Design.with_conditions`). Combinations of seen levels may be new; their
        parts may come in any order. Rows of the prediction: one per distinct condition, in
        the order asked; ``Prediction.perturbations`` holds their labels.
    rng_key
        Int seed or JAX key.
    num_cells
        If given (an int, or one int per label), also draw ``"observed_mean"``: the mean of
        that many new cells, to compare with an observed pseudobulk.
    batch
        ``None`` (default): the average batch (batch offsets zero). A training batch label: the
        means in that batch (its fitted offsets added on the latent scale). Any other label: a
        new batch, with a fresh offset drawn from the fitted batch distribution, so intervals
        widen by the batch-to-batch spread.
    new_contexts
        What to do with a context (cell line) never seen in training: ``"error"`` (default: a
        :class:`semimech.errors.PredictionError` naming the context and the rows asking for it,
        so a misspelt cell line is not silently treated as a new one) or ``"population"``: answer
        it from the model's learned population of contexts (fresh draws of its context
        deviations; the interval includes the context-to-context spread; ``Prediction.sources``
        marks it and a :class:`semimech.errors.PopulationOnlyWarning` is issued).
    steady_state_draws
        Steady-state models: how many draws to re-solve for ``Prediction.steady_state`` (the
        per-condition fraction of draws whose solve converged and was stable); 0 skips it. Each
        draw costs a solve and an ``eig`` per condition (~1.3 s per draw for 26 conditions at
        500 genes on one CPU core).
    """
    if not is_fit(fit):
        raise PredictionError(f"predict needs a semimech Fit (from fit_svi, fit_nuts, sm.fit or sm.load) as its first "
                              f"argument, got {type(fit).__name__}: call predict(fit, labels_or_design, rng_key=...).")
    train = fit.design
    if isinstance(design, Design) and tuple(design.genes) != tuple(train.genes):
        fitted, asked = set(train.genes), set(design.genes)
        extra = [g for g in design.genes if g not in fitted]
        missing = [g for g in train.genes if g not in asked]
        what = (f"{len(extra)} not modelled, e.g. {extra[:5]}" if extra
                else f"{len(missing)} fitted genes missing, e.g. {missing[:5]}" if missing
                else "the same genes in another order")
        raise PredictionError(
            f"the design's genes differ from the fitted genes ({what}). "
            "Predict on the fitted genes: build the design with genes=fit.design.genes."
        )
    if new_contexts not in ("error", "population"):
        raise PredictionError(f"new_contexts must be 'error' or 'population', got {new_contexts!r}.")
    _args.count("steady_state_draws", steady_state_draws, minimum=0, what="0 skips the steady-state check",
                error=PredictionError)
    pdesign = _prediction_design(train, design)
    labels = list(pdesign.perturbations)
    _check_new_contexts(train, pdesign, labels, new_contexts)
    # a target is seen when some observed training condition edits it (encodings kept by
    # splits may list targets whose rows were all held out: those are unseen too)
    observed = np.unique(train.perturbation_index)
    seen = {t for t, on in zip(train.targets, np.asarray(train.target_matrix)[observed].any(0)) if on}
    new_targets = sorted({t for t, on in zip(pdesign.targets, np.asarray(pdesign.target_matrix).any(0)) if on} - seen)
    if new_targets and not fit.spec.predicts_unseen_targets:
        raise PredictionError(
            f"targets {list(new_targets)} were never perturbed in training; the {fit.spec.name!r} model "
            "cannot predict them (it has no network to propagate an unseen edit). Use a mechanistic model "
            "such as 'production_decay', or predict only combinations of seen targets."
        )
    sources = condition_sources(fit, pdesign, labels, seen)
    warn_population_only(sources, fit.spec.name)
    key = as_key(rng_key)
    k_align, k_pred, k_obs = jax.random.split(key, 3)
    post = _align(fit, pdesign, k_align, seen)
    data = pdesign.model_data()
    data["target_seen"] = np.array([t in seen for t in pdesign.targets], dtype=bool)  # for urn predictives
    tdata = train.model_data()
    for k in DATA_SUMMARIES:  # the training design's data-centred constants
        if k in tdata:
            data[k] = tdata[k]
    data.update({k: v for k, v in tdata.items() if k.startswith("noise_")})  # the measurement model
    data["record_solves"] = True  # steady-state models: each condition's solve per draw (models/_network.py)
    extra = fit.spec.prediction_sites(fit.options) if fit.spec.prediction_sites is not None else {}
    n_draw = next(iter(post.values())).shape[0]
    for site, width in extra.items():  # sites of the prediction only (e.g. an urn's choice): fresh, keyed by target
        if site not in post:
            post[site] = fresh_normal(k_align, site, list(pdesign.targets), (n_draw, len(pdesign.targets), width), 1,
                                      np.float32)
    model = functools.partial(fit.spec.model, **fit.options)
    noise_site = fit.spec.noise_site(fit.likelihood)
    sites = [fit.spec.mean_site, noise_site, "condition_noise", "condition_solved"]

    out = _replay_program(model, data, sites, reference=tdata)(k_pred, post)
    mean = np.asarray(out[fit.spec.mean_site])
    solved = None
    if "condition_solved" in out:
        rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, 13))))
        mean, solved = _given_solved(mean, np.asarray(out["condition_solved"], dtype=bool), labels, rng)
    if batch is not None:
        mean = _in_batch(fit, mean, str(batch), k_obs)
    draws = {"mean": mean}
    noise = None
    if num_cells is not None:
        n = _num_cells(num_cells, labels)
        # a model whose noise differs by context records it per condition (measurement.context_noise)
        if fit.design.noise is not None and fit.design.noise.grouped:  # noise per group of batches
            noise = _grouped_noise(fit, np.asarray(out[noise_site]), batch, len(labels), k_obs)
        elif "condition_noise" in out:
            noise = np.asarray(out["condition_noise"])
        else:
            noise = np.asarray(out[noise_site])[:, None, :]
        if fit.likelihood == "normal":
            noise = np.asarray(total_sd(noise, tdata, mean))
        draws["observed_mean"] = mean_of_cells(k_obs, mean, noise, likelihood=fit.likelihood, num_cells=n[None, :, None])
        bounds = fit.spec.observed_bounds(fit.options) if fit.spec.observed_bounds is not None else None
        if bounds is not None:  # the data are a bounded normalisation: an observation lies within it
            draws["observed_mean"] = np.clip(draws["observed_mean"], *bounds)
    ss = None
    if steady_state_draws > 0 and is_steady_state_model(fit.spec):
        ss = solve_fractions(fit, post, data, labels, rng_key=jax.random.fold_in(key, 11),
                             num_draws=steady_state_draws, reference=tdata)
    if solved is not None:
        ss = pd.DataFrame({"perturbation": list(labels)}) if ss is None else ss
        ss["solved"] = solved
    return Prediction(perturbations=tuple(labels), genes=train.genes, draws=draws, control=train.control,
                      model=fit.spec.name, steady_state=ss, sources=sources, noise=noise)


#: The last replay programs, kept by the model, its options, the prediction's structural data, the shapes of its
#: arrays and the sites: a later ``predict`` of other conditions of the same shapes (another double instead of the
#: first, another key, other draws of the same shapes, another fit of the same model and options: a seed of a
#: benchmark) reuses the compiled replay instead of compiling it again (1.3-1.8 s on 2 cores even for a 6-gene
#: steady-state model). Bounded: each kept program holds ~34 memory mappings (``release_compiled`` drops them).
_REPLAYS = Recent(8)
#: Models whose replay needs the prediction's arrays as constants (the model reads them with numpy or branches on
#: them in Python): their replay is keyed by the arrays' values, as before 2026-12-07.
_CONSTANT_DATA: set = set()
_TRACE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                 jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def _replay_program(model: functools.partial, data: dict, sites: list[str], *, reference: Mapping | None = None,
                    constants: bool = False):
    """``replay(key, post)``: the model's ``sites`` for each posterior draw, on the prediction's ``data``, jitted.

    The prediction's numeric arrays that differ from the training design's (``reference``: which conditions, their
    targets and structure) are arguments of the program, so one program serves every set of conditions with the
    same array shapes; the fit's own structure (its targets' genes, contexts: the same arrays as in training) stays
    constant. One program per distinct (model, options, constant data, shapes, sites) is kept in
    :data:`_REPLAYS`. A model that needs the arrays as constants (it converts one to numpy or branches on its
    values: JAX raises while tracing) gets, from then on, a program per set of conditions with the arrays baked
    in (keyed by their values; ``constants=True`` asks for that program). Unkeyable data (an object
    :func:`~semimech.infer._compiled.cache_key` cannot hash by content) get a program of their own call, freed
    with it. Replayed eagerly instead, Predictive's ``lax.map`` compiled its scan with the call's data baked in and
    JAX's primitive cache kept every one, unbounded (~34 memory maps and ~1.6 MB a call), so a long session of
    predict calls ran into the kernel's map limit ("LLVM compilation error: Cannot allocate memory")."""
    model_key = cache_key("predict.model", model)
    traced = {}
    if not constants and (model_key is None or model_key not in _CONSTANT_DATA):
        reference = {} if reference is None else reference
        traced = {k: v for k, v in data.items()  # numeric arrays only: JAX takes no strings or objects
                  if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and not _same(v, reference.get(k))}
    static = {k: v for k, v in data.items() if k not in traced}
    key = cache_key("predict.replay", model, static, signature(traced), tuple(sites))
    program = _REPLAYS.get(key)
    if program is None:
        def replay(rng_key, post, arrays):
            return Predictive(model, posterior_samples=post, return_sites=sites)(rng_key, {**static, **arrays})

        program = jax.jit(replay)

    def run(rng_key, post):
        try:
            out = program(rng_key, post, traced)
        except _TRACE_ERRORS:
            if not traced:
                raise
            if model_key is not None:  # the model needs the arrays as constants
                _CONSTANT_DATA.add(model_key)
            return _replay_program(model, data, sites, constants=True)(rng_key, post)
        _REPLAYS.put(key, program)  # kept once it traced and compiled
        return out

    return run


def _same(a: np.ndarray, b) -> bool:
    """``b`` is an array equal to ``a`` (shape, dtype and values)."""
    return (isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f")))


def _given_solved(mean: np.ndarray, ok: np.ndarray, labels, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each condition's draws conditioned on its steady state being found; returns them and the solved fractions.

    A steady-state model fills a failed solve with a fallback (the control state) only to keep its density
    finite; the fit gives such draws no mass (``steady_state_ok``). At prediction a draw may still fail a *new*
    condition, and its fallback would pass for a prediction of "no change". Here a condition's failed draws are
    replaced by draws of the same condition resampled from its solved ones (the posterior predictive given that
    the steady state exists, condition by condition), with a :class:`~semimech.errors.UnsolvedWarning` naming
    the conditions; a condition that no draw solves is NaN. ``mean`` ``(draws, perturbations, genes)``, ``ok``
    ``(draws, perturbations)``.
    """
    frac = ok.mean(0)
    hit = np.flatnonzero(frac < 1.0)
    if hit.size == 0:
        return mean, frac
    mean = np.array(mean)  # a copy: the replay's output is read-only
    for p in hit:
        good, bad = np.flatnonzero(ok[:, p]), np.flatnonzero(~ok[:, p])
        mean[bad, p] = np.nan if good.size == 0 else mean[rng.choice(good, bad.size), p]
    listed = ", ".join(f"{labels[p]} ({int(round((1 - frac[p]) * ok.shape[0]))} of {ok.shape[0]})" for p in hit[:8])
    more = f" and {hit.size - 8} more" if hit.size > 8 else ""
    none = [labels[p] for p in hit if frac[p] == 0.0]
    warnings.warn(
        f"the steady state was not found in some posterior draws for {hit.size} condition(s): {listed}{more}. "
        "Their answers are conditioned on a steady state existing (the failed draws are replaced by resampling the "
        "condition's solved draws; Prediction.steady_state['solved'] has the fractions)"
        + (f"; no draw solved {none[:8]}, whose predictions are NaN" if none else "")
        + ". Many failures mean that the solver finds no steady state of the fitted dynamics for that condition in "
          "much of the posterior: the model's answer for it is weak, whatever its interval.",
        UnsolvedWarning, stacklevel=3)
    return mean, frac


def _check_new_contexts(train: Design, pdesign: Design, labels: list[str], new_contexts: str) -> None:
    """Refuse contexts never seen in training unless the population answer was asked for."""
    if new_contexts == "population" or train.contexts is None or pdesign.contexts is None:
        return
    unseen = list(pdesign.contexts[len(train.contexts):])
    if not unseen:
        return
    ctx = np.asarray(pdesign.perturbation_context)
    rows = [lab for lab, c in zip(labels, ctx) if c >= len(train.contexts)]
    raise PredictionError(
        f"context(s) {unseen[:5]}{' ...' if len(unseen) > 5 else ''} were never seen in training (asked for by "
        f"{rows[:5]}{' ...' if len(rows) > 5 else ''}); the training contexts are {list(train.contexts)[:10]}"
        f"{' ...' if len(train.contexts) > 10 else ''}. If the name is misspelt, use a training context; to answer a "
        "new context from the model's learned population of contexts (wider intervals), pass "
        "new_contexts='population'.")


def _in_batch(fit, mean: np.ndarray, batch: str, rng_key) -> np.ndarray:
    """Add one batch's offsets (``batch_sd * batch_z``, latent scale) to mean draws."""
    if "batch_z" not in fit.samples or "batch_sd" not in fit.samples:
        raise PredictionError(
            f"batch={batch!r} was given but the {fit.spec.name!r} fit has no batch offsets (it was fitted on a "
            "design without batch_key). Leave batch=None, or refit with batches."
        )
    z = fit.flat("batch_z")  # (draws, batches, genes)
    batches = list(fit.design.batches or ())
    if batch in batches:
        zb = z[:, batches.index(batch), :]
    else:  # a new batch: a fresh draw of its offsets
        warnings.warn(
            f"batch {batch!r} is not a training batch ({batches[:10]}{' ...' if len(batches) > 10 else ''}): it is "
            "predicted as a new batch, its offsets drawn from the fitted batch distribution (intervals widen by the "
            "batch-to-batch spread). If the name is misspelt, pass a training batch.", PopulationOnlyWarning,
            stacklevel=3)
        zb = host_rng(rng_key, 7).standard_normal((z.shape[0], z.shape[2])).astype(z.dtype)
    sd = fit.flat("batch_sd").reshape(z.shape[0], *([1] * (zb.ndim - 1)))
    offset = (sd * zb)[:, None, :]
    return mean * np.exp(offset) if fit.likelihood == "negbin" else mean + offset


def _grouped_noise(fit, sd: np.ndarray, batch, n_labels: int, rng_key) -> np.ndarray:
    """Observation sd draws ``(draws, labels, genes)`` of a noise model grouped by batch.

    ``sd`` is ``(draws, noise_groups, genes)``. With ``batch``: its group (a training batch's, or a
    new batch mapped by the noise model's ``batch_groups``). Without: the batch, and so the group,
    is unknown, and each draw and condition takes a group at random, in proportion to the
    training rows in it (the mixture over groups an unnamed batch implies).
    """
    noise = fit.design.noise
    if batch is not None:
        if str(batch) not in noise.batch_groups:
            raise PredictionError(
                f"batch={batch!r} has no noise group: the fit's noise model is grouped by batch and maps only "
                f"{sorted(noise.batch_groups)[:5]}... Map the new batch when building the noise model "
                "(noise.by_batch({..., batch: group})), or leave batch=None for the mixture over groups.")
        g = noise.group_names().index(noise.batch_groups[str(batch)])
        return np.broadcast_to(sd[:, g, None, :], (sd.shape[0], n_labels, sd.shape[2]))
    weight = noise.row_group_weights(fit.design)
    pick = host_rng(rng_key, 3).choice(sd.shape[1], (sd.shape[0], n_labels), p=weight)
    return np.take_along_axis(sd, pick[:, :, None], axis=1)


def _num_cells(num_cells, labels) -> np.ndarray:
    """One positive number of cells per label (an int is used for every label)."""
    try:
        n = np.asarray(num_cells, dtype=float)
    except (TypeError, ValueError):
        raise PredictionError(f"num_cells must be a number or one number per label, got {num_cells!r}.") from None
    if n.ndim > 1 or (n.ndim == 1 and n.shape[0] != len(labels)):
        raise PredictionError(
            f"num_cells has shape {n.shape}: expected one number, or {len(labels)} numbers (one per label, in the "
            f"order of the labels predicted: {labels[:5]}{' ...' if len(labels) > 5 else ''}).")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise PredictionError("num_cells must be positive and finite (the number of cells averaged in each new mean).")
    return np.broadcast_to(n, (len(labels),))


def _prediction_design(train: Design, design) -> Design:
    """The prediction design of whatever ``predict`` was given (labels, a design, a table)."""
    if _already(design, train):
        return design
    if isinstance(design, Design):
        if train.factor_spec is not None:
            return train.with_conditions(design)
        return train.with_perturbations(design.perturbations if design.y is None else design.observed_perturbations())
    if isinstance(design, str):
        return train.with_perturbations([design])
    if isinstance(design, (pd.DataFrame, Mapping)):
        return train.with_conditions(design)
    try:
        items = list(design)
    except TypeError:
        raise PredictionError(f"predict needs what to predict: labels (e.g. ['A+B']), a table of conditions or a Design; "
                              f"got {type(design).__name__}.") from None
    if items and all(isinstance(x, Mapping) for x in items):
        return train.with_conditions(items)
    return train.with_perturbations([str(x) for x in items])


def _already(design, train) -> bool:
    return isinstance(design, Design) and design.y is None and design.targets[: len(train.targets)] == train.targets


def _align(fit, pdesign: Design, rng_key, seen: set[str] | None = None) -> dict[str, np.ndarray]:
    """Posterior draws re-indexed to the prediction design's labels.

    Sites over ``perturbations``, ``targets``, level pairs and context cells are gathered by
    name (a combination matches a training condition with the same set of levels and context;
    see :mod:`semimech.infer._alignment`). Entries absent from training, and conditions and
    targets in its encoding without an observed row (``seen``: targets of observed conditions),
    get fresh standard-normal draws for non-centred ``*_z`` sites, keyed by site and entry name —
    exact prior draws, where a fitted guide of a site without data may not have relaxed to the
    prior; any other site cannot be extended.
    """
    train = fit.design
    maps, names = alignment(train, pdesign)
    observed = np.zeros(len(train.perturbations), dtype=bool)
    observed[np.unique(train.perturbation_index)] = True
    if seen is None:
        seen = {t for t, on in zip(train.targets, np.asarray(train.target_matrix)[observed].any(0)) if on}
    pm, tm = maps["perturbations"], maps["targets"]
    maps["perturbations"] = np.where((pm >= 0) & observed[np.maximum(pm, 0)], pm, -1)
    maps["targets"] = np.where(np.array([t in seen for t in pdesign.targets], dtype=bool), tm, -1).astype(np.int64)
    deterministic = {fit.spec.mean_site} | _deterministic_sites(fit)
    out = {}
    for name, arr in fit.samples.items():
        if name in deterministic:
            continue
        flat = fit.flat(name)
        dims = fit.dims[name]
        for axis, dim in enumerate(dims):
            if dim not in maps:
                continue
            m = maps[dim]
            taken = np.take(flat, np.maximum(m, 0), axis=axis + 1)
            if np.any(m < 0):
                if not name.endswith("_z"):
                    missing = [lab for lab, i in zip(pdesign.coords.get(dim, range(len(m))), m) if i < 0]
                    raise PredictionError(f"site {name!r} has no draws for unseen {dim} {missing}.")
                unseen = np.flatnonzero(m < 0)
                idx = [slice(None)] * taken.ndim
                idx[axis + 1] = unseen
                taken[tuple(idx)] = fresh_normal(rng_key, name, [names[dim][i] for i in unseen], taken.shape,
                                                 axis + 1, taken.dtype)
            flat = taken
        out[name] = flat
    return out


def _deterministic_sites(fit) -> set[str]:
    from semimech.infer._sites import abstract_trace

    tr = abstract_trace(functools.partial(fit.spec.model, **fit.options), fit.design.model_data(), None)
    return {n for n, s in tr.items() if s[0] == "deterministic"}
