"""Inference façade: ``fit_svi`` and ``fit_nuts`` return one immutable :class:`Fit`."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import MCMC, NUTS, autoguide, init_to_median, init_to_value

from semimech._blas import limited_blas
from semimech._rng import as_key
from semimech.data.design import Design
from semimech.errors import DesignError, InferenceError
from semimech.infer import _arviz
from semimech.infer._compiled import Recent
from semimech.infer._interrupt import FitInterrupted, deferred_interrupt
from semimech.infer._observed import observed
from semimech.infer._progress import Phases
from semimech.infer._sites import site_dims
from semimech.infer.idata import NUTS_EXTRA_FIELDS, nuts_sample_stats
from semimech.infer.spec import ModelSpec
from semimech.measurement import check_likelihood

GUIDES = ("normal", "lowrank", "map")


@dataclasses.dataclass(frozen=True, eq=False)
class Fit:
    """A fitted model: posterior draws, their dims, diagnostics and the training design.

    Attributes
    ----------
    spec
        The model's :class:`ModelSpec`.
    design
        The training design (its encodings align draws with new designs by label).
    samples
        Site name -> array ``(chains, draws, *site_shape)``.
    dims
        Site name -> dim names (plate names: ``genes``, ``targets``, ``perturbations``, ...).
    method
        ``"svi"`` or ``"nuts"``.
    options
        Model keyword options used (e.g. ``likelihood``).
    losses
        SVI loss (negative ELBO) per step; ``None`` for NUTS.
    sample_stats
        NUTS per-draw statistics (``diverging``, ``energy``, ``lp``, ``step_size``,
        ``acceptance_rate``, ``n_steps``, ``tree_depth``), ``(chains, draws)``.
    idata
        The fit as an ArviZ ``DataTree``, built on first access: ``posterior``, ``sample_stats``,
        ``observed_data``, ``constant_data`` and ``log_likelihood`` (the last ones only when
        small; see :mod:`semimech.infer.idata`), plus any group added on request
        (:func:`semimech.add_posterior_predictive`, :func:`semimech.add_prior`, ...).
        ``arviz_stats.loo(fit.idata)``, ``arviz_stats.summary(fit.idata)`` and arviz-plots
        work on it directly.
    timings
        Seconds per phase of the fit (``setup_s``, ``compile_s``, ``init_s``, ``steps_s``,
        ``draws_s``, ``total_s``; ``compiled_reused`` is 1 when compiled programs of an earlier
        fit were reused); ``None`` for a loaded fit.
    restarts
        ``fit_svi(..., restarts=k)`` with ``k > 1``: how the kept run was chosen. ``k``, ``window``
        (the last steps whose mean loss scores a run), ``scores`` (that mean per run; ``inf`` for a
        run whose loss did not stay finite), ``chosen`` (the index of the kept run: the lowest
        score) and ``losses`` (``(k, num_steps)``, every run's loss per step; ``fit.losses`` is
        the chosen run's). ``None`` for a single run.
    """

    spec: ModelSpec
    design: Design
    samples: Mapping[str, np.ndarray]
    dims: Mapping[str, tuple[str, ...]]
    method: str
    options: Mapping[str, Any]
    losses: np.ndarray | None = None
    sample_stats: Mapping[str, np.ndarray] | None = None
    idata: Any = None
    timings: Mapping[str, float] | None = None
    restarts: Mapping[str, Any] | None = None

    def __post_init__(self):
        for a in self.samples.values():
            a.setflags(write=False)
        object.__setattr__(self, "samples", MappingProxyType(dict(self.samples)))
        object.__setattr__(self, "dims", MappingProxyType(dict(self.dims)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.restarts is not None:
            object.__setattr__(self, "restarts", MappingProxyType(dict(self.restarts)))

    @property
    def likelihood(self) -> str:
        return self.options.get("likelihood", "normal")

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    def flat(self, name: str) -> np.ndarray:
        """Draws of a site with chains and draws merged: ``(chains * draws, *shape)``."""
        a = self.samples[name]
        return a.reshape((-1,) + a.shape[2:])

    def diagnostics(self, *, steady_state: bool = True) -> dict:
        """Convergence summary: divergences, worst R-hat and ESS per site, ELBO trace summary.

        For steady-state models also the fraction of posterior draws with a stable, unique
        steady state per condition (see :func:`semimech.infer.diagnostics.diagnostics`; computed
        once per fit, ``steady_state=False`` skips it).
        """
        from semimech.infer.diagnostics import diagnostics

        return diagnostics(self, steady_state=steady_state)

    def summary(self, var_names=None):
        """ArviZ summary table of the posterior (mean, sd, intervals, ESS, R-hat)."""
        from semimech.infer.idata import posterior_tree

        return _arviz.summary(posterior_tree(self), var_names=var_names)

    def save(self, path) -> None:
        """Write the fit to a folder; :func:`semimech.load` restores it exactly."""
        from semimech.infer.io import save

        save(self, path)

    def __repr__(self) -> str:
        return (f"Fit(model={self.spec.name!r}, method={self.method!r}, chains={self.num_chains}, "
                f"draws={self.num_draws}, {self.design!r})")


def _get_idata(fit):
    tree = fit.__dict__.get("_idata")
    if tree is None:
        from semimech.infer.idata import build

        tree = build(fit)
        fit.__dict__["_idata"] = tree
    return tree


def _set_idata(fit, value) -> None:
    fit.__dict__["_idata"] = value


# ``idata`` stays a dataclass field (``Fit(..., idata=tree)``, ``dataclasses.replace(fit, idata=None)``)
# but is read through this property: ``None`` means "build on first access", because the default
# log-likelihood group costs a model evaluation per draw that most fits never need.
Fit.idata = property(_get_idata, _set_idata, doc="The fit as an ArviZ DataTree (built on first access).")


def _prepare(spec: ModelSpec, design: Design, options: dict, row_mask=None, *, warn: bool = True,
             with_y: bool = True):
    if not isinstance(design, Design):
        if type(design).__name__ == "TimeCourseDesign":
            raise DesignError(
                f"the {spec.name!r} model takes a semimech.Design (conditions at steady state), not a TimeCourseDesign. "
                "Fit time courses with a time-course model: semimech.models.TIME_COURSE[name].fit(design, rng_key=...) "
                f"(available: time_course, neural_ode, neural_ode_bayes)."
            )
        raise DesignError(f"expected a semimech.Design, got {type(design).__name__}; build one with Design.from_anndata.")
    if design.y is None:
        raise DesignError("cannot fit a prediction design (it has no readouts); fit the training design.")
    opts = {**spec.default_options, **options}
    opts.setdefault("likelihood", "negbin" if design.is_counts else "normal")
    check_likelihood(opts["likelihood"], is_counts=design.is_counts)
    if opts["likelihood"] != "normal" and design.noise is not None and design.noise.kind != "learned":
        raise DesignError(f"the design's {design.noise.kind!r} noise model is for Gaussian readouts, but the "
                          f"likelihood is {opts['likelihood']!r}; use likelihood='normal' or drop the noise model.")
    if opts["likelihood"] == "normal" and warn:
        # a model option that sets the measurement noise (the signalling model's noise_sd prior) identifies
        # the noise as a known noise model on the design does
        _warn_unreplicated(design, noise_given=opts.get("noise_sd") is not None)
    data = design.model_data()
    if row_mask is not None:
        data["row_mask"] = _row_mask(row_mask, design)
        data.update(fold_summaries(design, data["row_mask"]))
    y = jnp.asarray(design.dense_y(), dtype=jnp.float32) if with_y else None
    model = functools.partial(spec.model, **opts)
    return model, data, y, opts


#: Data-centred prior constants of ``Design.model_data()`` (control summaries, noise floor).
DATA_SUMMARIES = ("baseline_loc", "baseline_scale", "noise_floor")


def fold_summaries(design: Design, row_mask: np.ndarray) -> dict:
    """The data-centred prior constants computed from the kept rows only (as a fit of the subset)."""
    sub = design.subset(row_mask).model_data()
    return {k: sub[k] for k in DATA_SUMMARIES if k in sub}


def _row_mask(row_mask, design: Design) -> np.ndarray:
    mask = np.asarray(row_mask)
    if mask.dtype != bool or mask.shape != (design.n_obs,):
        raise DesignError(f"row_mask must be a boolean array with one entry per row ({design.n_obs}), "
                          f"got dtype {mask.dtype} and shape {mask.shape}.")
    if not mask[design.perturbation_index == 0].any():
        raise DesignError("row_mask leaves out every control row; keep the controls (the baseline of every change).")
    return mask.copy()


def warm_init(values) -> Callable:
    """An ``init_loc_fn``: each site in ``values`` starts there, the others at the prior median.

    A NaN entry of a value starts at the prior median (as in a fresh fit, given its parents' start):
    cross-validation refits reset that way the entries only the left-out rows inform
    (:mod:`semimech.evaluate._warm`). NaN is data, not structure: fits differing in which entries
    are NaN share one compiled initialisation.
    """
    return functools.partial(_warm_site, values=values)  # NumPyro reads init strategies as partials


def _warm_site(site=None, values=None):
    if site is None:
        return functools.partial(_warm_site, values=values)
    if site["name"] in values:
        warm = init_to_value(site, values={site["name"]: values[site["name"]]})
        if site["type"] != "sample" or site["is_observed"] or not jnp.issubdtype(jnp.result_type(warm), jnp.floating):
            return warm
        return jnp.where(jnp.isnan(warm), init_to_median(site, num_samples=15), warm)
    return init_to_median(site, num_samples=15)


def _warn_unreplicated(design: Design, *, noise_given: bool = False) -> None:
    """Warn when noise and effects are not separately identified, and about duplicated rows.

    Identified: a known or replicate-based noise model (:meth:`Design.with_noise`) or one given
    as a model option (``noise_given``, e.g. the signalling model's ``noise_sd``), replicate
    rows (exact copies excepted), cells behind a row, or effects shared across conditions
    (residual degrees of freedom of the additive mean structure,
    :func:`semimech.measurement.replicates.residual_df`). Otherwise the fitted noise sd, and with
    it every interval, is set by the priors.
    """
    from semimech.measurement.replicates import duplicate_rows, has_replicates, residual_df

    dups = duplicate_rows(design)
    if dups:
        shown = "; ".join(", ".join(map(str, d[:4])) for d in dups[:5])
        warnings.warn(
            f"{len(dups)} set(s) of rows of one condition are identical in every readout ({shown}). Copies of one "
            "measurement are not replicates: read as replicates they claim zero noise. Keep one row of each "
            "(Design.subset) if they are copies.", DuplicateRowsWarning, stacklevel=3)
    if noise_given or (design.noise is not None and design.noise.kind != "learned"):
        return
    if has_replicates(design) or residual_df(design) > 0:
        return
    warnings.warn(
        "every condition (perturbation x batch) is observed in a single row, without replicates, and every "
        "condition can take its own mean (its targets' effects, or a combination's interaction), so measurement "
        "noise and condition effects are separated only by the priors, which then set the fitted noise sd and "
        "every interval. Give replicate rows or cell-level data, a known measurement error (Design.with_noise: "
        "semimech.measurement.fixed, xmap, from_replicates), or a design whose effects are shared across "
        "conditions. sm.fit uses NUTS for such designs (mean-field SVI over-shrinks their effects).",
        UnreplicatedWarning, stacklevel=3)


class DuplicateRowsWarning(UserWarning):
    """Rows of one condition are identical in every readout (copies, not replicates)."""


class UnreplicatedWarning(UserWarning):
    """The design holds no replicate information (see :func:`fit_svi`)."""


def _guide_factory(guide: str, *, rank: int, init_loc_fn) -> Callable:
    """``model -> autoguide`` for a guide name (one place: the compiled machinery builds guides with it)."""
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}.")
    if guide == "normal":
        # AutoDiagonalNormal (the same family sampled as one vector) compiles ~35% faster, but its
        # different random stream moves fixed-seed posteriors by more than Monte Carlo error after
        # 300 steps (SGD noise): kept AutoNormal (benchmarks/RESULTS_speed.md)
        return functools.partial(autoguide.AutoNormal, init_loc_fn=init_loc_fn, init_scale=0.05)
    if guide == "lowrank":
        return functools.partial(autoguide.AutoLowRankMultivariateNormal, init_loc_fn=init_loc_fn, rank=rank,
                                 init_scale=0.05)
    return functools.partial(autoguide.AutoDelta, init_loc_fn=init_loc_fn)


DEFAULT_INIT = init_to_median(num_samples=15)


@limited_blas()
def fit_svi(spec: ModelSpec, design: Design, *, rng_key, num_steps: int = 2000, guide: str = "normal",
            learning_rate: float = 0.02, num_samples: int = 400, rank: int = 10, progress_bar: bool = True,
            resume=None, row_mask=None, init_values: Mapping[str, Any] | None = None, restarts: int = 1,
            **options) -> Fit:
    """Fit by stochastic variational inference with an automatic guide.

    Parameters
    ----------
    spec
        The model (``semimech.models.additive.SPEC``, ...).
    design
        Training design.
    rng_key
        Int seed or JAX key.
    num_steps
        Optimisation steps (Adam with gradient clipping; the rate decays from
        ``learning_rate`` to 1% of it on a cosine schedule).
    guide
        ``"normal"`` (mean-field AutoNormal), ``"lowrank"`` (AutoLowRankMultivariateNormal with
        ``rank``) or ``"map"`` (AutoDelta: a point estimate; intervals then reflect only noise).
    num_samples
        Posterior draws taken from the fitted guide.
    progress_bar
        Say what the fit is doing (compiling, initialising, steps with the loss, drawing) on stderr.
    resume
        The ``checkpoint`` of a :class:`~semimech.infer.FitInterrupted` raised by Ctrl-C during an
        earlier call with the same arguments: the fit continues where it stopped and returns what
        the uninterrupted fit would have.
    row_mask
        Optional boolean per row of ``design``: rows marked False are left out of the
        likelihood, and the data-centred priors are computed from the kept rows (a fit of
        ``design.subset(row_mask)`` with the shapes of ``design``). Cross-validation folds keep every
        row so that they share shapes and compiled code (:mod:`semimech.evaluate.cv`); a
        perturbation with no row left has no data on its latents.
    init_values
        Optional warm start: site name -> value on the constrained scale (e.g. the posterior
        medians of an earlier fit of the same model and design); other sites, and NaN entries of a
        value, start at the prior median. The values are data of the compiled initialisation: fits
        with different values share it.
    restarts
        Best of ``restarts`` runs (default 1: one run). Run ``i`` starts from its own
        initialisation and random stream (run 0 is the single-run fit of the same ``rng_key``) and
        takes all ``num_steps``; the run with the lowest mean loss (negative ELBO) over its last
        ``max(1, num_steps // 10)`` steps is kept, so the choice uses the training objective
        only. All runs' losses and the choice are in ``fit.restarts``. Runs share the compiled
        programs and go one after the other: ``restarts=k`` costs ``k`` times the steps. For
        models whose SVI can end in a local optimum far from the best one. Measured on Norman
        doubles (``benchmarks/RESULTS_compare.md``, session 12): ``linear_steady_state``, whose
        single runs ended one seed in three in an optimum twice as bad held out, lands in the good
        one on each of 3 seeds with ``restarts=3``; ``production_decay`` has optima that fit the training
        rows as well or better and predict unseen doubles 3x worse, which a choice by the training
        loss cannot avoid (its held-out error got worse on one seed). ``resume=`` is not available with
        ``restarts > 1``. With ``init_values`` every run starts from the warm values (they differ
        in the entries started at the prior median and in the random stream).
    **options
        Model options, e.g. ``likelihood="negbin"``.

    Notes
    -----
    The initialisation, a block of steps and the posterior draws are each one compiled program,
    built once per model, options, guide, optimiser settings and data shapes in a process: a
    later fit of the same shapes (another seed, a refit on same-shape data) reuses them.
    ``fit.timings`` says where the time went (``setup_s``, ``compile_s``, ``init_s``,
    ``steps_s``, ``draws_s``, ``total_s``). Compiled programs can also be kept across processes
    (opt-in: ``SEMIMECH_CACHE_DIR``, see :func:`semimech.infer.set_cache_dir`).
    """
    phases = Phases(show=progress_bar, label=f"fit_svi {spec.name}")
    try:
        return _fit_svi(spec, design, rng_key=rng_key, num_steps=num_steps, guide=guide, learning_rate=learning_rate,
                        num_samples=num_samples, rank=rank, phases=phases, resume=resume, options=options,
                        row_mask=row_mask, init_values=init_values, restarts=restarts)
    except KeyboardInterrupt as err:
        if isinstance(err, FitInterrupted):
            raise
        phases.end_steps()
        raise FitInterrupted("fit_svi interrupted (Ctrl-C) before any step finished; nothing was returned. "
                             "Run it again to start over.") from None


def _fit_svi(spec, design, *, rng_key, num_steps, guide, learning_rate, num_samples, rank, phases, resume, options,
             row_mask=None, init_values=None, restarts=1):
    from semimech.infer import _optim, _svi
    from semimech.infer._compiled import cache_key, signature

    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}.")
    restarts = _check_restarts(restarts, resume)
    with phases.phase("setup_s", "preparing"):
        model, data, _, opts = _prepare(spec, design, options, row_mask, with_y=False)
        y, _ = observed(model, design, data, opts["likelihood"], key=cache_key("observed", spec.model, opts))
        static, traced = _svi.split_data(data, y)
        if init_values is not None:
            traced[_svi.INIT_KEY] = {k: jnp.asarray(v) for k, v in init_values.items()}
        make_guide = _guide_factory(guide, rank=rank, init_loc_fn=DEFAULT_INIT)
        # cosine decay to 1% of the rate: large steps early, then settle (a fixed rate leaves
        # well-determined parameters dithering at the scale of the step). Rate and length live in
        # the optimiser state (_optim.set_schedule), so fits with other num_steps share the programs.
        optim = _optim.optimiser()
        key = cache_key("svi", spec.model, opts, guide, rank, DEFAULT_INIT, static, signature(traced),
                        jax.default_backend())
        eng, hit = _svi.engine(model, static, traced, make_guide=make_guide, optim=optim, key=key)
    phases.add("compiled_reused", float(hit))
    eng.prepare(traced, num_samples, init=resume is None, phases=phases)
    k_fit, k_draw = jax.random.split(as_key(rng_key))
    if restarts > 1:
        state, losses, record = _best_of(eng, traced, k_fit, restarts, num_steps=num_steps,
                                         learning_rate=learning_rate, phases=phases)
        return _finish_svi(eng, spec, design, model, data, y, opts, state, losses, k_draw, num_samples, phases,
                           None, traced=traced, restarts=record)
    fingerprint = functools.partial(_fingerprint, key, traced, k_fit, (num_steps, learning_rate))  # hashed when needed
    start = _resume(resume, fingerprint(), num_steps) if resume is not None else None
    state, losses, status = _run_svi(eng, traced, k_fit, num_steps=num_steps, learning_rate=learning_rate,
                                     phases=phases, start=start)
    if status == "no_init":
        raise InferenceError(_NO_INIT)
    if status == "interrupted":
        ckpt = _svi.Checkpoint(fingerprint=fingerprint(), state=jax.device_get(state), losses=losses, done=len(losses),
                               num_steps=num_steps)
        raise FitInterrupted(
            f"fit_svi interrupted (Ctrl-C) after {len(losses)} of {num_steps} steps; nothing was returned. "
            "Continue with fit_svi(..., resume=err.checkpoint) (same arguments) or run it again.", ckpt) from None
    _check_losses(losses)
    return _finish_svi(eng, spec, design, model, data, y, opts, state, losses, k_draw, num_samples, phases,
                       fingerprint, traced=traced, num_steps=num_steps)


def _finish_svi(eng, spec, design, model, data, y, opts, state, losses, k_draw, num_samples, phases, fingerprint,
                *, traced, num_steps=None, restarts=None):
    """The posterior draws of a finished SVI state and the :class:`Fit` (``fingerprint``: for a checkpoint if
    the draws are interrupted; ``None``: no checkpoint, as after ``restarts > 1``)."""
    from semimech.infer import _svi
    from semimech.infer._compiled import wait

    try:
        post = eng.draws(k_draw, state, traced, num_samples, phases=phases)
        with phases.phase("draws_s", f"drawing {num_samples} posterior samples"):
            post = wait(post)
    except KeyboardInterrupt:
        if fingerprint is None:
            raise FitInterrupted("fit_svi interrupted (Ctrl-C) while drawing the posterior, after all restarts; "
                                 "nothing was returned. Run it again (resume= is not available with restarts > 1)."
                                 ) from None
        ckpt = _svi.Checkpoint(fingerprint=fingerprint(), state=jax.device_get(state), losses=losses, done=len(losses),
                               num_steps=num_steps)
        raise FitInterrupted("fit_svi interrupted (Ctrl-C) while drawing the posterior, after all steps; nothing was "
                             "returned. fit_svi(..., resume=err.checkpoint) draws without repeating the steps.",
                             ckpt) from None
    samples = {k: np.asarray(v)[None] for k, v in post.items()}
    dims = site_dims(model, data, y)
    timings = phases.finish()
    timings["steps"] = int(len(losses))
    return Fit(spec=spec, design=design, samples=samples, dims=dims, method="svi", options=opts,
               losses=losses, timings=timings, restarts=restarts)


def _check_restarts(restarts, resume) -> int:
    if isinstance(restarts, (bool, np.bool_)) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise InferenceError(f"restarts must be a positive integer (the number of SVI runs to keep the best of), "
                             f"got {restarts!r}.")
    if restarts > 1 and resume is not None:
        raise InferenceError("resume= continues one interrupted run; it is not available with restarts > 1. "
                             "Run the fit again without resume=.")
    return int(restarts)


def restart_window(num_steps: int) -> int:
    """The last steps whose mean loss scores a run of ``fit_svi(..., restarts=k)``."""
    return max(1, int(num_steps) // 10)


def _run_svi(eng, traced, key, *, num_steps: int, learning_rate: float, phases, start=None,
             init_text: str = "initialising"):
    """One SVI run: the compiled initialisation from ``key`` (or ``start = (state, losses, done)`` of a resumed
    run), the learning-rate schedule, then the steps in blocks until ``num_steps`` or Ctrl-C.
    Returns ``(state, losses, status)`` with ``losses`` one array and ``status`` as ``run_blocks``'."""
    from semimech.infer import _optim, _svi
    from semimech.infer._compiled import wait

    if start is None:
        state = eng.init(key, traced, phases=phases)
        with phases.phase("init_s", init_text):
            state = wait(state)
        losses, done = [], 0
    else:
        state, losses, done = start
    state = _optim.set_schedule(state, learning_rate=learning_rate, num_steps=num_steps)
    eng.compile_block(state, traced, phases=phases)
    with deferred_interrupt() as flag:
        state, losses, status = _svi.run_blocks(eng, state, traced, num_steps=num_steps, done=done, losses=losses,
                                                phases=phases, flag=flag)
    return state, (np.concatenate(losses) if losses else np.zeros(0, np.float32)), status


def _best_of(eng, traced, k_fit, restarts: int, *, num_steps: int, learning_rate: float, phases):
    """``restarts`` SVI runs from their own starts (run 0: the single-run fit's); the lowest mean loss over
    the last :func:`restart_window` steps is kept. Returns ``(state, losses, record)``."""
    window = restart_window(num_steps)
    best, runs, scores, first_error = None, [], [], None
    for i in range(restarts):
        k_i = k_fit if i == 0 else jax.random.fold_in(k_fit, i)
        state, losses, status = _run_svi(eng, traced, k_i, num_steps=num_steps, learning_rate=learning_rate,
                                         phases=phases, init_text=f"initialising (run {i + 1} of {restarts})")
        if status == "interrupted":
            raise FitInterrupted(f"fit_svi interrupted (Ctrl-C) in run {i + 1} of {restarts} (restarts={restarts}); "
                                 "nothing was returned. Run it again (resume= is not available with restarts > 1)."
                                 ) from None
        score = np.inf
        if status == "no_init":
            first_error = first_error or InferenceError(_NO_INIT)
        else:
            try:
                _check_losses(losses)
                tail = losses[-window:]
                score = float(np.mean(tail)) if np.isfinite(tail).all() else np.inf
            except InferenceError as err:
                first_error = first_error or err
        full = np.full(num_steps, np.nan, np.float32)
        full[:len(losses)] = losses
        runs.append(full)
        scores.append(score)
        if np.isfinite(score) and (best is None or score < scores[best[0]]):
            best = (i, state, losses)
    if best is None:
        raise first_error
    chosen, state, losses = best
    record = {"k": restarts, "window": window, "scores": tuple(scores), "chosen": chosen,
              "losses": np.stack(runs)}
    return state, losses, record


def _fingerprint(key, traced, k_fit, num_steps) -> str:
    import hashlib

    from semimech.infer._compiled import freeze

    h = hashlib.sha256(repr((key, freeze(jax.device_get(traced)), np.asarray(k_fit).tolist(), num_steps)).encode())
    return h.hexdigest()


def _resume(ckpt, fingerprint: str, num_steps: int):
    from semimech.infer._svi import Checkpoint

    if not isinstance(ckpt, Checkpoint):
        raise InferenceError(f"resume= takes the checkpoint of a FitInterrupted error (err.checkpoint), got "
                             f"{type(ckpt).__name__}.")
    if ckpt.fingerprint != fingerprint:
        raise InferenceError("this checkpoint belongs to a different fit (model, options, guide, steps, data or "
                             "rng_key differ); call fit_svi with the same arguments as the interrupted fit, or "
                             "start over without resume=.")
    return jax.device_put(ckpt.state), [np.asarray(ckpt.losses)], int(ckpt.done)


_NO_INIT = (
    "the model's log density is NaN/inf at every initial point tried. Check the readouts for extreme values, "
    "that counts are raw counts for 'negbin' and log-normalised values for 'normal', and any custom prior."
)


def _check_losses(losses: np.ndarray) -> None:
    finite = np.isfinite(losses)
    if not finite.any() or not finite[-max(1, len(losses) // 10):].any():
        first = int(np.argmin(finite)) if not finite.all() else len(losses)
        raise InferenceError(
            f"SVI loss became NaN/inf at step {first} and stayed so. Try a smaller learning_rate (e.g. 0.005), "
            "check that readouts are on the scale the likelihood expects (raw counts for 'negbin', log-normalised "
            "for 'normal'), or use guide='map' to find a starting point."
        )


@limited_blas()
def fit_nuts(spec: ModelSpec, design: Design, *, rng_key, num_warmup: int = 500, num_samples: int = 500,
             num_chains: int = 2, target_accept_prob: float = 0.85, max_tree_depth: int = 8,
             chain_method: str = "auto", progress_bar: bool = True, row_mask=None,
             init_values: Mapping[str, Any] | Fit | None = None, dense_mass=False, compiled: bool = False,
             **options) -> Fit:
    """Fit by the No-U-Turn sampler (NumPyro NUTS).

    ``chain_method``: ``"auto"`` (default) runs the chains in parallel, one per device, when JAX
    sees at least ``num_chains`` devices, else one after the other; or NumPyro's
    ``"sequential"``, ``"parallel"`` or ``"vectorized"``. On a CPU, JAX sees one device unless told
    otherwise *before it starts*: call ``numpyro.set_host_device_count(2)`` (or set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) first thing in the session to give
    two chains two cores; semimech never changes that setting for you. Measured on the 4-gene
    problem of ``benchmarks/nuts_chains.py``: the first fit (compilation included) takes half
    the wall time of sequential chains (``RESULTS_speed.md``). ``"vectorized"`` runs the chains in
    lockstep in one program (every chain waits for the deepest tree). Divergences are counted in
    :meth:`Fit.diagnostics`. ``row_mask`` as in :func:`fit_svi`.

    ``init_values``: a warm start as in :func:`fit_svi` (site -> constrained value), or an earlier
    :class:`Fit` of the same model (e.g. an SVI fit), whose posterior medians are the start; every
    chain then starts at the same point (R-hat still compares the chains' draws, but from one start
    it is less able to reveal separate modes). Default: each chain at the median of 15 prior draws.

    ``dense_mass``: NumPyro's mass matrix: ``False`` (default) a diagonal one adapted in warm-up,
    ``True`` one dense matrix over all latent sites (adapts to linear correlations between
    parameters, e.g. a readout's offset and scale; costs ``O(d^2)`` per step and needs enough
    warm-up to estimate ``d(d+1)/2`` entries), or a list of tuples of site names, each a dense
    block (e.g. ``[("offset_z", "scale_z")]``), the other sites diagonal. Measured on
    ``signalling_network`` (one HepG2 context, 766 dimensions, 200 warm-up draws), ``True`` mixed
    worse than the diagonal (``benchmarks/RESULTS_signalling.md``): the defaults stay.
    ``target_accept_prob`` (in (0, 1)) and ``max_tree_depth`` (at most ``2**max_tree_depth - 1``
    leapfrog steps per draw) are NumPyro's.

    ``compiled=True`` (opt-in): initialisation, warm-up and sampling of every chain become ONE program,
    compiled by semimech (its compilation interruptible; with the opt-in persistent cache, ``SEMIMECH_CACHE_DIR`` or
    ``semimech.infer.set_cache_dir``, stored and loaded by a later process) instead of NumPyro's
    ``MCMC.run`` (the default, ``False``), which initialises the chains operation by operation and
    compiles its sampling loop once per chain and call, and never uses that cache. Sequential chains
    run under ``lax.map`` (one copy of a chain in the program). Not with ``chain_method="parallel"``;
    no per-iteration progress bar (``progress_bar`` announces the phases). The draws differ from the
    default path's for the same ``rng_key`` (the same sampler compiled differently: not the same
    floating-point rounding), the posterior agrees within Monte Carlo error. Measured on
    ``benchmarks/stan_nuts.py``'s 4-gene model (2 chains x (1,000 + 1,000), load 4-6 on 2 cores,
    ``RESULTS_speed.md`` session 13), the fit call in a fresh process: sequential chains 8.2 s
    instead of 20.0 s, and 2.1 s from the persistent cache (a returning user; the default path
    took 24-31 s with or without it); vectorized chains 12.0 s and 5.1 s (their program traces and
    compiles slower). Sequential chains are the better choice here. A later ``compiled=True`` fit in
    the same process with the same model, options, NUTS settings, warm start, chain and draw counts,
    and data of the same structure and shapes reuses the compiled program (no tracing or compiling:
    only the sampling is paid); the process keeps the last four.
    Ctrl-C while it samples raises :class:`FitInterrupted` at once, but the compiled program cannot be
    cancelled: it keeps one core busy until its draws are done (measured); use ``compiled=False`` for a
    long run you may want to stop.

    With ``compiled=False`` each call compiles NumPyro's sampler anew, and JAX keeps the compiled code
    in its process-wide caches (about 1,000 memory mappings per fit, measured): a process running many NUTS fits (a
    loop over 50 or more folds) can reach the kernel's limit of mappings, and LLVM then aborts
    with "Unable to allocate section memory". Call ``jax.clear_caches()`` between such fits
    (``benchmarks/heldout.py`` does after every fold); semimech does not clear JAX's caches for you.
    """
    from semimech.infer.auto import cut_sites_in

    model, data, y, opts = _prepare(spec, design, options, row_mask)
    cut = cut_sites_in(spec, model, data, y)
    if cut:
        raise InferenceError(
            f"fit_nuts: the {spec.name!r} model's density is a cut posterior with these options (site {cut[0]!r}: its "
            "gradient is stopped on purpose), so NUTS would sample with a gradient that is not its density's. Fit it "
            "with fit_svi (or sm.fit), or turn the cut off for NUTS (signalling_network: misfit_cut=False).")
    dense_mass = _check_nuts_settings(dense_mass, target_accept_prob, max_tree_depth, model, data, y)
    chain_method = _chain_method(chain_method, num_chains)
    if not isinstance(compiled, (bool, np.bool_)):
        raise InferenceError(f"compiled must be True or False, got {compiled!r}.")
    if compiled and chain_method == "parallel" and num_chains > 1:
        raise InferenceError("fit_nuts(compiled=True) runs the chains sequentially or vectorized in one program; "
                             "chain_method='parallel' (one device per chain) needs compiled=False.")
    init_values = _init_from(init_values, spec)
    init = init_to_median(num_samples=15) if init_values is None else warm_init(
        {k: jnp.asarray(v) for k, v in init_values.items()})
    settings = dict(target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth, init_strategy=init,
                    dense_mass=dense_mass)
    if compiled:
        # what the one program depends on besides its traced arguments (as fit_svi's engine key; warm
        # starts are constants of the program, so their values are part of it)
        key_parts = ("nuts", spec.model, opts, target_accept_prob, max_tree_depth, dense_mass,
                     "median" if init_values is None else dict(init_values), num_warmup, num_samples, num_chains,
                     chain_method, jax.default_backend())
        samples, extra = _nuts_one_program(model, data, y, settings, rng_key=rng_key, num_warmup=num_warmup,
                                           num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                                           phases=Phases(show=progress_bar, label=f"fit_nuts {spec.name}"),
                                           key_parts=key_parts)
    else:
        mcmc = MCMC(NUTS(model, **settings), num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                    chain_method=chain_method, progress_bar=progress_bar)
        try:
            mcmc.run(as_key(rng_key), data, y=y, extra_fields=NUTS_EXTRA_FIELDS)
        except RuntimeError as err:
            if "valid initial parameters" not in str(err):
                raise
            raise InferenceError(_NO_INIT) from None
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = nuts_sample_stats(extra)
    # deterministic sites are recorded by NUTS; keep everything but the observations
    samples.pop("y", None)
    dims = site_dims(model, data, y)
    return Fit(spec=spec, design=design, samples=samples, dims=dims, method="nuts", options=opts,
               sample_stats=stats)


MAX_NUTS_PROGRAMS = 4
#: compiled programs of ``fit_nuts(compiled=True)`` in this process
_NUTS_PROGRAMS = Recent(MAX_NUTS_PROGRAMS)


def _nuts_one_program(model, data, y, settings: dict, *, rng_key, num_warmup, num_samples, num_chains, chain_method,
                      phases: Phases, key_parts=None):
    """``fit_nuts(compiled=True)``: NumPyro's ``MCMC.run`` traced into one program, compiled by semimech.

    The readouts and per-row arrays are arguments of the program (``split_data``, as in ``fit_svi``), the
    design's structure is part of it; the program is compiled through ``compile_lowered`` (interruptible,
    the persistent cache if one is set) and kept for later fits of the process with the same ``key_parts``,
    structure and shapes (the last :data:`MAX_NUTS_PROGRAMS`; no tracing, lowering or compiling then).
    Returns ``(samples, extra fields)`` as NumPy arrays, grouped by chain.
    """
    from semimech.infer._compiled import cache_key, compile_lowered, signature, wait
    from semimech.infer._svi import _assemble, split_data

    static, traced = split_data(data, y)
    pkey = None if key_parts is None else cache_key(*key_parts, static, signature(traced))
    # sequential chains: one chain's program mapped over the keys (NumPyro's own "sequential" would trace a
    # copy of the chain per chain into the program)
    method = (lambda f: (lambda xs: jax.lax.map(f, xs))) if chain_method == "sequential" else chain_method

    def run(key, traced):
        d, yy = _assemble(static, traced)
        mcmc = MCMC(NUTS(model, **settings), num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                    chain_method=method, progress_bar=False)
        mcmc.run(key, d, y=yy, extra_fields=NUTS_EXTRA_FIELDS)
        return mcmc.get_samples(group_by_chain=True), mcmc.get_extra_fields(group_by_chain=True)

    key = as_key(rng_key)
    program = _NUTS_PROGRAMS.get(pkey)
    if program is None:
        with phases.phase("compile_s", "compiling NUTS (initialisation, warm-up and sampling in one program)"):
            program, _ = compile_lowered(jax.jit(run).lower(key, traced))
        _NUTS_PROGRAMS.put(pkey, program)
    try:
        with phases.phase("sample_s", f"sampling {num_chains} chain(s) x {num_warmup} warm-up + {num_samples} draws"):
            samples, extra = wait(program(key, traced))
    except KeyboardInterrupt:
        # XLA cannot cancel a running program: say so instead of a bare KeyboardInterrupt (measured: a core
        # stays busy after the interrupt until the program's draws are done)
        raise FitInterrupted(
            "fit_nuts interrupted (Ctrl-C) while sampling; nothing was returned. With compiled=True the sampler is "
            "one compiled program, which cannot be cancelled: it keeps one core busy in the background until its "
            "draws are done. Use compiled=False for a run you may want to stop.") from None
    samples = {k: np.asarray(v) for k, v in samples.items()}
    extra = {k: np.asarray(v) for k, v in extra.items()}
    # NumPyro checks the initial point only outside a traced program: a chain that never had a finite log
    # density started where the model cannot be evaluated
    if not np.isfinite(extra["potential_energy"]).any(axis=-1).all():
        raise InferenceError(_NO_INIT)
    return samples, extra


CHAIN_METHODS = ("auto", "sequential", "parallel", "vectorized")


def _chain_method(method, num_chains: int) -> str:
    """``"auto"``: parallel chains when JAX has a device for each, else sequential; others checked."""
    if method not in CHAIN_METHODS:
        raise InferenceError(f"chain_method must be one of {CHAIN_METHODS}, got {method!r}.")
    if isinstance(num_chains, (bool, np.bool_)) or not isinstance(num_chains, (int, np.integer)) or num_chains < 1:
        raise InferenceError(f"num_chains must be a positive integer, got {num_chains!r}.")
    if method == "auto":
        return "parallel" if num_chains > 1 and jax.local_device_count() >= num_chains else "sequential"
    return method


def _init_from(init_values, spec: ModelSpec):
    """``init_values`` as a mapping: a :class:`Fit`'s posterior medians (same model only), else as given."""
    if not isinstance(init_values, Fit):
        return init_values
    if init_values.spec.name != spec.name:
        raise InferenceError(f"init_values is a fit of the {init_values.spec.name!r} model; a warm start must come "
                             f"from a fit of the model being fitted ({spec.name!r}).")
    return {k: np.median(init_values.flat(k), axis=0) for k in init_values.samples}


def _check_nuts_settings(dense_mass, target_accept_prob, max_tree_depth, model, data, y):
    """Clear errors for NUTS settings NumPyro would reject late or silently misread; returns ``dense_mass``."""
    if not (isinstance(target_accept_prob, (int, float)) and 0.0 < target_accept_prob < 1.0):
        raise InferenceError(f"target_accept_prob must be a number in (0, 1), got {target_accept_prob!r}.")
    if isinstance(max_tree_depth, (bool, np.bool_)) or not isinstance(max_tree_depth, (int, np.integer)) or not (
            1 <= max_tree_depth <= 15):
        raise InferenceError(f"max_tree_depth must be an integer from 1 to 15, got {max_tree_depth!r}.")
    if isinstance(dense_mass, (bool, np.bool_)):
        return bool(dense_mass)
    blocks = list(dense_mass) if isinstance(dense_mass, (list, tuple)) else None
    if not blocks or not all(isinstance(b, tuple) and b and all(isinstance(n, str) for n in b) for b in blocks):
        raise InferenceError("dense_mass must be True, False, or a list of tuples of latent site names (dense "
                             f"blocks, e.g. [('offset_z', 'scale_z')]), got {dense_mass!r}.")
    tr = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(data, y=y)
    latent = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    unknown = sorted({n for b in blocks for n in b} - set(latent))
    if unknown:
        raise InferenceError(f"dense_mass names {unknown}, which are not latent sites of this model (its latent "
                             f"sites: {latent}).")
    return blocks
