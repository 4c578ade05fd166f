"""Dynamics layer: vector fields, steady states, stability, trajectories (no NumPyro here).

A vector field is a pure function ``f(x, params, *, media, intervention) -> dx/dt``; see
:mod:`semimech.dynamics.intervention` for how a perturbation enters it.
"""

from semimech.dynamics.fields import LinearParams, ProductionDecayParams, linear_field, production_decay_field
from semimech.dynamics.intervention import Intervention, apply_clamp, compose
from semimech.dynamics.neural import NeuralField, neural_field
from semimech.dynamics.stability import Attractors, attractors, eigenvalues, is_stable, jacobian, spectral_abscissa
from semimech.dynamics.steady_state import (
    SteadyState,
    default_tolerances,
    linear_steady_state,
    steady_state,
    steady_states,
)
from semimech.dynamics.trajectory import Trajectory, trajectory

__all__ = [
    "Attractors",
    "Intervention",
    "LinearParams",
    "NeuralField",
    "ProductionDecayParams",
    "SteadyState",
    "Trajectory",
    "apply_clamp",
    "attractors",
    "compose",
    "default_tolerances",
    "eigenvalues",
    "is_stable",
    "jacobian",
    "linear_field",
    "linear_steady_state",
    "neural_field",
    "production_decay_field",
    "spectral_abscissa",
    "steady_state",
    "steady_states",
    "trajectory",
]
