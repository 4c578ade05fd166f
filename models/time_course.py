"""Semi-mechanistic time-course model: a production/decay network observed at sample times.

``dx/dt = alpha * sigmoid(W x + b + M u_c) - gamma * x`` (:func:`semimech.dynamics.production_decay_field`
with the condition's covariates ``u_c`` — stimulus/medium and perturbation indicators — as the
medium term), integrated from each condition's initial state and observed with Gaussian noise
at every sample's measurement time (FRAMEWORK.md sections 1-2).

Initial state (``initial=``):

- ``"steady"`` (non-differentiating): every condition starts at the fixed point of the
  control's dynamics, solved inside the model (Newton with implicit gradients; a failed solve
  is a rejected proposal);
- ``"observed"``: each condition's measured time-0 state (the design's ``x0``);
- ``"latent"`` (differentiating, pre-cue state not measured): one shared initial state.

Fitted by SVI or NUTS (:func:`fit_time_course`); a failed solve (fixed point or trajectory) is a
``-inf`` factor: a skipped SVI step or a rejected NUTS proposal, counted in
:meth:`TimeCourseFit.diagnostics`.

Time-matched controls are part of the data (the control is a condition with its own
trajectory); :func:`semimech.timecourse.time_course_design` refuses a differentiating design
without them. ``onset="latent"`` learns a per-perturbation delay (in-vivo delivery): the
perturbation switches on at ``onset_c`` and the state before it is the control fixed point, so
it needs a non-differentiating design.

Sample sites
------------
W : (regulators, genes)
    Regulation inside the sigmoid (1/state unit); ``W[j, i]``: effect of ``x_j`` on ``x_i``'s production.
b : (genes,)
    Basal activity (dimensionless).
alpha : (genes,)
    Maximal production (state units/h).
gamma : (genes,)
    Decay rate (1/h).
M : (covariates, genes)
    ``M[k, i]``: effect of covariate ``k`` on ``x_i``'s production (inside the sigmoid).
x0 : (genes,)
    Shared initial state (``initial="latent"``).
onset_z : (perturbations,)
    Standardised onset; ``onset = onset_scale * softplus(onset_z)`` h, 0 for the control (``onset="latent"``).
steady_ok, solve_ok : factors
    ``-inf`` when the initial fixed point or a trajectory failed to solve.
noise_sd : (genes,)
    Measurement sd (state units).
mean : (cells, genes), deterministic
    Predicted state of each sample.
y : (cells, genes), observed (NaN entries masked).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Predictive, autoguide, init_to_median

from semimech._rng import as_key
from semimech.dynamics import ProductionDecayParams, production_decay_field, steady_state
from semimech.errors import DesignError, InferenceError
from semimech.infer import _args
from semimech.infer._elbo import OrderedTraceELBO
from semimech.models._ode_inference import (
    check_prediction_design,
    diagnostics,
    ode_settings,
    report_solve,
    require_time_course_design,
    run_nuts,
    solve_counter,
    trained_shape,
    wanted_draws,
)
from semimech.timecourse import TimeCourseDesign, solve_conditions

__all__ = ["TimeCourseFit", "fit_time_course", "make_svi", "model", "predict_time_course"]


def model(data, *, y=None, initial: str = "steady", onset: str = "known", onset_scale: float = 1.0,
          max_steps: int = 512, on_solve=None):
    """The time-course model; see the module docstring for its sites.

    ``on_solve`` (optional host function) receives each evaluation's solve status (fixed point
    and trajectories; :func:`models._ode_inference.solve_counter`).
    """
    n = data["n_readouts"]
    U = jnp.asarray(data["covariates"])
    C, k = U.shape
    genes = numpyro.plate("genes", n, dim=-1)
    with numpyro.plate("regulators", n, dim=-2), genes:
        W = numpyro.sample("W", dist.Normal(0.0, 1.0))
    with numpyro.plate("covariates", k, dim=-2), genes:
        M = numpyro.sample("M", dist.Normal(0.0, 2.0))
    with genes:
        b = numpyro.sample("b", dist.Normal(0.0, 2.0))
        alpha = numpyro.sample("alpha", dist.LogNormal(0.0, 1.0))
        gamma = numpyro.sample("gamma", dist.LogNormal(0.0, 1.0))
        noise = numpyro.sample("noise_sd", dist.HalfNormal(0.5))
    params = ProductionDecayParams(W=W.T, b=b, alpha=alpha, gamma=gamma, M=M.T)
    if initial == "steady":
        guess = jnp.asarray(data["baseline_x"]).mean(0) if data["baseline_x"].shape[0] else jnp.ones(n)
        ss = steady_state(production_decay_field, params, media=U[0], x0=guess, fallback=False)
        numpyro.factor("steady_ok", jnp.where(ss.ok, 0.0, -jnp.inf))
        x0 = jnp.broadcast_to(jnp.where(ss.ok, ss.x, guess), (C, n))
        steady_ok = ss.ok
    else:
        steady_ok = jnp.asarray(True)
    if initial == "latent":
        with genes:
            x0 = jnp.broadcast_to(numpyro.sample("x0", dist.Normal(0.0, 3.0)), (C, n))
    elif initial == "observed":
        x0 = jnp.asarray(data["x0"])
    if onset == "latent":
        with numpyro.plate("perturbations", C, dim=-1):
            z = numpyro.sample("onset_z", dist.Normal(0.0, 1.0))
        on = (onset_scale * jax.nn.softplus(z)).at[0].set(0.0)
        numpyro.deterministic("onset", on)
    else:
        on = jnp.asarray(data["onset"])
    xs, ok = solve_conditions(production_decay_field, params, x0=x0, covariates=U, times=data["times"], onset=on,
                              max_steps=max_steps)
    numpyro.factor("solve_ok", jnp.where(jnp.all(ok), 0.0, -jnp.inf))
    report_solve(on_solve, jnp.all(ok) & steady_ok)
    mu = xs[jnp.asarray(data["condition_index"]), jnp.asarray(data["time_index"])]
    mask = jnp.asarray(data["mask"]) if data.get("mask") is not None else jnp.ones(mu.shape, bool)
    with numpyro.plate("cells", data["n_obs"], dim=-2), genes:
        numpyro.deterministic("mean", mu)
        numpyro.sample("y", dist.Normal(mu, noise).mask(mask), obs=None if y is None else jnp.where(mask, y, 0.0))


@dataclasses.dataclass(frozen=True, eq=False)
class TimeCourseFit:
    """Posterior draws of :func:`model` (mean-field SVI or NUTS).

    ``n_rejected`` counts skipped SVI steps (non-finite loss, e.g. a failed solve) or NUTS
    divergent transitions (after warm-up; a failed solve is an infinite energy error);
    :meth:`diagnostics` adds the exact count of log-density evaluations whose solve failed.
    ``trained``: ``(readouts, covariates)`` of the training design, which ``predict`` checks its design
    against (``None``: only the design's type is checked).
    """

    samples: dict
    losses: np.ndarray
    n_rejected: int
    options: dict
    method: str = "svi"
    stats: dict = dataclasses.field(default_factory=dict)
    trained: tuple | None = None  # (readouts, covariates) of the training design, checked by predict

    def diagnostics(self) -> dict:
        """``nan_steps`` (SVI) or ``divergences`` (NUTS), ``failed_solves``
        out of ``density_evaluations``."""
        return dict(self.stats)


def _check(design: TimeCourseDesign, initial: str, onset: str) -> None:
    if initial not in ("steady", "observed", "latent"):
        raise DesignError(f"initial must be 'steady', 'observed' or 'latent'; got {initial!r}.")
    if initial == "steady" and design.differentiating:
        raise DesignError("initial='steady' assumes controls sit at a fixed point, which a differentiating design "
                          "denies: use initial='latent' (or 'observed' with time-0 samples).")
    if initial == "observed" and design.x0 is None:
        raise DesignError("initial='observed' needs time-0 samples; use initial='latent'.")
    if onset not in ("known", "latent"):
        raise DesignError(f"onset must be 'known' or 'latent'; got {onset!r}.")
    if design.differentiating and np.any(design.onset > 0):
        raise DesignError("a perturbation after the cue (onset > 0) in a differentiating design needs two integration "
                          "segments (control dynamics, then perturbed); build it with semimech.protocol.schedule. "
                          "This model supports onsets only where the pre-onset state is a fixed point.")
    if onset == "latent" and design.differentiating:
        raise DesignError("a latent onset needs the pre-onset state to be a fixed point: not for a differentiating design.")


def _setup(design, *, initial, onset, onset_scale, num_steps, learning_rate, max_steps, on_solve=None):
    require_time_course_design(design, "the time_course model")
    if design.y is None:
        raise DesignError("cannot fit a prediction design (y is None).")
    _check(design, initial, onset)
    opts = dict(initial=initial, onset=onset, onset_scale=onset_scale, max_steps=max_steps)
    data = design.model_data()
    y = jnp.asarray(np.where(data["mask"], design.y, 0.0), jnp.float32)
    bound = lambda data, y=None: model(data, y=y, on_solve=on_solve, **opts)  # noqa: E731
    guide = autoguide.AutoNormal(bound, init_loc_fn=init_to_median(num_samples=15), init_scale=0.05)
    sched = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1), alpha=0.05)
    svi = SVI(bound, guide, optax.chain(optax.clip_by_global_norm(10.0), optax.adam(sched)), OrderedTraceELBO())
    return svi, guide, data, y, opts


def make_svi(design: TimeCourseDesign, *, initial: str = "steady", onset: str = "known", onset_scale: float = 1.0,
             num_steps: int = 1000, learning_rate: float = 1e-2, max_steps: int = 512, on_solve=None):
    """The ``(svi, data, y)`` that :func:`fit_time_course` runs, for timing a step.

    The fit also passes a failed-solve counter as ``on_solve``
    (:func:`models._ode_inference.solve_counter`). Step with ``svi.stable_update(state, data, y=y)``
    after ``svi.init(key, data, y=y)``.
    """
    svi, _, data, y, _ = _setup(design, initial=initial, onset=onset, onset_scale=onset_scale, num_steps=num_steps,
                                learning_rate=learning_rate, max_steps=max_steps, on_solve=on_solve)
    return svi, data, y


def fit_time_course(design: TimeCourseDesign, *, rng_key, initial: str = "steady", onset: str = "known",
                    onset_scale: float = 1.0, method: str = "svi", num_steps: int = 1000, learning_rate: float = 1e-2,
                    num_samples: int = 200, num_warmup: int = 200, max_steps: int = 512) -> TimeCourseFit:
    """Fit :func:`model` by SVI (AutoNormal) or NUTS; failed solves are rejected and counted, never raised.

    ``num_steps``/``learning_rate`` are SVI's, ``num_warmup`` NUTS'; ``num_samples`` draws either way.
    """
    if method not in ("svi", "nuts"):
        raise DesignError(f"method must be 'svi' or 'nuts'; got {method!r}.")
    num_steps, learning_rate, num_samples, num_warmup, max_steps = ode_settings(
        num_steps=num_steps, learning_rate=learning_rate, num_samples=num_samples, num_warmup=num_warmup,
        max_steps=max_steps)
    onset_scale = _args.number("onset_scale", onset_scale, error=DesignError)
    record, counts = solve_counter()
    svi, guide, data, y, opts = _setup(design, initial=initial, onset=onset, onset_scale=onset_scale,
                                       num_steps=num_steps, learning_rate=learning_rate, max_steps=max_steps,
                                       on_solve=record)
    k_fit, k_draw = jax.random.split(as_key(rng_key))
    if method == "nuts":
        try:
            post, nuts = run_nuts(svi.model, rng_key=k_fit, init_strategy=init_to_median(num_samples=15), data=data,
                                  y=y, num_warmup=num_warmup, num_samples=num_samples)
        except RuntimeError as err:
            raise InferenceError(f"no valid initial parameters (every initial solve failed): {err}") from None
        samples = {k: np.asarray(v) for k, v in post.items() if k not in ("mean", "onset")}
        return TimeCourseFit(samples=samples, losses=np.zeros(0), options=opts, method="nuts",
                             trained=trained_shape(design),
                             n_rejected=nuts["divergences"],
                             stats=diagnostics("nuts", stats=nuts, counts=counts, draws=num_samples))
    try:
        res = svi.run(k_fit, num_steps, data, y=y, progress_bar=False, stable_update=True)
    except RuntimeError as err:
        raise InferenceError(f"no valid initial parameters (every initial solve failed): {err}") from None
    losses = np.asarray(res.losses)
    if not np.isfinite(losses).any():
        raise InferenceError("every SVI step failed (ODE solve or non-finite loss); try a smaller learning_rate "
                             "or a larger max_steps.")
    post = guide.sample_posterior(k_draw, res.params, sample_shape=(num_samples,))
    samples = {k: np.asarray(v) for k, v in post.items()}
    stats = diagnostics("svi", losses=losses, counts=counts)
    return TimeCourseFit(samples=samples, losses=losses, n_rejected=stats["nan_steps"], options=opts, stats=stats,
                         trained=trained_shape(design))


def predict_time_course(fit: TimeCourseFit, design: TimeCourseDesign, *, rng_key, num_draws: int | None = None):
    """Draws of each sample's predicted state ``(draws, samples, genes)`` for ``design``'s samples."""
    check_prediction_design(design, fit.trained, "this time_course fit")
    num_draws = wanted_draws(num_draws, len(next(iter(fit.samples.values()))))
    if fit.options["onset"] == "latent" and fit.samples["onset_z"].shape[-1] != len(design.conditions):
        raise DesignError("a fit with latent onsets predicts only the training design's conditions.")
    post = {k: v[:num_draws] for k, v in fit.samples.items()}
    bound = lambda data, y=None: model(data, y=y, **fit.options)  # noqa: E731
    out = Predictive(bound, posterior_samples=post, return_sites=["mean"])(as_key(rng_key), design.model_data())
    return np.asarray(out["mean"])
