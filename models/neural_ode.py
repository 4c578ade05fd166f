"""Neural ODE fitted to perturbation time courses, with the paper's steady-state loss.

A neural vector field ``dx/dt = f_theta(x; u)`` (an Equinox MLP; ``u`` the condition's
covariates: stimulus/medium and perturbation indicators) is integrated from each condition's
initial state and fitted to the samples at their measurement times (FRAMEWORK.md section 5):

    L = mean Gaussian NLL of the samples + lambda * mean_b ||f_theta(x_b; u_b)||^2

where ``x_b`` are baseline states assumed to be fixed points under covariates ``u_b`` (the
design's ``baseline_x`` / ``baseline_covariates``). ``steady_state_weight = lambda = 0`` is the
"vanilla" neural ODE. Its Bayesian reading is a pseudo-observation ``0 ~ Normal(f(x_b; u_b),
tau)`` (:mod:`models.neural_ode_bayes`).

Fields: ``"free"`` is an unconstrained MLP ``f(x, u) = mlp([x, u])`` (the paper's setting: any
drift is possible); ``"production_decay"`` is :class:`semimech.dynamics.NeuralField`
(non-negative production, linear decay; needs ``x >= 0``).

Failed solves never crash the fit: the step is skipped (its update zeroed) and counted in
``NeuralODEFit.n_failed``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from semimech._rng import as_key
from semimech.dynamics import NeuralField, neural_field
from semimech.errors import DesignError, InferenceError
from semimech.infer import _args
from semimech.models._ode_inference import (
    check_prediction_design,
    ode_settings,
    require_time_course_design,
    trained_shape,
)
from semimech.timecourse import TimeCourseDesign, solve_conditions

__all__ = ["FreeField", "NeuralODEFit", "baseline_drift", "field_fn", "fit_neural_ode", "free_field", "init_params",
           "make_field", "make_optimizer", "make_step", "predict_neural_ode", "steady_state_penalty"]

FIELDS = ("free", "production_decay")


class FreeField(eqx.Module):
    """An unconstrained MLP vector field ``f(x, u) = scale * mlp([x, u])`` (1/h)."""

    mlp: eqx.nn.MLP
    n_media: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, n: int, *, n_media: int = 0, width: int = 16, depth: int = 1, scale: float = 1.0, rng_key):
        if n < 1 or n_media < 0 or width < 1 or depth < 0:
            raise DesignError(f"FreeField needs n >= 1, n_media >= 0, width >= 1, depth >= 0; got {n}, {n_media}, {width}, {depth}.")
        self.mlp = eqx.nn.MLP(n + n_media, n, width, depth, activation=jnp.tanh, key=as_key(rng_key))
        self.n_media = n_media
        self.scale = scale

    def __call__(self, x, *, media=None, intervention=None):
        # perturbations enter as covariates (media=u); the identity intervention passed by
        # the trajectory solvers is ignored
        inputs = x if not self.n_media else jnp.concatenate([x, jnp.asarray(media, x.dtype)])
        with jax.default_matmul_precision("highest"):
            return self.scale * self.mlp(inputs)


def free_field(x, params: FreeField, *, media=None, intervention=None):
    """:class:`FreeField` in the shared ``f(x, params, *, media, intervention)`` form."""
    return params(x, media=media, intervention=intervention)


def make_field(kind: str, n: int, n_covariates: int, *, width: int = 16, depth: int = 1, rng_key):
    """A randomly initialised field module of ``kind`` (``"free"`` or ``"production_decay"``)."""
    if kind == "free":
        return FreeField(n, n_media=n_covariates, width=width, depth=depth, rng_key=rng_key)
    if kind == "production_decay":
        return NeuralField(n, n_media=n_covariates, width=width, depth=depth, rng_key=rng_key)
    raise DesignError(f"field must be one of {FIELDS}; got {kind!r}.")


def field_fn(kind: str):
    """The vector-field function for a field ``kind``."""
    return free_field if kind == "free" else neural_field


def steady_state_penalty(fn, params, baseline_x, baseline_u):
    """``mean_b ||f(x_b; u_b)||^2`` (abundance^2/h^2); 0 for an empty baseline."""
    if baseline_x.shape[0] == 0:
        return jnp.zeros(())
    f = jax.vmap(lambda x, u: fn(x, params, media=u))(baseline_x, baseline_u)
    return jnp.mean(jnp.sum(f**2, axis=-1))


def baseline_drift(fn, params, baseline_x, baseline_u):
    """Per-baseline-state drift speed ``||f(x_b; u_b)||`` (abundance/h)."""
    f = jax.vmap(lambda x, u: fn(x, params, media=u))(jnp.asarray(baseline_x), jnp.asarray(baseline_u))
    return jnp.linalg.norm(f, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralODEFit:
    """A point estimate of a neural ODE.

    Attributes
    ----------
    params
        ``{"field": module, "log_sigma": (n,), "x0": (n,) or None, "onset_raw": (C,) or None}``.
    field
        Field kind (``"free"`` / ``"production_decay"``).
    losses
        Loss per step (``nan`` where a step was skipped).
    n_failed
        Steps skipped because a solve failed or the loss/gradient was not finite.
    options
        The fit's options (``steady_state_weight``, ``initial``, ``onset``, ...).
    trained
        ``(readouts, covariates)`` of the training design, which ``predict`` checks its design against
        (``None``: only the design's type is checked).
    """

    params: Any
    field: str
    losses: np.ndarray
    n_failed: int
    options: dict
    trained: tuple | None = None  # (readouts, covariates) of the training design, checked by predict

    @property
    def fn(self):
        return field_fn(self.field)

    def diagnostics(self) -> dict:
        """``steps``, ``nan_steps`` (skipped: a failed solve or a non-finite loss/gradient), ``final_loss``."""
        from semimech.models._ode_inference import diagnostics

        return diagnostics("adam", losses=self.losses)


def _initial_states(params, data, initial):
    C = data["covariates"].shape[0]
    if initial == "latent":
        return jnp.broadcast_to(params["x0"], (C, params["x0"].shape[0]))
    return jnp.asarray(data["x0"])


def _onsets(params, data, onset):
    if onset == "latent":
        on = jax.nn.softplus(params["onset_raw"])
        return on.at[0].set(0.0)  # the control has no perturbation
    return jnp.asarray(data["onset"])


def predicted_samples(fn, params, data, *, initial: str, onset: str, max_steps: int = 512):
    """Predicted state of every sample ``(samples, n)`` and per-condition ``ok``."""
    xs, ok = solve_conditions(fn, params["field"], x0=_initial_states(params, data, initial),
                              covariates=data["covariates"], times=data["times"],
                              onset=_onsets(params, data, onset), max_steps=max_steps)
    ci, ti = jnp.asarray(data["condition_index"]), jnp.asarray(data["time_index"])
    return xs[ci, ti], ok


def _loss(params, data, y, *, fn, weight, initial, onset, max_steps):
    mu, ok = predicted_samples(fn, params, data, initial=initial, onset=onset, max_steps=max_steps)
    sigma = jnp.exp(params["log_sigma"])
    mask = jnp.asarray(data["mask"])
    r = jnp.where(mask, (jnp.where(mask, y, 0.0) - mu) / sigma, 0.0)
    nll = jnp.sum(mask * (0.5 * r**2 + jnp.log(sigma) + 0.5 * jnp.log(2 * jnp.pi))) / jnp.sum(mask)
    pen = steady_state_penalty(fn, params["field"], data["baseline_x"], data["baseline_covariates"])
    used = jnp.unique(jnp.asarray(data["condition_index"]), size=ok.shape[0], fill_value=0)
    return nll + weight * pen, jnp.all(ok[used])


def _check(design: TimeCourseDesign, initial: str, onset: str, field: str) -> None:
    require_time_course_design(design, "the neural ODE")
    if design.y is None:
        raise DesignError("cannot fit a prediction design (y is None).")
    if initial not in ("observed", "latent"):
        raise DesignError(f"initial must be 'observed' or 'latent'; got {initial!r}.")
    if initial == "observed" and design.x0 is None:
        raise DesignError("initial='observed' needs time-0 samples (no initial state was measured): use initial='latent'.")
    if onset not in ("known", "latent"):
        raise DesignError(f"onset must be 'known' or 'latent'; got {onset!r}.")
    if onset == "latent" and design.differentiating:
        raise DesignError("a latent onset is a time shift only when the pre-onset state is a fixed point; "
                          "it is not supported for a differentiating design.")
    if field not in FIELDS:
        raise DesignError(f"field must be one of {FIELDS}; got {field!r}.")
    if design.differentiating and np.any(design.onset > 0):
        raise DesignError("a perturbation after the cue (onset > 0) in a differentiating design needs two integration "
                          "segments (control dynamics, then perturbed); build it with semimech.protocol.schedule. "
                          "This model supports onsets only where the pre-onset state is a fixed point.")
    if field == "production_decay" and np.nanmin(design.y) < 0:
        raise DesignError("field='production_decay' needs non-negative states; use field='free' for standardised data.")


def init_params(design: TimeCourseDesign, *, rng_key, field: str = "free", width: int = 16, depth: int = 1,
                initial: str = "observed", onset: str = "known"):
    """Initial parameter pytree of :func:`fit_neural_ode`."""
    y = design.y
    n, k = y.shape[1], design.covariates.shape[1]
    params = {"field": make_field(field, n, k, width=width, depth=depth, rng_key=rng_key),
              "log_sigma": jnp.log(jnp.full((n,), 0.5 * float(np.nanstd(y)) + 1e-3, jnp.float32))}
    if initial == "latent":
        first = design.time == design.time.min()
        rows = first & (design.condition_index == 0)
        params["x0"] = jnp.asarray(np.nanmean(y[rows] if rows.any() else y[first], 0), jnp.float32)
    if onset == "latent":
        params["onset_raw"] = jnp.full((len(design.conditions),), -2.0, jnp.float32)
    return params


_FIT_CACHE: dict = {}


def make_optimizer(num_steps: int, learning_rate: float):
    """Adam on a cosine-decayed rate (to 5%), gradients clipped at global norm 10."""
    schedule = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1), alpha=0.05)
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))


def make_step(static, opt, *, field: str, initial: str, onset: str, max_steps: int):
    """One optimisation step ``step((arrays, opt_state), data, y, weight) -> ((arrays, opt_state), (loss, good))``.

    ``static`` is the non-array part of the parameter pytree (``eqx.partition``). A step whose
    solve failed or whose loss/gradient is not finite leaves parameters and optimiser state
    unchanged and reports ``good=False`` (loss ``nan``). Pure; the fit scans it under ``jit``.
    """
    fn = field_fn(field)

    def step(carry, data, y, weight):
        a, s = carry

        def loss_of(a):
            return _loss(eqx.combine(a, static), data, y, fn=fn, weight=weight, initial=initial,
                         onset=onset, max_steps=max_steps)

        (loss, ok), g = jax.value_and_grad(loss_of, has_aux=True)(a)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(g)]))
        good = ok & jnp.isfinite(loss) & finite
        g = jax.tree.map(lambda x: jnp.where(good, x, 0.0), g)
        upd, s_new = opt.update(g, s, a)
        a_new = eqx.apply_updates(a, upd)
        keep = lambda new, old: jax.tree.map(lambda p, q: jnp.where(good, p, q), new, old)  # noqa: E731
        return (keep(a_new, a), keep(s_new, s)), (jnp.where(good, loss, jnp.nan), good)

    return step


def _compiled_fit(static, field, initial, onset, max_steps, num_steps, learning_rate):
    """One jitted optimisation loop per configuration, reused across seeds and weights."""
    key = (field, jax.tree.structure(static), initial, onset, max_steps, num_steps, learning_rate)
    if key in _FIT_CACHE:
        return _FIT_CACHE[key]
    opt = make_optimizer(num_steps, learning_rate)
    step = make_step(static, opt, field=field, initial=initial, onset=onset, max_steps=max_steps)

    @jax.jit
    def run(arrays, data, y, weight):
        (a, _), (losses, good) = jax.lax.scan(lambda c, _: step(c, data, y, weight), (arrays, opt.init(arrays)),
                                              None, length=num_steps)
        return a, losses, good

    _FIT_CACHE[key] = run
    return run


def fit_neural_ode(
    design: TimeCourseDesign,
    *,
    rng_key,
    steady_state_weight: float = 0.0,
    field: str = "free",
    width: int = 16,
    depth: int = 1,
    initial: str = "observed",
    onset: str = "known",
    num_steps: int = 1000,
    learning_rate: float = 1e-2,
    max_steps: int = 512,
) -> NeuralODEFit:
    """Point estimate (Adam on the NLL + steady-state term) of a neural ODE on a time-course design.

    Parameters
    ----------
    design
        Training :class:`~semimech.timecourse.TimeCourseDesign`.
    rng_key
        Seed of the weight initialisation.
    steady_state_weight
        lambda of ``lambda * mean_b ||f(x_b; u_b)||^2`` (0: the vanilla neural ODE).
    field, width, depth
        Field kind and MLP size.
    initial
        ``"observed"``: each condition starts at its measured time-0 state (or the control's);
        ``"latent"``: one learned initial state shared by all conditions (differentiating
        systems whose pre-cue state was not measured).
    onset
        ``"known"`` (the design's onsets) or ``"latent"`` (learned per perturbed condition;
        in-vivo delivery delays; non-differentiating designs only).
    num_steps, learning_rate
        Adam steps (cosine-decayed rate, gradients clipped at norm 10).
    max_steps
        ODE solver steps per solve; a solve that needs more fails (the step is skipped).
    """
    _check(design, initial, onset, field)
    num_steps, learning_rate, _, _, max_steps = ode_settings(num_steps=num_steps, learning_rate=learning_rate,
                                                             max_steps=max_steps, what="Adam steps")
    steady_state_weight = _args.number("steady_state_weight", steady_state_weight, strict=False, error=DesignError)
    params = init_params(design, rng_key=rng_key, field=field, width=width, depth=depth, initial=initial, onset=onset)
    data = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in design.model_data().items()}
    y = jnp.asarray(design.y, jnp.float32)
    arrays, static = eqx.partition(params, eqx.is_inexact_array)
    run = _compiled_fit(static, field, initial, onset, max_steps, num_steps, learning_rate)
    arrays, losses, good = run(arrays, data, y, jnp.float32(steady_state_weight))
    losses, good = np.asarray(losses), np.asarray(good)
    if not good.any():
        raise InferenceError("every optimisation step failed (ODE solve or non-finite loss); try a smaller "
                             "learning_rate, a larger max_steps, or rescale the readouts.")
    opts = dict(steady_state_weight=steady_state_weight, width=width, depth=depth, initial=initial, onset=onset,
                num_steps=num_steps, learning_rate=learning_rate, max_steps=max_steps)
    return NeuralODEFit(params=eqx.combine(arrays, static), field=field, losses=losses,
                        n_failed=int((~good).sum()), options=opts, trained=trained_shape(design))


def predict_neural_ode(fit: NeuralODEFit, design: TimeCourseDesign, *, max_steps: int | None = None):
    """Predicted state of each sample of ``design`` (``(samples, n)`` numpy) and per-condition ``ok``.

    ``design`` must share the training design's covariate encoding (same covariates per
    condition); with ``initial="observed"`` its ``x0`` supplies each condition's start.
    """
    check_prediction_design(design, fit.trained, "this neural ODE")
    if max_steps is not None:
        max_steps = _args.count("max_steps", max_steps, what="ODE solver steps per solve")
    if fit.options["initial"] == "observed" and design.x0 is None:
        raise DesignError("this fit starts from observed time-0 states; the design has none.")
    data = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in design.model_data().items()}
    params = fit.params
    if fit.options["onset"] == "latent" and params["onset_raw"].shape[0] != len(design.conditions):
        raise DesignError("a fit with latent onsets predicts only the training design's conditions.")
    mu, ok = _predict_jit(fit.field, params, data, fit.options["initial"], fit.options["onset"],
                          max_steps or fit.options["max_steps"])
    return np.asarray(mu), np.asarray(ok)


@eqx.filter_jit
def _predict_jit(field, params, data, initial, onset, max_steps):
    return predicted_samples(field_fn(field), params, data, initial=initial, onset=onset, max_steps=max_steps)
