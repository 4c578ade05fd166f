"""Assumption checks on closed-form fields: known answers and negative controls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from semimech.assumptions import check_assumptions, check_control_drift, check_relaxation, check_unique_attractor

_spec = importlib.util.spec_from_file_location("_tnode", Path(__file__).with_name("test_neural_ode.py"))
_tnode = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tnode)


def relax(x, p, *, media=None, intervention=None):
    """dx/dt = -k (x - c - B u) + drift: fixed point c + B u + drift / k, eigenvalues -k."""
    return -p["k"] * (x - p["c"] - p["B"] @ media) + p["drift"]


def bistable(x, p, *, media=None, intervention=None):
    """dx/dt = (x - c) - (x - c)^3 / s^2 per coordinate: attractors at c +- s."""
    z = x - p["c"] - p["B"] @ media
    return z - z**3 / p["s"] ** 2


def _params(k=_tnode.K, drift=0.0):
    return {"k": jnp.float32(k), "c": jnp.asarray(_tnode.C, jnp.float32), "B": jnp.asarray(_tnode.B, jnp.float32),
            "drift": jnp.float32(drift)}


@pytest.fixture(scope="module")
def design():
    return _tnode.linear_relaxation_design()


def test_relaxation_time_matches_the_eigenvalue(design):
    chk = check_relaxation(relax, _params(k=1.5), design)
    np.testing.assert_allclose(chk.details["relaxation_time"], 1 / 1.5, rtol=1e-4)
    np.testing.assert_allclose(chk.value, 3.0 * 1.5, rtol=1e-4)  # latest sample at 3 h
    assert chk.passed
    slow = check_relaxation(relax, _params(k=0.5), design)  # negative control: 3 h = 1.5 relaxation times
    np.testing.assert_allclose(slow.value, 1.5, rtol=1e-4)
    assert not slow.passed and "transient" in slow.message


def test_control_drift(design):
    still = check_control_drift(relax, _params(), design)
    assert still.passed and still.value < 0.015  # the noisy baseline mean relaxes by its own error only
    moving = check_control_drift(relax, _params(drift=0.5), design)  # controls relax to c + 0.5/k
    assert not moving.passed and moving.value > 0.2 and "time-matched" in moving.message


@pytest.mark.slow
def test_unique_attractor_and_a_bistable_negative_control(design):
    assert check_unique_attractor(relax, _params(), design, rng_key=0, num_starts=6).passed
    p = {"c": jnp.asarray(_tnode.C, jnp.float32), "B": jnp.asarray(_tnode.B, jnp.float32), "s": jnp.float32(1.0)}
    chk = check_unique_attractor(bistable, p, design, rng_key=0, num_starts=6)
    assert not chk.passed and chk.value >= 2


@pytest.mark.slow
def test_check_assumptions_runs_all_three(design):
    out = check_assumptions(relax, _params(), design, rng_key=0, num_starts=6)
    assert set(out) == {"control_drift", "unique_attractor", "relaxation"}
    assert all(c.passed for c in out.values())
