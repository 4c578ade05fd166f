"""Design tools: the batch-effect error analysis as functions to call before running a screen.

- :func:`within_batch_error`, :func:`cross_batch_error`, :func:`layout_error`: analytic bias,
  variance and MSE of a perturbation-effect estimate under ``y = mu_p + beta_b + eps``.
- :func:`recommend_control_allocation`: controls per batch under a cell budget (Dunnett).
- :func:`simulate_layout`: draw screens with a :class:`Layout` and measure the achieved error.
- :func:`recommend`: which experiment next — rank candidate conditions by the expected gain to a
  fitted model (predictive uncertainty, information about latent quantities, discrimination of two
  models) and return the best batch with its controls.
"""

from semimech.design.allocation import ControlAllocation, recommend_control_allocation
from semimech.design.error_analysis import (
    ContrastError,
    contrast_weights,
    cross_batch_error,
    layout_error,
    within_batch_error,
)
from semimech.design.layout import Layout, balanced_layout
from semimech.design.recommend import OBJECTIVES, RecommendationWarning, recommend
from semimech.design.simulate import SimulatedError, simulate_layout

__all__ = [
    "ContrastError",
    "ControlAllocation",
    "Layout",
    "OBJECTIVES",
    "RecommendationWarning",
    "SimulatedError",
    "balanced_layout",
    "contrast_weights",
    "cross_batch_error",
    "layout_error",
    "recommend",
    "recommend_control_allocation",
    "simulate_layout",
    "within_batch_error",
]
