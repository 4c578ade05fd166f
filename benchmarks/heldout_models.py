"""Model configurations of ``benchmarks/heldout.py``: NAME -> function(fold, *, seed, budget) -> Predicted.

A configuration is a model *and* how it is fitted ("additive/default" is what a user gets from
``sm.fit`` with no options: NUTS or SVI chosen from the design; "additive/svi" is ``sm.fit_svi``'s
default; "additive/map", "additive/nuts", ... name the alternatives; "+noise": with the
measurement-error model a task provides in ``fold.meta["noise"]``).
It returns predictive draws **for an observation** of each held-out condition (the mean of
``fold.n_obs`` new observations: ``predict(..., num_cells=...)["observed_mean"]``), never for the
population mean, and the seconds spent fitting. It must not anchor its predictions to observed
controls unless the model itself does (a configuration that does says so in its name).

Add one (no edit of ``heldout.py`` needed)::

    @register_model("my_model/svi", tasks=None)          # None: every task; or a tuple of task names
    def my_model(fold, *, seed, budget):
        t0 = time.perf_counter()
        fit = ...                                        # fit on fold.train (or build from fold.frame)
        seconds = time.perf_counter() - t0
        return predict_labels(fit, fold, seed=seed, seconds=seconds)   # or Predicted(observed=..., ...)

Raise :class:`NotApplicable` (with the reason) when the configuration cannot predict a fold
(e.g. an unseen target for the additive model); the reason is reported, never hidden.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

import semimech as sm
from semimech.errors import PredictionError


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work a fit may do (``quick``: smoke-run sizes)."""

    num_steps: int = 3000
    num_samples: int = 400
    num_warmup: int = 500
    quick: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class Predicted:
    """Predictive draws for an observation of each held-out condition of a fold.

    ``observed``: ``(draws, conditions, readouts)`` in the fold's condition and readout order;
    ``mean``: optional draws of the population mean (its posterior mean is the point
    prediction; default the mean of ``observed``); ``seconds``: fit time; ``info``: anything
    worth reporting (guide, diagnostics).
    """

    observed: np.ndarray
    seconds: float
    mean: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def point(self) -> np.ndarray:
        return (self.mean if self.mean is not None else self.observed).mean(0)


class NotApplicable(Exception):
    """This configuration cannot predict this fold (the message says why)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    run: Callable[..., Predicted]
    tasks: tuple[str, ...] | None
    description: str


MODELS: dict[str, ModelConfig] = {}


def register_model(name: str, *, tasks: tuple[str, ...] | None = None):
    """Decorator registering ``run(fold, *, seed, budget) -> Predicted`` as configuration ``name``."""

    def wrap(fn):
        if name in MODELS:
            raise ValueError(f"model configuration {name!r} is already registered.")
        MODELS[name] = ModelConfig(name, fn, tasks, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        return fn

    return wrap


def predict_labels(fit, fold, *, seed: int, seconds: float, info: dict | None = None) -> Predicted:
    """Predict a label-design fold with :func:`semimech.predict`, context by context (``batch=``)."""
    n_draw = None
    obs = mean = None
    for ctx in dict.fromkeys(fold.contexts):
        idx = [i for i, c in enumerate(fold.contexts) if c == ctx]
        labels = [fold.labels[i] for i in idx]
        try:
            p = sm.predict(fit, labels, rng_key=seed + 1000, num_cells=fold.n_obs[idx], batch=ctx,
                           steady_state_draws=0)
        except PredictionError as err:
            raise NotApplicable(str(err).splitlines()[0]) from None
        cols = [p.genes.index(g) for g in fold.readouts]
        o, m = p.draws["observed_mean"][:, :, cols], p.draws["mean"][:, :, cols]
        if obs is None:
            n_draw = o.shape[0]
            obs = np.empty((n_draw, len(fold.labels), len(fold.readouts)))
            mean = np.empty_like(obs)
        obs[:, idx], mean[:, idx] = o, m
    return Predicted(observed=obs, mean=mean, seconds=seconds, info=info or {})


def svi_config(model: str, *, guide: str | None = None, **options) -> Callable[..., Predicted]:
    """A configuration fitting a registered model by ``sm.fit_svi`` (``guide=None``: its default)."""

    def run(fold, *, seed, budget):
        from semimech.models import REGISTRY

        kw = {} if guide is None else {"guide": guide}
        t0 = time.perf_counter()
        fit = sm.fit_svi(REGISTRY[model], fold.train, rng_key=seed, num_steps=budget.num_steps,
                         num_samples=budget.num_samples, progress_bar=False, **kw, **options)
        seconds = time.perf_counter() - t0
        return predict_labels(fit, fold, seed=seed, seconds=seconds, info={"method": "svi", "guide": guide or "default"})

    run.__doc__ = f"{model} fitted by sm.fit_svi ({'its default guide' if guide is None else 'guide=' + guide})."
    return run


def default_config(model: str, *, noise: bool = False, **options) -> Callable[..., Predicted]:
    """A configuration fitting a registered model by ``sm.fit``, the default (NUTS or SVI chosen from the design).

    ``noise=True``: with the measurement error the task provides (``fold.meta["noise"]``, e.g. a
    prior from technical replicates); not applicable to tasks without one. ``options``: model options.
    """

    def run(fold, *, seed, budget):
        from semimech.models import REGISTRY

        train = fold.train
        if noise:
            if "noise" not in fold.meta:
                raise NotApplicable("the task provides no measurement-error model")
            train = train.with_noise(fold.meta["noise"])
        t0 = time.perf_counter()
        fit = sm.fit(REGISTRY[model], train, rng_key=seed, num_steps=budget.num_steps, num_warmup=budget.num_warmup,
                     num_samples=budget.num_samples // 2 if sm.choose_method(REGISTRY[model], train, **options)[0] == "nuts"
                     else budget.num_samples, progress_bar=False, **options)
        seconds = time.perf_counter() - t0
        info = {"method": fit.method}
        if fit.method == "nuts":
            info["divergences"] = int(np.asarray(fit.sample_stats["diverging"]).sum())
        return predict_labels(fit, fold, seed=seed, seconds=seconds, info=info)

    run.__doc__ = (f"{model} fitted by sm.fit (the default: NUTS or SVI from the design)"
                   f"{' + task noise model' if noise else ''}{f' with {options}' if options else ''}.")
    return run


def nuts_config(model: str, **options) -> Callable[..., Predicted]:
    """A configuration fitting a registered model by ``sm.fit_nuts`` (2 chains)."""

    def run(fold, *, seed, budget):
        from semimech.models import REGISTRY

        t0 = time.perf_counter()
        fit = sm.fit_nuts(REGISTRY[model], fold.train, rng_key=seed, num_warmup=budget.num_warmup,
                          num_samples=max(budget.num_samples // 2, 50), num_chains=2, progress_bar=False, **options)
        seconds = time.perf_counter() - t0
        div = int(np.asarray(fit.sample_stats["diverging"]).sum())
        return predict_labels(fit, fold, seed=seed, seconds=seconds, info={"method": "nuts", "divergences": div})

    run.__doc__ = f"{model} fitted by sm.fit_nuts (2 chains)."
    return run


for _name, _fn in {
    "additive/default": default_config("additive"),
    "additive/default+noise": default_config("additive", noise=True),
    "additive/svi": svi_config("additive"),
    "additive/map": svi_config("additive", guide="map"),
    "additive/nuts": nuts_config("additive"),
    "linear_steady_state/default": default_config("linear_steady_state"),
    "production_decay/default": default_config("production_decay"),
    "latent_programs/default": default_config("latent_programs"),
    # the steady-state models' residual before session 17: a fresh misfit per condition (``residual=True``)
    "linear_steady_state/condition-residual": default_config("linear_steady_state", residual=True),
    "production_decay/condition-residual": default_config("production_decay", residual=True),
    "latent_programs/condition-residual": default_config("latent_programs", residual=True),
    # the population misfit's deviations in either geometry, given explicitly; since session 19 an SVI fit settles
    # the default ("auto") to the centred one, so */centred repeats */default there and */noncentred is the old default
    "linear_steady_state/centred": default_config("linear_steady_state", effect_deviation="centred"),
    "production_decay/centred": default_config("production_decay", effect_deviation="centred"),
    "linear_steady_state/noncentred": default_config("linear_steady_state", effect_deviation="noncentred"),
    "production_decay/noncentred": default_config("production_decay", effect_deviation="noncentred"),
}.items():
    register_model(_name)(_fn)

# signalling_network configurations (PKN per task) live in heldout_signalling.py
import heldout_signalling  # noqa: E402,F401
# factor-design configurations (stimulus x inhibitor x cell line) live in heldout_factorial.py
import heldout_factorial  # noqa: E402,F401
# effect-population tasks and configurations (issue 13) live in heldout_population.py
import heldout_population  # noqa: E402,F401
# one fit across cell lines (contexts), unseen lines from the population, live in heldout_contexts.py
import heldout_contexts  # noqa: E402,F401
