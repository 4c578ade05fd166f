"""The model zoo: one module per model, each a NumPyro function plus a ``SPEC`` record.

The registry is explicit: add a model by importing its module here and listing its SPEC.

Two kinds of models, by the design they take:

- ``REGISTRY``: models of a :class:`semimech.Design` (conditions at steady state), fitted with
  ``sm.fit_svi`` / ``sm.fit_nuts`` and predicted with ``sm.predict``;
- ``TIME_COURSE``: models of a :class:`semimech.timecourse.TimeCourseDesign` (samples along
  trajectories), each with its own ``fit``/``predict`` functions
  (``TIME_COURSE["neural_ode"].fit(design, rng_key=0)``).

:func:`get` finds either kind by name; ``spec.design`` says which design a model takes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from semimech.errors import DesignError
from semimech.models._embeddings import target_embedding
from semimech.models._network import network_matrix, shared_targets, target_gene_mask
from semimech.models import (
    additive,
    latent_programs,
    linear_steady_state,
    neural_ode,
    neural_ode_bayes,
    production_decay,
    signalling_network,
    time_course,
)

REGISTRY = {
    additive.SPEC.name: additive.SPEC,
    linear_steady_state.SPEC.name: linear_steady_state.SPEC,
    production_decay.SPEC.name: production_decay.SPEC,
    latent_programs.SPEC.name: latent_programs.SPEC,
    signalling_network.SPEC.name: signalling_network.SPEC,
}


@dataclasses.dataclass(frozen=True)
class TimeCourseSpec:
    """A time-course model: what it assumes and the functions that fit and predict it.

    Attributes
    ----------
    name
        Registry name.
    fit
        ``fit(design: TimeCourseDesign, *, rng_key, **options)`` -> a fit record.
    predict
        ``predict(fit, design, ...)`` -> predicted states of ``design``'s samples.
    assumes
        One plain sentence: the model's assumptions.
    methods
        Inference methods ``fit`` accepts (``"adam"``: a point estimate).
    design
        The design type it takes (always ``"TimeCourseDesign"``).
    """

    name: str
    fit: Callable
    predict: Callable
    assumes: str
    methods: tuple[str, ...] = ("svi",)
    design: str = "TimeCourseDesign"

    @property
    def default_options(self):
        # read by sm.fit_svi / sm.fit_nuts: a time-course model given to them is a clear error
        raise DesignError(
            f"{self.name!r} is a time-course model: it takes a TimeCourseDesign and is fitted with "
            f"semimech.models.TIME_COURSE[{self.name!r}].fit(design, rng_key=...), not sm.fit_svi / sm.fit_nuts."
        )


TIME_COURSE = {
    "time_course": TimeCourseSpec(
        name="time_course", fit=time_course.fit_time_course, predict=time_course.predict_time_course,
        methods=("svi", "nuts"),
        assumes="Abundances follow production/decay network dynamics from the control's fixed point (or a "
                "measured or latent start); conditions act through their covariates.",
    ),
    "neural_ode": TimeCourseSpec(
        name="neural_ode", fit=neural_ode.fit_neural_ode, predict=neural_ode.predict_neural_ode, methods=("adam",),
        assumes="Abundances follow a learned smooth vector field of the state and the condition's covariates; "
                "optionally the baseline states are fixed points (steady_state_weight).",
    ),
    "neural_ode_bayes": TimeCourseSpec(
        name="neural_ode_bayes", fit=neural_ode_bayes.fit_neural_ode_bayes,
        predict=neural_ode_bayes.predict_neural_ode_bayes, methods=("svi", "nuts"),
        assumes="As neural_ode, with a Gaussian prior on the field's weights; the steady-state term is a "
                "zero-residual pseudo-observation of scale tau.",
    ),
}


def get(name: str):
    """Return the spec registered under ``name``: a ``ModelSpec`` or a :class:`TimeCourseSpec`."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in TIME_COURSE:
        return TIME_COURSE[name]
    raise KeyError(f"no model named {name!r}; registered: {sorted(REGISTRY)}; time-course models "
                   f"(TimeCourseDesign): {sorted(TIME_COURSE)}") from None


__all__ = ["REGISTRY", "TIME_COURSE", "TimeCourseSpec", "additive", "get", "latent_programs", "linear_steady_state",
           "network_matrix", "neural_ode", "neural_ode_bayes", "production_decay", "shared_targets",
           "signalling_network", "target_embedding", "target_gene_mask", "time_course"]
