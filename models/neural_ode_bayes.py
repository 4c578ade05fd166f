"""The neural ODE of :mod:`models.neural_ode` as a Bayesian network in NumPyro.

The field's weights get a Gaussian prior (one flat site, unravelled into the Equinox module);
the steady-state loss becomes a pseudo-observation ``0 ~ Normal(f(x_b; u_b), tau)`` at every
baseline state. With the point estimate's loss ``mean NLL + lambda * mean_b ||f_b||^2`` over
``N`` observed entries and ``B`` baseline states, the same weighting is
``tau = sqrt(B / (2 lambda N))`` (:func:`tau_from_weight`).

A failed ODE solve adds a ``-inf`` factor (``solve_ok``): SVI skips that step
(``stable_update``) and NUTS rejects the proposal (a divergence); neither raises. The fit counts
skipped steps / divergences and, exactly, the log-density evaluations whose solve failed
(:meth:`BayesNeuralODEFit.diagnostics`).

Sample sites
------------
field_params : (params,)
    Flattened MLP weights and biases (dimensionless; the field is in state units per h).
noise_sd : (genes,)
    Measurement sd per readout (state units).
x0 : (genes,)
    Shared initial state, only with ``initial="latent"``.
solve_ok : factor
    0 when every condition's trajectory solved, ``-inf`` otherwise.
mean : (cells, genes), deterministic
    Predicted state of each sample.
y : (cells, genes), observed
    Samples (NaN entries are masked out).
steady_state : (baseline, genes), observed zeros
    The steady-state pseudo-observation, only when ``steady_state_tau`` is given.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer import SVI, autoguide, init_to_value

from semimech._rng import as_key
from semimech.errors import DesignError, InferenceError
from semimech.infer import _args
from semimech.infer._elbo import OrderedTraceELBO
from semimech.models._ode_inference import (
    check_prediction_design,
    diagnostics,
    ode_settings,
    report_solve,
    run_nuts,
    solve_counter,
    trained_shape,
    wanted_draws,
)
from semimech.models.neural_ode import _check, field_fn, init_params, predicted_samples
from semimech.timecourse import TimeCourseDesign

__all__ = ["BayesNeuralODEFit", "fit_neural_ode_bayes", "make_svi", "model", "predict_neural_ode_bayes", "tau_from_weight"]


def tau_from_weight(weight: float, *, n_entries: int, n_baseline: int) -> float:
    """The pseudo-observation scale equivalent to ``steady_state_weight`` (see module docstring)."""
    if weight <= 0:
        raise DesignError("a steady_state_weight of 0 has no pseudo-observation (tau = inf): pass steady_state_tau=None.")
    return float(np.sqrt(n_baseline / (2.0 * weight * n_entries)))


def model(data, *, y=None, template, field: str = "free", prior_scale: float = 1.0, steady_state_tau=None,
          initial: str = "observed", max_steps: int = 256, on_solve=None):
    """NumPyro neural ODE; ``template`` is the parameter pytree of :func:`models.neural_ode.init_params`.

    ``on_solve`` (optional host function) receives each evaluation's solve status
    (:func:`models._ode_inference.solve_counter`).
    """
    fn = field_fn(field)
    arrays, static = eqx.partition(template["field"], eqx.is_inexact_array)
    flat0, unravel = ravel_pytree(arrays)
    w = numpyro.sample("field_params", dist.Normal(jnp.zeros_like(flat0), prior_scale).to_event(1))
    params = {"field": eqx.combine(unravel(w), static)}
    n = data["n_readouts"]
    genes = numpyro.plate("genes", n, dim=-1)
    with genes:
        sigma = numpyro.sample("noise_sd", dist.HalfNormal(1.0))
        if initial == "latent":
            params["x0"] = numpyro.sample("x0", dist.Normal(jnp.asarray(template["x0"]), 2.0))
    mu, ok = predicted_samples(fn, params, data, initial=initial, onset="known", max_steps=max_steps)
    numpyro.factor("solve_ok", jnp.where(jnp.all(ok), 0.0, -jnp.inf))
    report_solve(on_solve, ok)
    mask = jnp.asarray(data["mask"]) if data.get("mask") is not None else jnp.ones(mu.shape, bool)
    with numpyro.plate("cells", data["n_obs"], dim=-2), genes:
        numpyro.deterministic("mean", mu)
        obs = None if y is None else jnp.where(mask, y, 0.0)
        numpyro.sample("y", dist.Normal(mu, sigma).mask(mask), obs=obs)
    bx = jnp.asarray(data["baseline_x"])
    if steady_state_tau is not None and bx.shape[0] > 0:
        f = jax.vmap(lambda x, u: fn(x, params["field"], media=u))(bx, jnp.asarray(data["baseline_covariates"]))
        with numpyro.plate("baseline", bx.shape[0], dim=-2), genes:
            numpyro.sample("steady_state", dist.Normal(f, steady_state_tau), obs=jnp.zeros_like(f))


@dataclasses.dataclass(frozen=True, eq=False)
class BayesNeuralODEFit:
    """Posterior draws of a Bayesian neural ODE.

    Attributes
    ----------
    samples
        Draws by site (``field_params`` ``(draws, params)``, ``noise_sd``, ``x0``).
    template
        The parameter pytree the flat weights unravel into.
    method
        ``"svi"`` or ``"nuts"``.
    n_rejected
        SVI steps skipped (non-finite loss, e.g. a failed solve) or NUTS divergent transitions
        after warm-up (a failed solve makes the proposal's density ``-inf``).
    losses
        SVI losses (empty for NUTS).
    options
        Model options (``field``, ``steady_state_tau``, ``initial``, ...).
    stats
        :meth:`diagnostics`' content.
    trained
        ``(readouts, covariates)`` of the training design, which ``predict`` checks its design against
        (``None``: only the design's type is checked).
    """

    samples: dict
    template: Any
    method: str
    n_rejected: int
    losses: np.ndarray
    options: dict
    stats: dict = dataclasses.field(default_factory=dict)
    trained: tuple | None = None  # (readouts, covariates) of the training design, checked by predict

    def diagnostics(self) -> dict:
        """Skipped SVI steps (``nan_steps``) or NUTS ``divergences``, and
        ``failed_solves`` out of ``density_evaluations`` (exact; initialisation included)."""
        return dict(self.stats)


def fit_neural_ode_bayes(
    design: TimeCourseDesign,
    *,
    rng_key,
    method: str = "svi",
    steady_state_weight: float = 0.0,
    steady_state_tau: float | None = None,
    field: str = "free",
    width: int = 16,
    depth: int = 1,
    initial: str = "observed",
    prior_scale: float = 1.0,
    num_steps: int = 1000,
    learning_rate: float = 1e-2,
    num_warmup: int = 200,
    num_samples: int = 200,
    max_steps: int = 256,
) -> BayesNeuralODEFit:
    """Fit the Bayesian neural ODE by SVI (mean-field normal guide) or NUTS.

    ``steady_state_weight`` (the point estimate's lambda) is converted with
    :func:`tau_from_weight` unless ``steady_state_tau`` is given; both absent (weight 0) is the
    vanilla model. Weights are initialised at a random Equinox initialisation (seeded by
    ``rng_key``) rather than at the prior mean, where every unit is dead.
    """
    if method not in ("svi", "nuts"):
        raise DesignError(f"method must be 'svi' or 'nuts'; got {method!r}.")
    num_steps, learning_rate, num_samples, num_warmup, max_steps = ode_settings(
        num_steps=num_steps, learning_rate=learning_rate, num_samples=num_samples, num_warmup=num_warmup,
        max_steps=max_steps)
    steady_state_weight = _args.number("steady_state_weight", steady_state_weight, strict=False, error=DesignError)
    if steady_state_tau is not None:
        steady_state_tau = _args.number("steady_state_tau", steady_state_tau, error=DesignError)
    prior_scale = _args.number("prior_scale", prior_scale, error=DesignError)
    k_init, k_fit, k_draw = jax.random.split(as_key(rng_key), 3)
    record, counts = solve_counter()
    bound, values, data, y, template, opts = _setup(
        design, k_init, steady_state_weight=steady_state_weight, steady_state_tau=steady_state_tau, field=field,
        width=width, depth=depth, initial=initial, prior_scale=prior_scale, max_steps=max_steps, on_solve=record)
    if method == "svi":
        svi, guide = _svi(bound, values, num_steps=num_steps, learning_rate=learning_rate)
        try:
            res = svi.run(k_fit, num_steps, data, y=y, progress_bar=False, stable_update=True)
        except RuntimeError as err:
            _reraise(err)
        losses = np.asarray(res.losses)
        if not np.isfinite(losses).any():
            raise InferenceError("every SVI step failed (ODE solve or non-finite loss); try a smaller "
                                 "learning_rate, a larger max_steps, or rescale the readouts.")
        samples = guide.sample_posterior(k_draw, res.params, sample_shape=(num_samples,))
        stats = diagnostics("svi", losses=losses, counts=counts)
        n_rejected = stats["nan_steps"]
    else:
        try:
            samples, nuts = run_nuts(bound, rng_key=k_fit, init_strategy=init_to_value(values=values), data=data, y=y,
                                     num_warmup=num_warmup, num_samples=num_samples)
        except RuntimeError as err:
            _reraise(err)
        losses = np.zeros(0)
        stats = diagnostics("nuts", stats=nuts, counts=counts, draws=num_samples)
        n_rejected = nuts["divergences"]
    samples = {k: np.asarray(v) for k, v in samples.items() if k in ("field_params", "noise_sd", "x0")}
    return BayesNeuralODEFit(samples=samples, template=template, method=method, n_rejected=n_rejected,
                             trained=trained_shape(design),
                             losses=losses, options=opts, stats=stats)


def _setup(design, k_init, *, steady_state_weight, steady_state_tau, field, width, depth, initial, prior_scale,
           max_steps, on_solve=None):
    """The bound model, its initial values, data, masked readouts, weight template and options."""
    _check(design, initial, "known", field)
    template = init_params(design, rng_key=k_init, field=field, width=width, depth=depth, initial=initial)
    data = design.model_data()
    mask = data["mask"]
    if steady_state_tau is None and steady_state_weight > 0:
        steady_state_tau = tau_from_weight(steady_state_weight, n_entries=int(mask.sum()),
                                           n_baseline=int(design.baseline_x.shape[0]))
    opts = dict(field=field, prior_scale=prior_scale, steady_state_tau=steady_state_tau, initial=initial,
                max_steps=max_steps)
    y = jnp.asarray(np.where(mask, design.y, 0.0), jnp.float32)
    flat0, _ = ravel_pytree(eqx.filter(template["field"], eqx.is_inexact_array))
    values = {"field_params": flat0, "noise_sd": jnp.exp(template["log_sigma"])}
    if initial == "latent":
        values["x0"] = template["x0"]
    bound = lambda data, y=None: model(data, y=y, template=template, on_solve=on_solve, **opts)  # noqa: E731
    return bound, values, data, y, template, opts


def _svi(bound, values, *, num_steps, learning_rate):
    guide = autoguide.AutoNormal(bound, init_loc_fn=init_to_value(values=values), init_scale=0.01)
    sched = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1), alpha=0.05)
    return SVI(bound, guide, optax.chain(optax.clip_by_global_norm(10.0), optax.adam(sched)), OrderedTraceELBO()), guide


def make_svi(design: TimeCourseDesign, *, rng_key, steady_state_weight: float = 0.0,
             steady_state_tau: float | None = None, field: str = "free", width: int = 16, depth: int = 1,
             initial: str = "observed", prior_scale: float = 1.0, num_steps: int = 1000,
             learning_rate: float = 1e-2, max_steps: int = 256, on_solve=None):
    """The ``(svi, data, y)`` that :func:`fit_neural_ode_bayes` (``method="svi"``) runs, for timing a step.

    ``rng_key`` seeds the weight initialisation (the fit splits its key; pass the same options
    as the fit); the fit also passes a failed-solve counter as ``on_solve``
    (:func:`models._ode_inference.solve_counter`). Step with ``svi.stable_update(state, data, y=y)``
    after ``svi.init(key, data, y=y)``.
    """
    bound, values, data, y, _, _ = _setup(
        design, as_key(rng_key), steady_state_weight=steady_state_weight, steady_state_tau=steady_state_tau,
        field=field, width=width, depth=depth, initial=initial, prior_scale=prior_scale, max_steps=max_steps,
        on_solve=on_solve)
    return _svi(bound, values, num_steps=num_steps, learning_rate=learning_rate)[0], data, y


def _reraise(err):
    if "valid initial parameters" not in str(err):
        raise err
    raise InferenceError("the ODE solve failed at the initial parameters (every SVI step failed): try a larger "
                         "max_steps, a smaller learning_rate, or rescale the readouts.") from None


def draw_params(fit: BayesNeuralODEFit, i: int):
    """The parameter pytree of draw ``i``."""
    arrays, static = eqx.partition(fit.template["field"], eqx.is_inexact_array)
    _, unravel = ravel_pytree(arrays)
    params = {"field": eqx.combine(unravel(jnp.asarray(fit.samples["field_params"][i])), static)}
    if "x0" in fit.samples:
        params["x0"] = jnp.asarray(fit.samples["x0"][i])
    return params


def predict_neural_ode_bayes(fit: BayesNeuralODEFit, design: TimeCourseDesign, *, num_draws: int | None = None):
    """Draws of each sample's predicted state, ``(draws, samples, n)``, and ``ok`` per draw and condition."""
    check_prediction_design(design, fit.trained, "this Bayesian neural ODE")
    n = wanted_draws(num_draws, fit.samples["field_params"].shape[0])
    data = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in design.model_data().items()}
    fn = field_fn(fit.options["field"])
    arrays, static = eqx.partition(fit.template["field"], eqx.is_inexact_array)
    _, unravel = ravel_pytree(arrays)
    latent = "x0" in fit.samples

    @jax.jit
    def one(w, x0):
        params = {"field": eqx.combine(unravel(w), static)}
        if latent:
            params["x0"] = x0
        return predicted_samples(fn, params, data, initial=fit.options["initial"], onset="known",
                                 max_steps=fit.options["max_steps"])

    x0s = fit.samples["x0"][:n] if latent else np.zeros((n, design.n_readouts), np.float32)
    mus, oks = jax.lax.map(lambda a: one(*a), (jnp.asarray(fit.samples["field_params"][:n]), jnp.asarray(x0s)))
    return np.asarray(mus), np.asarray(oks)
