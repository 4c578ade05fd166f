"""Inference helpers shared by the ODE models: counting failed solves, NUTS runs, diagnostics.

A model that solves an ODE (or a steady state) inside its log density adds a ``-inf`` factor
when the solve fails; SVI then skips the step (``stable_update``) and NUTS treats the proposal
as a divergence (its energy error is infinite) and stays at the last valid state. Neither says
*why* a step or transition was rejected, so the models report each log-density evaluation's
solve status to the host (:func:`solve_counter`, through ``jax.debug.callback``): the count of
failed solves is then exact, over initialisation, warm-up and sampling (or every SVI step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from semimech.infer import _args

__all__ = ["check_prediction_design", "diagnostics", "ode_settings", "report_solve", "require_time_course_design",
           "run_nuts", "solve_counter", "trained_shape", "wanted_draws"]


def require_time_course_design(design, who: str) -> None:
    """A clear error unless ``design`` is a :class:`~semimech.timecourse.TimeCourseDesign`."""
    from semimech.errors import DesignError
    from semimech.timecourse import TimeCourseDesign

    if not isinstance(design, TimeCourseDesign):
        raise DesignError(
            f"{who} takes a TimeCourseDesign (samples at measurement times; build one with "
            f"semimech.timecourse.time_course_design or design_from_midas); got {type(design).__name__}. "
            "For a steady-state semimech.Design use sm.fit_svi with a model of semimech.models.REGISTRY."
        )


def ode_settings(*, num_steps, learning_rate, max_steps, num_samples=1, num_warmup=0, what: str = "SVI steps"):
    """A time-course fit's counts and rate, checked before anything is traced (``InferenceError``s that name
    the argument, as ``sm.fit_svi`` / ``sm.fit_nuts`` raise; unchecked, ``num_steps=-1`` failed in MLIR, a
    negative rate climbed the loss and ``max_steps=0`` failed inside diffrax)."""
    return (_args.count("num_steps", num_steps, what=what), _args.rate("learning_rate", learning_rate),
            _args.count("num_samples", num_samples, what="posterior draws"),
            _args.count("num_warmup", num_warmup, minimum=0, what="NUTS warm-up iterations"),
            _args.count("max_steps", max_steps, what="ODE solver steps per solve"))


def trained_shape(design) -> tuple[int, int]:
    """``(readouts, covariates)`` of a training design, kept by a fit so that ``predict`` can check its design."""
    return int(design.n_readouts), int(np.shape(design.covariates)[1])


def check_prediction_design(design, trained: tuple[int, int] | None, who: str) -> None:
    """A clear error unless ``design`` is a time-course design shaped like the training one (``trained``, from
    :func:`trained_shape`; ``None`` for a fit made without it: only the type is checked)."""
    from semimech.errors import PredictionError

    require_time_course_design(design, who)
    if trained is None:
        return
    got = trained_shape(design)
    if got != tuple(trained):
        raise PredictionError(
            f"{who} was fitted on {trained[0]} readout(s) and {trained[1]} covariate(s) per condition; this design has "
            f"{got[0]} and {got[1]}. Predict with a design built like the training one (the same readouts, and every "
            "condition's covariates in the same order).")


def wanted_draws(num_draws, available: int) -> int:
    """How many posterior draws a time-course ``predict`` uses: all (``None``) or a positive count, at most all."""
    from semimech.errors import PredictionError

    if num_draws is None:
        return available
    return min(_args.count("num_draws", num_draws, what="None: every draw", error=PredictionError), available)


def solve_counter():
    """``(record, counts)``: ``record(ok)`` adds one log-density evaluation's solve status to ``counts``.

    ``counts`` is ``{"evaluations": int, "failed": int}``; ``ok`` may be batched (vectorised chains).
    """
    counts = {"evaluations": 0, "failed": 0}

    def record(ok):
        ok = np.asarray(ok, bool)
        counts["evaluations"] += int(ok.size)
        counts["failed"] += int((~ok).sum())

    return record, counts


def report_solve(on_solve, ok) -> None:
    """Inside a model: send ``all(ok)`` to ``on_solve`` on the host (no-op when ``on_solve`` is None)."""
    if on_solve is not None:
        jax.debug.callback(on_solve, jnp.all(ok))


def run_nuts(model, *, rng_key, init_strategy, data, y, num_warmup: int, num_samples: int, max_tree_depth: int = 6):
    """NUTS; returns ``(samples, {"divergences": int})`` (divergent transitions after warm-up).

    Raises numpyro's ``RuntimeError`` when no valid initial point is found (callers turn it
    into an :class:`~semimech.errors.InferenceError`). Warm-up divergences are not collected
    (that would compile the sampler twice); failed solves are counted in every phase by
    :func:`solve_counter`.
    """
    kernel = NUTS(model, init_strategy=init_strategy, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
    mcmc.run(rng_key, data, y=y, extra_fields=("diverging",))
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return mcmc.get_samples(), {"divergences": div}


def diagnostics(method: str, *, losses=None, stats=None, counts=None, draws: int | None = None) -> dict:
    """The diagnostics dict of an ODE fit.

    SVI: ``steps``, ``nan_steps`` (skipped: non-finite loss, e.g. a failed solve),
    ``final_loss``. NUTS: ``draws``, ``divergences`` (after warm-up).
    Both, when the solves were counted: ``density_evaluations`` and ``failed_solves``.
    """
    out = {"method": method}
    if method == "nuts":
        out.update(draws=draws, **(stats or {}))
    else:
        losses = np.asarray(losses)
        finite = losses[np.isfinite(losses)]
        out.update(steps=int(losses.size), nan_steps=int((~np.isfinite(losses)).sum()),
                   final_loss=float(finite[-1]) if finite.size else float("nan"))
    if counts is not None:
        out.update(density_evaluations=counts["evaluations"], failed_solves=counts["failed"])
    return out
