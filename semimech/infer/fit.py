"""Inference façade: ``fit_svi`` and ``fit_nuts`` (:mod:`semimech.infer.nuts`) return one immutable :class:`Fit`."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import warnings
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import autoguide, init_to_median, init_to_value

from semimech._blas import limited_blas
from semimech._rng import as_key
from semimech.data.design import Design
from semimech.errors import DesignError, InferenceError
from semimech.infer import _args, _arviz
from semimech.infer._interrupt import FitInterrupted, deferred_interrupt
from semimech.infer._observed import observed
from semimech.infer._progress import Phases
from semimech.infer._sites import site_dims
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
        if name not in self.samples:
            raise KeyError(f"{name!r} is not a site of this {self.spec.name!r} fit; its sites: {sorted(self.samples)}.")
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
             with_y: bool = True, method: str | None = None):
    spec = _args.spec(spec)
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
    opts = resolved_options(spec, options, method, design=design)
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


def svi_method(guide: str) -> str:
    """The method an SVI fit with ``guide`` tells ``ModelSpec.resolve_options``: ``"map"`` for a point estimate
    (no entropy term: a centred hierarchy's mode is degenerate), else ``"svi"``."""
    return "map" if guide == "map" else "svi"


def resolved_options(spec: ModelSpec, options: dict, method: str | None, *, design: Design | None = None) -> dict:
    """The spec's defaults updated by ``options``, then settled for ``method`` (``spec.resolve_options``) and,
    given the ``design`` to fit, checked against it (``spec.prepare_options``)."""
    opts = {**spec.default_options, **options}
    check_option_names(spec, opts)
    check_option_values(spec, options)
    if spec.resolve_options is not None:
        opts = dict(spec.resolve_options(opts, method))
    if design is not None and spec.prepare_options is not None:
        opts = dict(spec.prepare_options(opts, design))
    return opts


def check_option_names(spec: ModelSpec, options: dict) -> None:
    """A ``DesignError`` for an option the model does not take (a misspelt ``edge_prio=``), naming the close
    ones, before anything is traced (it was a ``TypeError`` from inside the trace). Models that take
    ``**options`` are not checked."""
    try:
        params = inspect.signature(spec.model).parameters
    except (TypeError, ValueError):  # a callable without a signature: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if n not in ("data", "y") and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [k for k in options if k not in known]
    if unknown:
        name = unknown[0]
        close = [k for k in known if k.startswith(name) or name.startswith(k)]  # a prefix first: effect_prior_scale
        close = (close + [k for k in difflib.get_close_matches(name, known, n=3) if k not in close])[:3]
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise DesignError(f"model {spec.name!r} has no option {name!r}.{hint} Its options: {sorted(known)} "
                          "(the model function's help describes them).")


def check_option_values(spec: ModelSpec, options: dict) -> None:
    """A ``DesignError`` naming a numeric model option given a value its kind cannot take, before anything is
    traced (it reached NumPyro as "Normal distribution got invalid scale parameter", naming no option). The kind
    is read from the option's default: a positive float (a prior scale, a slab, a concentration) takes a finite
    number > 0; an integer (a count of programs) an integer >= 0; a ``(location, scale)`` pair two finite numbers,
    the second > 0. ``None`` is left to the model where its signature allows it; other options are the model's."""
    try:
        params = inspect.signature(spec.model).parameters
    except (TypeError, ValueError):
        return
    for name, value in options.items():
        p = params.get(name)
        if p is None or value is p.default:
            continue
        default = p.default
        if value is None and "None" in str(p.annotation):
            continue
        if isinstance(default, float) and default > 0:
            _args.number(name, value, error=DesignError)
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
                raise DesignError(f"{name} must be an integer >= 0, got {value!r}.")
        elif isinstance(default, tuple) and len(default) == 2 and all(_args.is_finite_number(x) for x in default):
            _args.prior_pair(name, value, error=DesignError)


def is_fit(obj) -> bool:
    """Whether ``obj`` is a semimech fit (what ``predict``, cross-validation and ``compare`` read of it: design,
    spec, draws)."""
    return hasattr(obj, "design") and hasattr(obj, "spec") and hasattr(obj, "samples")


#: Data-centred prior constants of ``Design.model_data()`` (control summaries, noise floor).
DATA_SUMMARIES = ("baseline_loc", "baseline_scale", "noise_floor", "readout_center", "readout_spread")


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
    spec = _args.spec(spec)
    rng_key = as_key(rng_key)  # a bad seed is named before anything compiles
    num_steps = _args.count("num_steps", num_steps, what="SVI steps")
    learning_rate, num_samples, rank = _args.svi_settings(learning_rate, num_samples, rank)
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
        model, data, _, opts = _prepare(spec, design, options, row_mask, with_y=False,
                                        method=svi_method(guide))
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
    k_fit, k_draw = jax.random.split(rng_key)  # fit_svi made it a key
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
    from semimech.infer._compiled import mapped_code_check, wait

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
    mapped_code_check()
    return Fit(spec=spec, design=design, samples=samples, dims=dims, method="svi", options=opts,
               losses=losses, timings=timings, restarts=restarts)


def _check_restarts(restarts, resume) -> int:
    restarts = _args.count("restarts", restarts, what="the number of SVI runs to keep the best of")
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
    the last :func:`restart_window` steps is kept. A run with a NaN/inf step in that window (the step left its state
    unchanged) is kept only when no run's window is all finite, scored then on its finite steps. Returns
    ``(state, losses, record)``."""
    window = restart_window(num_steps)
    best, runs, scores, first_error, partial = None, [], [], None, {}
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
                tail = np.asarray(losses[-window:], dtype=float)
                ok = np.isfinite(tail)
                score = float(np.mean(tail)) if ok.all() else np.inf
                if ok.any() and not ok.all():  # a NaN/inf step left the state unchanged (stable_update)
                    partial[i] = (float(np.mean(tail[ok])), state, losses)
            except InferenceError as err:
                first_error = first_error or err
        full = np.full(num_steps, np.nan, np.float32)
        full[:len(losses)] = losses
        runs.append(full)
        scores.append(score)
        if np.isfinite(score) and (best is None or score < scores[best[0]]):
            best = (i, state, losses)
    if best is None and partial:  # no run with a clean tail: the best on its finite steps
        for j, (value, *_) in partial.items():
            scores[j] = value
        i = min(partial, key=lambda j: partial[j][0])
        best = (i, *partial[i][1:])
    if best is None:
        raise first_error or InferenceError(
            f"none of the {restarts} runs of fit_svi(..., restarts={restarts}) ended with a finite loss over its last "
            f"{window} steps. Try a smaller learning_rate (e.g. 0.005) or guide='map' to find a starting point.")
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


#: names that moved to :mod:`semimech.infer.nuts`, still importable from here (``from semimech.infer.fit import
#: fit_nuts``) through the module's ``__getattr__``
_MOVED_TO_NUTS = ("fit_nuts", "MAX_NUTS_PROGRAMS", "_NUTS_PROGRAMS", "_nuts_compiled", "CHAIN_METHODS",
                  "_chain_method", "_init_from", "_check_nuts_settings")


def __getattr__(name: str):
    # imported on first use, not at module level: semimech.infer.nuts imports this module. Not stored here, so a
    # patch of semimech.infer.nuts is what this module hands out too (patch NUTS internals there, not here).
    if name in _MOVED_TO_NUTS:
        from semimech.infer import nuts

        return getattr(nuts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
