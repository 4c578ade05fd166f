"""Dynamics layer: vector fields, steady states, stability, trajectories (no NumPyro here).

A vector field is a pure function ``f(x, params, *, media, intervention) -> dx/dt``; see
:mod:`semimech.dynamics.intervention` for how a perturbation enters it.

Inside a NumPyro model (the shell, not this package), solve once per condition and guard::

    ss = steady_states(production_decay_field, params, interventions=edits)   # all conditions
    numpyro.factor("steady_state_ok", jnp.where(jnp.all(ss.ok), 0.0, -jnp.inf))
    mean = jnp.where(ss.ok[:, None], ss.x, fallback_value)                     # finite always

Gradients are implicit (one frozen Newton step at the root), so NUTS never differentiates
through the solver's iterations. ``fallback=False`` skips the diffrax integration when Newton
alone is reliable (cheaper to compile and, under vmap, to run).
For the linear and production-decay fields (closed-form Jacobians, :mod:`.jacobians`),
``steady_states`` solves every condition with one LU of the control Jacobian
(:mod:`.batched`), falling back to one Newton solve per condition where that stalls.
"""

from semimech.dynamics.fields import LinearParams, ProductionDecayParams, linear_field, production_decay_field
from semimech.dynamics.intervention import Intervention, apply_clamp, compose
from semimech.dynamics.jacobians import analytic_jacobian, linear_jacobian, production_decay_jacobian
from semimech.dynamics.neural import NeuralField, neural_field
from semimech.dynamics.stability import Attractors, attractors, eigenvalues, is_stable, jacobian, spectral_abscissa
from semimech.dynamics.steady_state import (
    SteadyState,
    default_tolerances,
    linear_steady_state,
    steady_state,
)
from semimech.dynamics.batched import steady_states
from semimech.dynamics.trajectory import Trajectory, trajectory

__all__ = [
    "Attractors",
    "Intervention",
    "LinearParams",
    "NeuralField",
    "ProductionDecayParams",
    "SteadyState",
    "Trajectory",
    "analytic_jacobian",
    "apply_clamp",
    "attractors",
    "compose",
    "default_tolerances",
    "eigenvalues",
    "is_stable",
    "jacobian",
    "linear_field",
    "linear_jacobian",
    "linear_steady_state",
    "neural_field",
    "production_decay_field",
    "production_decay_jacobian",
    "spectral_abscissa",
    "steady_state",
    "steady_states",
    "trajectory",
]
