"""Stability (Jacobian eigenvalues) and multi-start multistability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech import dynamics as D
from semimech.errors import SemimechError


def _linear_with_A(A):
    """Linear field whose Jacobian is A: W = A + I with gamma = 1."""
    A = jnp.asarray(A, dtype=float)
    n = A.shape[0]
    return D.LinearParams(W=A + jnp.eye(n), b=jnp.ones(n), gamma=jnp.ones(n))


@pytest.mark.parametrize(
    ("A", "eigs", "stable"),
    [
        ([[-1.0, 2.0], [0.0, -3.0]], [-3.0, -1.0], True),
        ([[0.5, 0.0], [0.0, -1.0]], [-1.0, 0.5], False),
        ([[-0.1, 1.0], [-1.0, -0.1]], [-0.1 - 1j, -0.1 + 1j], True),  # stable spiral
        ([[0.0, 1.0], [-1.0, 0.0]], [-1j, 1j], False),  # centre: not asymptotically stable
    ],
)
def test_eigenvalues_and_stability_of_known_matrices(A, eigs, stable):
    with jax.enable_x64(True):
        p = _linear_with_A(A)
        x = jnp.array([0.3, -0.2])
        np.testing.assert_allclose(D.jacobian(D.linear_field, p, x), A, atol=1e-12)
        ev = np.asarray(D.eigenvalues(D.linear_field, p, x))
        ev = ev[np.lexsort((ev.imag, ev.real))]
        np.testing.assert_allclose(ev, eigs, atol=1e-10)
        assert bool(D.is_stable(D.linear_field, p, x)) is stable
        np.testing.assert_allclose(D.spectral_abscissa(D.linear_field, p, x), max(np.real(eigs)), atol=1e-10)


def _toggle(gain):
    """Mutual repression: dx1/dt = sigmoid(gain (1/2 - x2)) - x1 and symmetrically."""
    W = jnp.array([[0.0, -gain], [-gain, 0.0]])
    return D.ProductionDecayParams(W=W, b=jnp.full(2, gain / 2), alpha=jnp.ones(2), gamma=jnp.ones(2))


@jax.jit
def _attractors(params, key, production):
    edit = D.Intervention.scale(production)
    return D.attractors(D.production_decay_field, params, intervention=edit, rng_key=key, num_starts=12)


def test_bistable_toggle_switch_is_detected_and_monostable_is_unique():
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(0)
        bi = _attractors(_toggle(10.0), key, jnp.ones(2))
        assert bool(jnp.all(bi.ok))
        assert int(bi.num_attractors) == 2 and not bool(bi.unique)
        # the two attractors are mirror images: one gene high, the other low
        states = np.asarray(bi.states)
        high_first = states[states[:, 0] > states[:, 1]]
        high_second = states[states[:, 0] < states[:, 1]]
        assert len(high_first) and len(high_second)
        np.testing.assert_allclose(high_first[0], high_second[0][::-1], rtol=1e-6)
        assert high_first[0, 0] > 0.9 and high_first[0, 1] < 0.1
        # negative control: weak repression has one attractor, reached from every start
        mono = _attractors(_toggle(1.0), key, jnp.ones(2))
        assert bool(mono.unique) and int(mono.num_attractors) == 1 and bool(jnp.all(mono.ok))
        np.testing.assert_allclose(mono.states, jnp.broadcast_to(mono.states[0], mono.states.shape), rtol=1e-6)
        # an edit that knocks down gene 2 removes the bistability (only "gene 1 high" remains)
        kd = _attractors(_toggle(10.0), key, jnp.array([1.0, 0.1]))
        assert bool(kd.unique) and float(kd.states[0, 0]) > 0.9


def test_newton_can_land_on_the_saddle_and_the_stability_check_catches_it():
    with jax.enable_x64(True):
        p = _toggle(10.0)

        @jax.jit
        def solve(x0):
            plain = D.steady_state(D.production_decay_field, p, x0=x0, fallback=False)
            checked = D.steady_state(D.production_decay_field, p, x0=x0, fallback=False, check_stability=True)
            return plain, checked, D.is_stable(D.production_decay_field, p, plain.x)

        saddle, checked, stable = solve(jnp.array([0.5, 0.5]))
        assert bool(saddle.ok) and not bool(stable) and not bool(checked.ok)
        np.testing.assert_allclose(saddle.x, [0.5, 0.5], atol=1e-9)
        # positive control: the high/low attractor passes the same check
        attractor, checked, stable = solve(jnp.array([1.0, 0.0]))
        assert bool(checked.ok) and bool(stable) and float(checked.x[0]) > 0.9


def test_attractors_rejects_bad_num_starts():
    with pytest.raises(SemimechError, match="num_starts"):
        D.attractors(D.production_decay_field, _toggle(1.0), rng_key=0, num_starts=0, x0=jnp.ones(2))
