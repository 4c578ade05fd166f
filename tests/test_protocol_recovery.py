"""Slow: recover knockdown efficacies by gradient descent through run_protocols (end-to-end
differentiability of the protocol layer), with a shuffled-label negative control."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from semimech.dynamics import Intervention, ProductionDecayParams, production_decay_field
from semimech.protocol import protocols_from_frame, run_protocols

PARAMS = ProductionDecayParams(
    W=jnp.array([[0.0, -2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.5, -1.0]]),
    b=jnp.array([0.5, -1.0, -0.5]),
    alpha=jnp.array([2.0, 1.5, 1.0]),
    gamma=jnp.array([1.0, 0.7, 1.3]),
    M=jnp.array([[2.0], [0.0], [-1.0]]),
)
TRUE = np.array([0.7, 0.4])  # knockdown efficacies of KD0 (gene 0) and KD1 (gene 1)


def _table(rng, shuffle):
    times = np.tile(np.repeat([0.5, 1.0, 2.0, 4.0], 3), 3)
    labels = np.repeat(["ctrl", "KD0", "KD1"], 12)
    df = pd.DataFrame({"t": times, "p": labels, "m": "EGF", "o": "perturb_then_media"})
    if shuffle:
        df = df.assign(p=rng.permutation(df["p"].to_numpy()))
    return df


def _predict(pr, eff):
    prod = jnp.stack([jnp.ones(3), jnp.ones(3).at[0].set(1 - eff[0]), jnp.ones(3).at[1].set(1 - eff[1])])
    res = run_protocols(
        pr, production_decay_field, PARAMS, interventions=Intervention.scale(prod), media={"EGF": jnp.ones(1)},
        x0="steady", media0=jnp.zeros(1), x_guess=jnp.full(3, 0.5),
    )
    return res.state[pr.row_protocol], res.ok


def _fit(df, y):
    pr = protocols_from_frame(df, time_key="t", perturbation_key="p", media_key="m", order_key="o", lag=0.25, control="ctrl")

    def loss(z):
        state, ok = _predict(pr, jax.nn.sigmoid(z))
        return jnp.where(jnp.all(ok), jnp.mean((state - y) ** 2), jnp.inf)

    step = jax.jit(jax.value_and_grad(loss))
    opt = optax.adam(0.1)
    z = jnp.zeros(2)
    state = opt.init(z)
    for _ in range(150):
        value, grad = step(z)
        updates, state = opt.update(grad, state)
        z = optax.apply_updates(z, updates)
    return np.asarray(jax.nn.sigmoid(z)), float(step(z)[0])


@pytest.mark.slow
def test_knockdown_efficacies_are_recovered_through_protocols_and_shuffled_labels_are_not():
    rng = np.random.default_rng(0)
    df = _table(rng, shuffle=False)
    pr = protocols_from_frame(df, time_key="t", perturbation_key="p", media_key="m", order_key="o", lag=0.25, control="ctrl")
    clean, ok = _predict(pr, jnp.asarray(TRUE))
    assert bool(jnp.all(ok))
    y = clean + 0.01 * rng.normal(size=clean.shape)

    est, loss = _fit(df, y)
    np.testing.assert_allclose(est, TRUE, atol=0.05)
    assert loss < 3 * 0.01**2

    # negative control: the same observations with shuffled perturbation labels cannot be fitted
    est_bad, loss_bad = _fit(_table(np.random.default_rng(1), shuffle=True), y)
    assert loss_bad > 10 * loss
    assert np.max(np.abs(est_bad - TRUE)) > 0.1 or loss_bad > 100 * loss
