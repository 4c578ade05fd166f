"""Vector fields: intervention semantics, media, shape errors, the neural field."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech import dynamics as D
from semimech.errors import SemimechError


def _params(n=3, seed=0):
    rng = np.random.default_rng(seed)
    W = jnp.asarray(rng.normal(size=(n, n)) * 0.3)
    return D.LinearParams(W=W, b=jnp.asarray(rng.uniform(0.5, 1.0, n)), gamma=jnp.asarray(rng.uniform(0.5, 2.0, n)))


def test_linear_field_matches_formula_and_knockout_removes_production():
    with jax.enable_x64(True):
        p = _params()
        x = jnp.array([0.3, 1.2, 0.7])
        expected = p.W @ x + p.b - p.gamma * x
        np.testing.assert_allclose(D.linear_field(x, p), expected, rtol=1e-12)
        ko = D.Intervention.scale(jnp.array([1.0, 0.0, 0.5]))
        out = D.linear_field(x, p, intervention=ko)
        # knocked-out variable only decays; a knockdown halves the whole production term
        np.testing.assert_allclose(out[1], -p.gamma[1] * x[1], rtol=1e-12)
        np.testing.assert_allclose(out[2], 0.5 * (p.W @ x + p.b)[2] - p.gamma[2] * x[2], rtol=1e-12)
        np.testing.assert_allclose(out[0], expected[0], rtol=1e-12)


def test_clamp_relaxes_to_value_and_media_enters_production():
    with jax.enable_x64(True):
        p = _params()._replace(M=jnp.array([[1.0], [0.0], [2.0]]))
        x = jnp.array([0.3, 1.2, 0.7])
        do = D.Intervention(
            production=jnp.array([0.0, 1.0, 1.0]), clamp_mask=jnp.array([False, True, False]), clamp_value=jnp.array([0.0, 5.0, 0.0])
        )
        media = jnp.array([0.5])
        out = D.linear_field(x, p, media=media, intervention=do)
        np.testing.assert_allclose(out[1], 5.0 - 1.2)
        np.testing.assert_allclose(out[2], (p.W @ x + p.b)[2] + 2.0 * 0.5 - p.gamma[2] * x[2], rtol=1e-12)
        # knockout stays off whatever the medium (medium acts inside the production scale)
        np.testing.assert_allclose(out[0], -p.gamma[0] * x[0], rtol=1e-12)
        np.testing.assert_allclose(D.linear_field(x, p, media=jnp.zeros(1)), D.linear_field(x, p), rtol=1e-12)


def test_production_decay_formula():
    with jax.enable_x64(True):
        p = _params()
        pd = D.ProductionDecayParams(W=p.W, b=p.b, alpha=jnp.array([1.0, 2.0, 3.0]), gamma=p.gamma)
        x = jnp.array([0.3, 1.2, 0.7])
        s = jnp.array([1.0, 0.25, 2.0])
        out = D.production_decay_field(x, pd, intervention=D.Intervention.scale(s))
        expected = pd.alpha * s / (1 + np.exp(-(pd.W @ x + pd.b))) - pd.gamma * x
        np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_bad_inputs_name_the_problem():
    p = _params()
    x = jnp.ones(3)
    with pytest.raises(SemimechError, match="no medium response M"):
        D.linear_field(x, p, media=jnp.ones(2))
    with pytest.raises(SemimechError, match="state x must have shape"):
        D.linear_field(jnp.ones(4), p)
    with pytest.raises(SemimechError, match="intervention must act"):
        D.production_decay_field(
            x, D.ProductionDecayParams(p.W, p.b, p.gamma, p.gamma), intervention=D.Intervention.none(2)
        )
    with pytest.raises(SemimechError, match="W must be"):
        D.linear_field(x, p._replace(W=jnp.ones((3, 2))))
    with pytest.raises(SemimechError, match="M must be"):
        D.linear_field(x, p._replace(M=jnp.ones((3, 2))), media=jnp.ones(3))


def test_neural_field_intervention_semantics_and_media():
    with jax.enable_x64(True):
        f = D.NeuralField(3, n_media=2, width=8, depth=1, gamma=0.5, rng_key=0)
        x = jnp.array([0.3, 1.2, 0.7])
        media = jnp.array([1.0, -1.0])
        field = eqx.filter_jit(D.neural_field)
        base = field(x, f, media=media)
        prod = eqx.filter_jit(lambda f, x, m: f.production(x, m))(f, x, media)
        assert base.shape == (3,) and bool(jnp.all(prod > 0))
        np.testing.assert_allclose(base, prod - 0.5 * x, rtol=1e-12)
        # the medium changes the field (it is an input of the MLP)
        assert not np.allclose(field(x, f, media=jnp.zeros(2)), base)
        do = D.Intervention(
            production=jnp.array([0.0, 2.0, 1.0]), clamp_mask=jnp.array([False, False, True]), clamp_value=jnp.array([0.0, 0.0, 4.0])
        )
        out = field(x, f, media=media, intervention=do)
        np.testing.assert_allclose(out, [-0.5 * 0.3, 2 * prod[1] - 0.5 * 1.2, 4.0 - 0.7], rtol=1e-12)
        with pytest.raises(SemimechError, match="n_media=0"):
            D.neural_field(x, D.NeuralField(3, rng_key=1), media=media)


def test_neural_field_steady_state_and_gradient_wrt_weights():
    with jax.enable_x64(True):
        f = D.NeuralField(3, width=8, depth=1, rng_key=2)

        def loss(field):
            ss = D.steady_state(D.neural_field, field, x0=jnp.ones(3), fallback=False)
            return jnp.sum(ss.x), ss

        (value, ss), grads = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))(f)
        assert bool(ss.ok)
        np.testing.assert_allclose(D.neural_field(ss.x, f), 0.0, atol=1e-9)
        # implicit derivative wrt decay, against central finite differences
        eps = 1e-6
        bump = jnp.array([eps, 0.0, 0.0])

        @eqx.filter_jit
        def total(log_gamma):
            moved = eqx.tree_at(lambda m: m.log_gamma, f, log_gamma)
            ss = D.steady_state(D.neural_field, moved, x0=jnp.ones(3), fallback=False)
            return jnp.sum(ss.x), ss.ok

        (plus, ok_plus), (minus, ok_minus) = total(f.log_gamma + bump), total(f.log_gamma - bump)
        assert bool(ok_plus) and bool(ok_minus)
        fd = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grads.log_gamma[0], fd, rtol=1e-5)
        assert abs(float(fd)) > 1e-3  # the check has something to compare
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
