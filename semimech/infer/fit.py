"""Inference façade: ``fit_svi`` and ``fit_nuts`` return one immutable :class:`Fit`."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from types import MappingProxyType
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, autoguide, init_to_median

from semimech._rng import as_key
from semimech.data.design import Design
from semimech.errors import DesignError, InferenceError
from semimech.infer import _arviz
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

    def __post_init__(self):
        for a in self.samples.values():
            a.setflags(write=False)
        object.__setattr__(self, "samples", MappingProxyType(dict(self.samples)))
        object.__setattr__(self, "dims", MappingProxyType(dict(self.dims)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

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


def _prepare(spec: ModelSpec, design: Design, options: dict):
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
    if opts["likelihood"] == "normal":
        _warn_unreplicated(design)
    data = design.model_data()
    y = jnp.asarray(design.dense_y(), dtype=jnp.float32)
    model = functools.partial(spec.model, **opts)
    return model, data, y, opts


def _warn_unreplicated(design: Design) -> None:
    """Warn when noise and effects are not separately identified, and about duplicated rows.

    Identified: a known or replicate-based noise model (:meth:`Design.with_noise`), replicate
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
    if design.noise is not None and design.noise.kind != "learned":
        return
    if has_replicates(design) or residual_df(design) > 0:
        return
    warnings.warn(
        "every condition (perturbation x batch) is observed in a single row, without replicates, and no effect "
        "is shared between conditions, so measurement noise and condition effects are not separately "
        "identified: the fitted noise sd, and with it every interval, is set by the priors. Give replicate rows "
        "or cell-level data, a known measurement error (Design.with_noise: semimech.measurement.fixed, xmap, "
        "from_replicates), or a design whose effects are shared across conditions.",
        UnreplicatedWarning, stacklevel=3)


class DuplicateRowsWarning(UserWarning):
    """Rows of one condition are identical in every readout (copies, not replicates)."""


class UnreplicatedWarning(UserWarning):
    """The design holds no replicate information (see :func:`fit_svi`)."""


def fit_svi(spec: ModelSpec, design: Design, *, rng_key, num_steps: int = 2000, guide: str = "normal",
            learning_rate: float = 0.02, num_samples: int = 400, rank: int = 10, progress_bar: bool = True,
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
    **options
        Model options, e.g. ``likelihood="negbin"``.
    """
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}.")
    model, data, y, opts = _prepare(spec, design, options)
    key = as_key(rng_key)
    init = init_to_median(num_samples=15)
    g = {"normal": lambda: autoguide.AutoNormal(model, init_loc_fn=init, init_scale=0.05),
         "lowrank": lambda: autoguide.AutoLowRankMultivariateNormal(model, init_loc_fn=init, rank=rank, init_scale=0.05),
         "map": lambda: autoguide.AutoDelta(model, init_loc_fn=init)}[guide]()
    # cosine decay to 1% of the rate: large steps early, then settle (a fixed rate leaves
    # well-determined parameters dithering at the scale of the step)
    schedule = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1), alpha=0.01)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    svi = SVI(model, g, optim, Trace_ELBO())
    k_fit, k_draw = jax.random.split(key)
    try:
        result = svi.run(k_fit, num_steps, data, y=y, progress_bar=progress_bar, stable_update=True)
    except RuntimeError as err:
        if "valid initial parameters" not in str(err):
            raise
        raise InferenceError(_NO_INIT) from None
    losses = np.asarray(result.losses)
    _check_losses(losses)
    k_guide, k_det = jax.random.split(k_draw)
    # AutoDelta runs the model to fill its deterministic sites, so it needs the model's arguments
    post = dict(g.sample_posterior(k_guide, result.params, data, y=y, sample_shape=(num_samples,)))
    post = {k: v for k, v in post.items() if k != "y"}
    post.update(Predictive(model, posterior_samples=post, return_sites=_deterministic(model, data))(k_det, data))
    samples = {k: np.asarray(v)[None] for k, v in post.items()}
    dims = site_dims(model, data, y)
    return Fit(spec=spec, design=design, samples=samples, dims=dims, method="svi", options=opts,
               losses=losses)


_NO_INIT = (
    "the model's log density is NaN/inf at every initial point tried. Check the readouts for extreme values, "
    "that counts are raw counts for 'negbin' and log-normalised values for 'normal', and any custom prior."
)


def _deterministic(model, data) -> list[str]:
    from semimech.infer._sites import abstract_trace

    return [n for n, s in abstract_trace(model, data).items() if s[0] == "deterministic"]


def _check_losses(losses: np.ndarray) -> None:
    finite = np.isfinite(losses)
    if not finite.any() or not finite[-max(1, len(losses) // 10):].any():
        first = int(np.argmin(finite)) if not finite.all() else len(losses)
        raise InferenceError(
            f"SVI loss became NaN/inf at step {first} and stayed so. Try a smaller learning_rate (e.g. 0.005), "
            "check that readouts are on the scale the likelihood expects (raw counts for 'negbin', log-normalised "
            "for 'normal'), or use guide='map' to find a starting point."
        )


def fit_nuts(spec: ModelSpec, design: Design, *, rng_key, num_warmup: int = 500, num_samples: int = 500,
             num_chains: int = 2, target_accept_prob: float = 0.85, max_tree_depth: int = 8,
             chain_method: str = "sequential", progress_bar: bool = True, **options) -> Fit:
    """Fit by the No-U-Turn sampler (NumPyro NUTS).

    Chains run ``"sequential"`` (default) or ``"vectorized"``; divergences are counted in
    :meth:`Fit.diagnostics`.
    """
    model, data, y, opts = _prepare(spec, design, options)
    kernel = NUTS(model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                  init_strategy=init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
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
