"""Slow: recovery of W by linear_steady_state on data simulated from its own generator.

Known answer: a sparse 6-gene network, every gene knocked down singly plus three doubles; the
posterior mean of W must correlate with the truth (> 0.9) and place its largest entries on the
true edges. Negative control: the same cells with shuffled perturbation labels carry no
information about W, and the same fit must fail to recover it (correlation < 0.5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpyro import handlers
from numpyro.infer import Predictive

import semimech as sm
from semimech.models import linear_steady_state

GENES = [f"g{i}" for i in range(6)]
EDGES = {(0, 1): 0.6, (1, 2): -0.6, (3, 4): 0.5, (2, 5): 0.6, (4, 0): -0.5}  # (regulator, gene)
LABELS = ["control"] + GENES + ["g0+g3", "g1+g4", "g2+g5"]


def _true_sites():
    wz = np.zeros((6, 6), np.float32)
    for (j, i), w in EDGES.items():
        wz[j, i] = w
    tz = np.zeros((len(GENES), 6), np.float32)
    np.fill_diagonal(tz, -1.5)  # knockdown: production x exp(-1.5) = 0.22
    return {"w_scale": np.float32(1.0), "w_local": np.ones((6, 6), np.float32), "w_z": wz,
            "control_state": np.ones(6, np.float32), "efficacy_loc": np.float32(0.0), "efficacy_sd": np.float32(1.0),
            "target_z": tz, "noise_sd": np.full(6, 0.3, np.float32)}, wz


def _simulate(rng_key, n_cells=40):
    labels = np.repeat(LABELS, n_cells)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(2.0, 0.3, (len(labels), 6)), columns=GENES)
    frame["perturbation"] = labels
    scaffold = sm.Design.from_frame(frame, readouts=GENES, perturbation_key="perturbation", control="control")
    truth, wz = _true_sites()
    # the package's own generator: the model with its latent sites fixed at the truth, no misfit
    model = handlers.condition(linear_steady_state.model, data=truth)
    y = Predictive(lambda data: model(data, residual=False), num_samples=1, return_sites=["y"])(
        rng_key, scaffold.model_data())["y"][0]
    frame[GENES] = np.asarray(y)
    return frame, wz


def _fit_W(frame):
    d = sm.Design.from_frame(frame, readouts=GENES, perturbation_key="perturbation", control="control")
    fit = sm.fit_svi(linear_steady_state.SPEC, d.pseudobulk(), rng_key=0, num_steps=2500, num_samples=200,
                     progress_bar=False, w_prior="laplace", w_scale=0.3)
    return fit.flat("W").mean(0)


@pytest.mark.slow
def test_linear_steady_state_recovers_W_and_shuffled_labels_do_not():
    import jax

    frame, wz = _simulate(jax.random.PRNGKey(1))
    off = ~np.eye(6, dtype=bool)
    W_hat = _fit_W(frame)
    r = np.corrcoef(W_hat[off], wz[off])[0, 1]
    top = set(zip(*np.unravel_index(np.argsort(-np.abs(np.where(off, W_hat, 0)).ravel())[: len(EDGES)], (6, 6))))
    assert r > 0.9, r
    assert len(top & set(EDGES)) >= 4, (top, W_hat.round(2))

    shuffled = frame.copy()
    shuffled["perturbation"] = np.random.default_rng(2).permutation(frame["perturbation"].to_numpy())
    r_null = np.corrcoef(_fit_W(shuffled)[off], wz[off])[0, 1]
    assert r_null < 0.5, r_null
