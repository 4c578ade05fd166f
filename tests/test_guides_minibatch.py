"""Minibatch samplers: coverage, within-batch draws with controls, unbiased weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from semimech.errors import DesignError
from semimech.infer.minibatch import batch_aware_minibatches, uniform_minibatches


@pytest.fixture(scope="module")
def layout():
    rng = np.random.default_rng(1)
    batch = np.repeat([0, 1, 2], [500, 300, 200])
    ctrl = np.concatenate([rng.random(500) < 0.05, rng.random(300) < 0.3, rng.random(200) < 0.5])
    f = rng.normal(0, 1, 1000) + 8.0 * ctrl + batch  # a per-cell quantity whose sum we estimate
    return batch, ctrl, f


def test_uniform_covers_every_cell_once_per_epoch():
    n, b = 100, 20
    mbs = list(itertools.islice(uniform_minibatches(n, batch_size=b, rng_key=0), n // b))
    idx = np.concatenate([m.index for m in mbs])
    assert sorted(idx.tolist()) == list(range(n))
    assert all(np.allclose(m.weight, n / b) for m in mbs)
    again = next(uniform_minibatches(n, batch_size=b, rng_key=0))
    np.testing.assert_array_equal(again.index, mbs[0].index)  # explicit key: reproducible


def test_batch_aware_draws_within_one_batch_with_its_controls(layout):
    batch, ctrl, _ = layout
    for m in itertools.islice(batch_aware_minibatches(batch, ctrl, batch_size=64, rng_key=3), 50):
        assert len(m.index) == 64
        assert len(np.unique(batch[m.index])) == 1
        assert ctrl[m.index].sum() == 16  # control_fraction 0.25
        assert len(np.unique(m.index)) == 64


def test_batch_aware_weights_make_sums_unbiased(layout):
    batch, ctrl, f = layout
    total = f.sum()
    est, naive = [], []
    for m in itertools.islice(batch_aware_minibatches(batch, ctrl, batch_size=64, rng_key=5), 4000):
        est.append((m.weight * f[m.index]).sum())
        naive.append(len(f) / 64 * f[m.index].sum())
    se = np.std(est) / np.sqrt(len(est))
    assert abs(np.mean(est) - total) < 4 * se
    # negative control: ignoring the weights (as a uniform sampler would) is biased, controls are oversampled
    assert abs(np.mean(naive) - total) > 6 * se


def test_sampler_bad_inputs(layout):
    batch, ctrl, _ = layout
    with pytest.raises(DesignError, match="control_fraction"):
        next(batch_aware_minibatches(batch, ctrl, batch_size=8, rng_key=0, control_fraction=1.5))
    with pytest.raises(DesignError, match="is_control"):
        next(batch_aware_minibatches(batch, ctrl[:10], batch_size=8, rng_key=0))
    with pytest.raises(DesignError, match="batch_size"):
        next(uniform_minibatches(10, batch_size=0, rng_key=0))
    with pytest.raises(TypeError, match="rng_key is required"):
        next(uniform_minibatches(10, batch_size=2, rng_key=None))
