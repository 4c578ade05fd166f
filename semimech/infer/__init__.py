"""Inference: fit_svi / fit_nuts -> Fit (``semimech.fit`` in ``infer.auto`` chooses between them); predict; save/load; diagnostics."""

from semimech.infer._compiled import cache_dir, release_compiled, set_cache_dir
from semimech.infer._interrupt import FitInterrupted
from semimech.infer.auto import choose_method
from semimech.infer.diagnostics import diagnostics, format_diagnostics
from semimech.infer.fit import Fit, fit_svi
from semimech.infer.idata import add_log_likelihood, add_posterior_predictive, add_predictions, add_prior, sample_prior
from semimech.infer.io import load
from semimech.infer.loglik import pointwise_log_likelihood
from semimech.infer.nuts import fit_nuts
from semimech.infer.predict import Prediction, predict
from semimech.infer.sharding import fit_svi_sharded
from semimech.infer.spec import ModelSpec
from semimech.infer.stream import fit_svi_minibatch

__all__ = ["choose_method", "add_log_likelihood", "add_posterior_predictive", "add_predictions", "add_prior", "pointwise_log_likelihood",
           "sample_prior", "Fit", "FitInterrupted", "ModelSpec", "Prediction", "cache_dir", "diagnostics", "fit_nuts",
           "fit_svi", "fit_svi_minibatch", "fit_svi_sharded", "format_diagnostics", "load", "predict", "release_compiled",
           "set_cache_dir"]
