"""semimech: semi-mechanistic Bayesian models of perturbation experiments.

Public surface, re-exported explicitly. Models live in :mod:`semimech.models`.
"""

from semimech import checks, datasets, errors, evaluate, plots
from semimech.data import Design
from semimech.infer import (
    Fit,
    ModelSpec,
    Prediction,
    add_log_likelihood,
    add_posterior_predictive,
    add_predictions,
    add_prior,
    choose_method,
    diagnostics,
    fit_nuts,
    fit_svi,
    fit_svi_minibatch,
    fit_svi_sharded,
    load,
    pointwise_log_likelihood,
    predict,
    sample_prior,
)

from semimech.infer.auto import fit  # noqa: E402  (the default fit; not in semimech.infer, where fit is a module)

__version__ = "0.1.0"

__all__ = ["add_log_likelihood", "add_posterior_predictive", "add_predictions", "add_prior", "pointwise_log_likelihood",
           "sample_prior", "Design", "Fit", "ModelSpec", "Prediction", "checks", "datasets", "diagnostics", "errors", "evaluate", "fit_nuts", "plots",
           "fit_svi", "fit_svi_minibatch", "fit_svi_sharded", "load", "predict", "choose_method", "fit"]
