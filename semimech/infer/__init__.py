"""Inference: fit_svi / fit_nuts -> Fit; predict; save/load; diagnostics."""

from semimech.infer.diagnostics import diagnostics, format_diagnostics
from semimech.infer.fit import Fit, fit_nuts, fit_svi
from semimech.infer.io import load
from semimech.infer.predict import Prediction, predict
from semimech.infer.spec import ModelSpec

__all__ = ["Fit", "ModelSpec", "Prediction", "diagnostics", "fit_nuts", "fit_svi", "format_diagnostics", "load",
           "predict"]
