"""Trajectories: exponential relaxation (values and derivative) in closed form, safe failure, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech import dynamics as D
from semimech.errors import SemimechError


def _relaxation(k, a):
    """dx/dt = -k (x - a) as a linear field: W = 0, b = k a, gamma = k."""
    k, a = jnp.asarray(k), jnp.asarray(a)
    return D.LinearParams(W=jnp.zeros((k.shape[0], k.shape[0])), b=k * a, gamma=k)


@jax.jit
def _traj(params, x0, ts, t0, production):
    def run(params):
        return D.trajectory(D.linear_field, params, x0=x0, ts=ts, t0=t0, intervention=D.Intervention.scale(production))

    # gradient of the last state wrt the rates, through the solver
    grad_k = jax.grad(lambda k: jnp.sum(run(params._replace(gamma=k, b=k * params.b / params.gamma)).xs[-1]))(params.gamma)
    return run(params), grad_k


def test_exponential_relaxation_matches_closed_form():
    with jax.enable_x64(True):
        k, a = jnp.array([0.5, 2.0, 1.0]), jnp.array([1.0, -3.0, 4.0])
        x0, t0 = jnp.array([0.0, 1.0, 4.0]), 0.5
        ts = jnp.array([0.5, 1.0, 2.0, 4.0, 10.0])
        out, grad_k = _traj(_relaxation(k, a), x0, ts, t0, jnp.ones(3))
        assert bool(out.ok) and out.xs.shape == (5, 3)
        expected = a + (x0 - a) * jnp.exp(-k * (ts[:, None] - t0))
        np.testing.assert_allclose(out.xs, expected, rtol=1e-6, atol=1e-7)
        # d x(t) / dk = -(x0 - a) (t - t0) exp(-k (t - t0)), at the last time
        dt = ts[-1] - t0
        np.testing.assert_allclose(grad_k, -(x0 - a) * dt * jnp.exp(-k * dt), rtol=1e-4, atol=1e-6)
        # t0 matters: the same grid started earlier is further along (negative control)
        earlier, _ = _traj(_relaxation(k, a), x0, ts, 0.0, jnp.ones(3))
        assert not np.allclose(earlier.xs[1:], expected[1:], rtol=1e-3)
        # a knockout removes production: pure decay to zero, x(t) = x0 exp(-k (t - t0))
        ko, _ = _traj(_relaxation(k, a), x0, ts, t0, jnp.zeros(3))
        np.testing.assert_allclose(ko.xs, x0 * jnp.exp(-k * (ts[:, None] - t0)), rtol=1e-6, atol=1e-7)


def test_trajectory_approaches_the_steady_state():
    with jax.enable_x64(True):
        p = D.ProductionDecayParams(
            W=jnp.array([[0.0, -2.0], [1.5, 0.0]]), b=jnp.zeros(2), alpha=jnp.array([2.0, 1.0]), gamma=jnp.array([1.0, 0.7])
        )

        @jax.jit
        def both(alpha):
            tr = D.trajectory(D.production_decay_field, p._replace(alpha=alpha), x0=jnp.zeros(2), ts=jnp.array([0.0, 60.0]))
            ss = D.steady_state(D.production_decay_field, p._replace(alpha=alpha), x0=jnp.zeros(2), fallback=False)
            return tr, ss

        tr, ss = both(p.alpha)
        assert bool(tr.ok) and bool(ss.ok)
        np.testing.assert_allclose(tr.xs[-1], ss.x, rtol=1e-6)


def _blow_up(x, params, *, media=None, intervention=None):
    return x**2


def test_blow_up_returns_ok_false_inside_jit():
    with jax.enable_x64(True):
        @jax.jit
        def run(x0):
            return D.trajectory(_blow_up, None, x0=x0, ts=jnp.array([0.0, 0.5, 2.0]))

        out = run(jnp.array([1.0]))  # x(t) = 1 / (1 - t) blows up at t = 1
        assert not bool(out.ok)
        np.testing.assert_allclose(out.xs[1], [2.0], rtol=1e-6)  # the reached part is still right
        assert bool(run(jnp.array([-1.0])).ok)  # positive control: x(t) = -1 / (1 + t) is fine


def test_bad_time_grid_is_a_clear_error():
    p = _relaxation(jnp.ones(1), jnp.ones(1))
    with pytest.raises(SemimechError, match="non-decreasing"):
        D.trajectory(D.linear_field, p, x0=jnp.zeros(1), ts=jnp.array([2.0, 1.0]))
    with pytest.raises(SemimechError, match="start at or after t0"):
        D.trajectory(D.linear_field, p, x0=jnp.zeros(1), ts=jnp.array([1.0, 2.0]), t0=1.5)
    with pytest.raises(SemimechError, match="Unknown ODE solver"):
        D.trajectory(D.linear_field, p, x0=jnp.zeros(1), ts=jnp.array([0.0, 1.0]), solver="euler")
