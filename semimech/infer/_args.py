"""Checks of the arguments the fits share: counts, rates, the model.

Each names the argument, what it must be and what it got, as an :class:`InferenceError`
before anything is traced (a JAX traceback or a misleading message later is what it prevents:
``num_samples=0`` failed in a reshape, ``num_steps=0`` reported a NaN loss, a negative learning
rate climbed the loss).
"""

from __future__ import annotations

import math

import numpy as np

from semimech.errors import InferenceError
from semimech.infer.spec import ModelSpec


def count(name: str, value, *, minimum: int = 1, what: str = "", error: type = InferenceError) -> int:
    """``value`` as an int, if it is an integer (not a bool) of at least ``minimum``; else ``error``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise error(f"{name} must be {kind}{f' ({what})' if what else ''}, got {value!r}.")
    return int(value)


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite real number (not a bool)."""
    return (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(value))


def rate(name: str, value) -> float:
    """``value`` as a float, if it is a finite positive number."""
    if not is_finite_number(value) or value <= 0:
        raise InferenceError(f"{name} must be a finite positive number, got {value!r}.")
    return float(value)


def number(name: str, value, *, minimum: float = 0.0, strict: bool = True, error: type = InferenceError) -> float:
    """``value`` as a float, if it is a finite number above ``minimum`` (at least it, with ``strict=False``);
    else ``error`` (a model option's check passes :class:`DesignError`, as the model's other options raise)."""
    if not is_finite_number(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise error(f"{name} must be a finite number {bound}, got {value!r}.")
    return float(value)


def prior_pair(name: str, value, *, error: type = InferenceError) -> tuple[float, float]:
    """``value`` as a ``(location, scale)`` prior pair: two numbers, the location finite, the scale finite and > 0."""
    if np.ndim(value) != 1 or np.size(value) != 2:
        raise error(f"{name} must be a pair (location, scale), got {value!r}.")
    if not is_finite_number(value[0]):
        raise error(f"{name}'s location must be a finite number, got {value[0]!r}.")
    return float(value[0]), number(f"{name}'s scale", value[1], error=error)


def svi_settings(learning_rate, num_samples, rank) -> tuple[float, int, int]:
    """The SVI fits' learning rate, number of posterior draws and low-rank guide rank, checked."""
    return (rate("learning_rate", learning_rate), count("num_samples", num_samples, what="posterior draws"),
            count("rank", rank, what="the low-rank guide's rank"))


def spec(value) -> ModelSpec:
    """``value`` if it is a :class:`ModelSpec`; a model's name gets the call that finds its spec, a time-course
    model's spec (``semimech.models.TIME_COURSE``) its own entry point (its ``default_options`` raises that)."""
    if isinstance(value, ModelSpec):
        return value
    if not isinstance(value, str):
        getattr(value, "default_options", None)
    hint = (f"semimech.models.get({value!r})" if isinstance(value, str)
            else "semimech.models.get(name), e.g. semimech.models.additive.SPEC")
    raise InferenceError(f"the model must be a semimech ModelSpec, got {type(value).__name__} {value!r:.60}; "
                         f"pass {hint}.")
