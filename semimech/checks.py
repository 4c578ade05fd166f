"""Diagnostics of the steady-state assumption: does each condition sit at a unique, stable attractor?

Mechanistic steady-state models (``linear_steady_state``, ``production_decay``,
``latent_programs``) assume that every measured condition is a *stable* fixed point of the
learned dynamics and that each perturbation maps to a *unique* attractor (FRAMEWORK.md
section 4). These checks test that assumption on posterior (or prior) draws.

One definition, shared by :func:`semimech.predict` (``Prediction.steady_state``),
:func:`steady_state_check` and ``Fit.diagnostics()``: for a draw and a condition, the
*steady state* is the model's own solution (Newton from the control state, as in the model);
it is **converged** when that solve converges, **stable** when it converged and every
eigenvalue of the Jacobian there has a negative real part, and (multi-start checks only)
**unique** when the flow from every start ends at a stable attractor that is that same state.
A flow that leaves an unstable fixed point for some other attractor does not make the
model's state stable: the model predicted the unstable one.

A model supports the checks when its module defines ``system(draw) -> (field, params, x0,
log_scale)`` (the vector field, its parameters for one draw, the control state and the log
production scale of each condition, conditions x state) built from the sites named in its
``SYSTEM_SITES`` (default: ``W``, ``bias``, ``alpha``, ``control_state``, ``log_scale``).

Example
-------
>>> table, summary = sm.checks.steady_state_check(fit, ["KLF1+MAP2K6"], rng_key=0)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import sys
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpyro.infer import Predictive

from semimech._rng import as_key, host_rng
from semimech.dynamics import Intervention, attractors, spectral_abscissa, steady_states
from semimech.dynamics.steady_state import default_tolerances
from semimech.errors import InferenceError, SemimechError

__all__ = ["is_steady_state_model", "prior_steady_states", "solve_fractions", "steady_state_check",
           "steady_state_diagnostics"]

_SYSTEM_SITES = ("W", "bias", "alpha", "control_state", "log_scale", "loadings")


def is_steady_state_model(spec) -> bool:
    """Whether ``spec``'s model solves steady states that these checks apply to (its module defines ``system``)."""
    return callable(getattr(sys.modules.get(spec.model.__module__), "system", None))


def _system_fn(spec):
    module = sys.modules.get(spec.model.__module__)
    fn = getattr(module, "system", None)
    sites = getattr(module, "SYSTEM_SITES", _SYSTEM_SITES)
    if fn is None:
        raise SemimechError(
            f"model {spec.name!r} has no dynamics to check (its module defines no system(draw)); steady-state "
            "checks apply to mechanistic models such as 'linear_steady_state' or 'production_decay'."
        )
    return fn, sites


def prior_steady_states(spec, design, *, rng_key, num_draws: int = 20, min_fraction: float = 0.05,
                        **options) -> float:
    """Fraction of prior draws whose steady state converges for every condition of ``design``.

    Run it before fitting: a prior under which the steady state rarely exists makes every
    draw rejected and inference fail with an opaque message.

    Raises
    ------
    InferenceError
        When fewer than ``min_fraction`` of the draws solve every condition, with advice.
    """
    from semimech.infer.fit import resolved_options

    opts = resolved_options(spec, options, None, design=design)
    opts.setdefault("likelihood", "negbin" if design.is_counts else "normal")
    model = functools.partial(spec.model, **opts)
    out = Predictive(model, num_samples=num_draws, return_sites=["ok_fraction"])(as_key(rng_key), design.model_data())
    if "ok_fraction" not in out:
        raise SemimechError(f"model {spec.name!r} records no 'ok_fraction' site: it solves no steady state.")
    okf = np.asarray(out["ok_fraction"])
    frac = float(np.mean(okf >= 1.0))
    if frac < min_fraction:
        raise InferenceError(
            f"the steady state did not converge (or was unstable/singular) for {np.mean(okf < 1):.0%} of "
            f"{num_draws} prior draws (mean fraction of conditions solved {okf.mean():.2f}) of {spec.name!r}. "
            "Every such draw is rejected, so inference cannot start. Use a smaller prior scale for the network "
            "(w_scale=...), fallback=True (integrate where Newton fails), or fewer/less extreme conditions."
        )
    return frac


def _system_sites(fit, post: dict, data: dict, site_names, rng_key, reference: dict) -> dict[str, np.ndarray]:
    """The sites of the model's ``system`` for each draw of ``post``, by predict's compiled replay (one program per
    model and shapes; replayed eagerly, Predictive compiled a scan per call with its conditions baked in)."""
    from semimech.infer.predict import _replay_program

    model = functools.partial(fit.spec.model, **fit.options)
    out = _replay_program(model, data, list(site_names), reference=reference)(rng_key, post)
    return {k: np.asarray(v) for k, v in out.items()}


@functools.lru_cache(maxsize=32)
def _attractor_checker(system, num_starts: int, max_steps: int):
    """One draw's multi-start check of each condition's steady state, jitted once per model.

    Returns, per condition, ``(converged, stable, unique, num_attractors)``: the first two as in
    :func:`_solver`; ``unique`` when every start's flow ends at one stable attractor and that
    attractor is the model's steady state.
    """
    solve_draw = _solver(system)

    @jax.jit
    def check_draw(draw, key):
        field, params, x0, log_scale = system(draw)
        converged, stable, x = solve_draw(draw)
        tol = float(np.sqrt(default_tolerances(x.dtype)[0]))

        def one(ls, xs, k):
            a = attractors(field, params, rng_key=k, intervention=Intervention.scale(jnp.exp(ls)), x0=x0,
                           num_starts=num_starts, max_steps=max_steps)
            same = jnp.max(jnp.abs(a.states[0] - xs)) <= tol * (1 + jnp.max(jnp.abs(xs)))
            return a.unique & same, a.num_attractors

        keys = jax.random.split(key, log_scale.shape[0])
        unique, count = jax.vmap(one)(log_scale, x, keys)
        return converged, stable, unique & stable, count

    return check_draw


@functools.lru_cache(maxsize=32)
def _solver(system):
    """One draw's steady states as in the model (Newton from the control state) and their stability.

    Returns ``(converged, stable, x)`` per condition: the definition of this module's docstring,
    shared by every check. Jitted once per model.
    """

    @jax.jit
    def solve_draw(draw):
        field, params, x0, log_scale = system(draw)
        edits = Intervention.scale(jnp.exp(log_scale))
        ss = steady_states(field, params, interventions=edits, x0=x0, fallback=False)
        x = jnp.where(ss.ok[:, None], ss.x, x0)
        rate = jax.vmap(lambda x, e: spectral_abscissa(field, params, x, intervention=e))(x, edits)
        return ss.ok, ss.ok & jnp.isfinite(rate) & (rate < 0), x

    return solve_draw


def steady_state_check(fit, labels=None, *, rng_key, num_draws: int = 10, num_starts: int = 8,
                       max_steps: int = 4096) -> tuple[pd.DataFrame, float]:
    """Per condition: fraction of posterior draws with a stable, unique steady state.

    For ``num_draws`` posterior draws and every condition in ``labels`` (default: the training
    conditions; unseen labels are aligned as in :func:`semimech.predict`), the model's steady
    state is solved and checked for stability (as in ``predict(...).steady_state``), and the
    learned dynamics under that condition's edit are integrated from ``num_starts`` starts (the
    control state and random states in a box around it, :func:`semimech.dynamics.attractors`).

    Returns
    -------
    table
        One row per condition: ``converged`` and ``stable`` (fractions of draws whose steady
        state converged, and converged and is stable: the module's definition, the same as
        ``predict(...).steady_state``), ``unique`` (fraction where every start's flow ends at
        that same stable state), ``stable_unique`` (both; equal to ``unique``, which implies
        stability) and ``mean_attractors`` (distinct attractors found).
    summary
        Fraction of draws in which *every* condition has a stable, unique steady state.
    """
    from semimech.infer.predict import _align

    system, site_names = _system_fn(fit.spec)
    train = fit.design
    labels = list(train.perturbations if labels is None else labels)
    pdesign = train.with_perturbations(labels)
    key = as_key(rng_key)
    k_align, k_pred, k_sel, k_att = jax.random.split(key, 4)
    post = _align(fit, pdesign, k_align)
    total = next(iter(post.values())).shape[0]
    idx = np.sort(host_rng(k_sel).choice(total, min(num_draws, total), replace=False))
    post = {k: v[idx] for k, v in post.items()}
    data = pdesign.model_data()
    tdata = train.model_data()
    from semimech.infer.fit import DATA_SUMMARIES

    for k in DATA_SUMMARIES:  # the training design's data-centred constants
        if k in tdata:
            data[k] = tdata[k]
    sites = _system_sites(fit, post, data, site_names, k_pred, tdata)

    check_draw = _attractor_checker(system, num_starts, max_steps)
    converged, stable, unique, count = (np.array(a) for a in zip(*[
        check_draw({name: v[d] for name, v in sites.items()}, k)
        for d, k in zip(range(len(idx)), jax.random.split(k_att, len(idx)))]))
    table = pd.DataFrame({"perturbation": labels, "converged": converged.mean(0), "stable": stable.mean(0),
                          "unique": unique.mean(0), "stable_unique": (stable & unique).mean(0),
                          "mean_attractors": count.mean(0)})
    table.attrs["draws"] = len(idx)
    summary = float(np.mean(np.all(stable & unique, axis=1)))
    return table, summary


_DIAGNOSTICS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def steady_state_diagnostics(fit, *, rng_key=0, num_draws: int = 4, num_starts: int = 4,
                             max_steps: int = 4096) -> tuple[pd.DataFrame, float]:
    """:func:`steady_state_check` on the training conditions, cheap by default and cached per fit.

    What :meth:`semimech.Fit.diagnostics` reports for steady-state models: ``num_draws``
    posterior draws, ``num_starts`` starts per condition. The result is cached for the fit
    object (the fit stays immutable; the cache forgets it when the fit is deleted). For a
    firmer answer, call :func:`steady_state_check` with more draws and starts.
    """
    args = (np.asarray(jax.random.key_data(as_key(rng_key))).tobytes(), num_draws, num_starts, max_steps)
    cached = _DIAGNOSTICS.setdefault(fit, {})
    if args not in cached:
        cached[args] = steady_state_check(fit, rng_key=rng_key, num_draws=num_draws, num_starts=num_starts,
                                          max_steps=max_steps)
    table, summary = cached[args]
    return table.copy(), summary


def solve_fractions(fit, posterior: dict, data: dict, labels, *, rng_key, num_draws: int = 8,
                    reference: dict | None = None) -> pd.DataFrame:
    """Per condition, the fraction of posterior draws whose steady-state solve converged, and was stable.

    Used by :func:`semimech.predict`: ``posterior`` are its draws aligned to the prediction's
    labels and ``data`` its model data. For ``num_draws`` of them the dynamics of each
    condition (the model's ``system``) are solved as in the model, by Newton from the control
    state, and the Jacobian's eigenvalues at the solution are checked (an ``eig`` per condition
    and draw: for hundreds of genes, keep ``num_draws`` small). ``reference`` is the training design's model data
    (default: ``fit.design.model_data()``): the sites are replayed by :func:`semimech.predict`'s compiled program,
    whose arguments are the arrays of ``data`` that differ from it, so another set of conditions of the same shapes
    compiles nothing.

    Returns
    -------
    One row per label: ``converged`` (fraction of draws whose solve converged), ``stable``
    (converged and every eigenvalue has negative real part) and ``draws`` (draws checked).
    """
    system, site_names = _system_fn(fit.spec)
    key = as_key(rng_key)
    k_sel, k_pred = jax.random.split(key)
    total = next(iter(posterior.values())).shape[0]
    idx = np.sort(host_rng(k_sel).choice(total, min(num_draws, total), replace=False))
    post = {k: v[idx] for k, v in posterior.items()}
    reference = fit.design.model_data() if reference is None else reference
    sites = _system_sites(fit, post, data, site_names, k_pred, reference)

    solve_draw = _solver(system)
    conv, stable, _ = zip(*[solve_draw({k: v[d] for k, v in sites.items()}) for d in range(len(idx))])
    return pd.DataFrame({"perturbation": list(labels), "converged": np.mean(np.array(conv), 0),
                         "stable": np.mean(np.array(stable), 0), "draws": len(idx)})
