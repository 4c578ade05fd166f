"""semimech: semi-mechanistic Bayesian models of perturbation experiments.

Public surface, re-exported explicitly. Models live in :mod:`semimech.models`.
"""

from semimech import checks, datasets, errors, evaluate, plots
from semimech.data import Design
from semimech.infer import (
    Fit,
    ModelSpec,
    Prediction,
    diagnostics,
    fit_nuts,
    fit_svi,
    fit_svi_minibatch,
    fit_svi_sharded,
    load,
    predict,
)

__version__ = "0.1.0"

__all__ = ["Design", "Fit", "ModelSpec", "Prediction", "checks", "datasets", "diagnostics", "errors", "evaluate", "fit_nuts", "plots",
           "fit_svi", "fit_svi_minibatch", "fit_svi_sharded", "load", "predict"]
