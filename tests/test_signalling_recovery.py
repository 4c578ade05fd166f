"""Slow: edge posteriors of the signalling-network model recover a known network; shuffled labels do not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

STIMULI = [f"s{i}" for i in range(4)]
LAYER1 = [f"a{i}" for i in range(5)]
LAYER2 = [f"b{i}" for i in range(5)]


def _auc(scores, labels) -> float:
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@pytest.fixture(scope="module")
def problem():
    from semimech.models import signalling_network as sn
    from semimech.models._signalling_sim import factorial_labels, simulate

    edges = [(s, 1, a) for s in STIMULI for a in LAYER1] + [(a, 1, b) for a in LAYER1 for b in LAYER2]
    pkn = pd.DataFrame(edges, columns=["source", "sign", "target"])
    net = sn.compile_network(pkn, stimuli={s.upper(): s for s in STIMULI},
                             inhibitors={f"{a.upper()}i": a for a in LAYER1},
                             readouts={n.upper(): n for n in LAYER1 + LAYER2}, compress=False, and_gates=False)
    rng = np.random.default_rng(3)
    active = rng.random(len(net.edges)) < 0.4
    # every layer-1 node needs an input and every layer-2 node one active input, or it is unobservable
    for node in LAYER1 + LAYER2:
        rows = np.flatnonzero(net.edges.target.to_numpy() == node)
        if not active[rows].any():
            active[rng.choice(rows)] = True
    labels = factorial_labels([s.upper() for s in STIMULI], [f"{a.upper()}i" for a in LAYER1], max_stimuli=2)
    frame = simulate(net, labels, active=active, rng_key=0, replicates=2, noise_sd=0.1)
    return net, active, frame


def _edge_auc(net, active, frame, *, seed: int) -> float:
    import semimech as sm
    from semimech.models import signalling_network as sn

    readouts = [c for c in frame.columns if c != "label"]
    design = sm.Design.from_frame(frame, readouts=readouts, perturbation_key="label", control="none")
    fit = sm.fit_svi(sn.SPEC, design, rng_key=seed, num_steps=2500, num_samples=300, progress_bar=False,
                     network=sn.network_option(net, design=design), off_target=False, readout_block=False)
    table = sn.edge_posteriors(fit)
    return _auc(table.p_active.to_numpy(), active)


def test_edge_posteriors_separate_true_from_absent_edges(problem):
    net, active, frame = problem
    assert 15 <= active.sum() <= 30 and (~active).sum() >= 15
    assert _edge_auc(net, active, frame, seed=0) > 0.9


def test_shuffled_labels_do_not(problem):
    net, active, frame = problem
    shuffled = frame.assign(label=np.random.default_rng(1).permutation(frame.label.to_numpy()))
    assert _edge_auc(net, active, shuffled, seed=0) < 0.65
