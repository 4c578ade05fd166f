"""Slow validation: the additive model recovers known effects from the package's simulator.

Known answer: effects simulated by ``semimech.simulate.simulate_screen``. Negative control:
the same data with perturbation labels shuffled across cells must NOT recover them.
"""

from __future__ import annotations

import numpy as np
import pytest

import semimech as sm
from semimech.models import additive
from semimech.simulate import simulate_screen

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def screen():
    s = simulate_screen(n_cells=4000, n_genes=60, n_targets=6, n_batches=2, rng_key=11, effect_sparsity=0.2,
                        effect_sd=0.8, combos=2, density=0.5)
    lib = np.asarray(s.truth.library_size)
    s.adata.obs["library_size"] = lib / lib.mean()
    return s


def _fit(adata):
    # size factors = the simulated library sizes: with total-count size factors a target that
    # moves many genes also moves its cells' totals, and its effects are identified only up to
    # that compositional shift (a property of normalisation, not of the model)
    design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control", batch_key="batch",
                                    size_factor_key="library_size")
    return sm.fit_svi(additive.SPEC, design.pseudobulk(), rng_key=0, num_steps=3000, num_samples=300,
                      progress_bar=False), design


def _effects(fit, truth):
    order = [fit.design.targets.index(t) for t in truth.targets]
    return fit.flat("effect")[:, order]


def test_recovers_simulated_effects(screen):
    fit, design = _fit(screen.adata)
    draws = _effects(fit, screen.truth)
    true = np.asarray(screen.truth.effects)
    post = draws.mean(0)
    assert np.corrcoef(post.ravel(), true.ravel())[0, 1] > 0.9
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    big = np.abs(true) > 0.3
    inside = ((true >= lo) & (true <= hi))[big].mean()
    assert inside > 0.75, f"90% intervals hold only {inside:.2f} of the true non-zero effects"
    # contraction: the posterior is far narrower than the prior scale of an effect
    assert np.median(draws.std(0)[big]) < 0.2 * np.abs(true[big]).mean()


def test_shuffled_labels_do_not_recover(screen):
    a = screen.adata.copy()
    rng = np.random.default_rng(0)
    a.obs["perturbation"] = rng.permutation(a.obs["perturbation"].to_numpy())
    fit, _ = _fit(a)
    post = _effects(fit, screen.truth).mean(0)
    r = np.corrcoef(post.ravel(), np.asarray(screen.truth.effects).ravel())[0, 1]
    assert r < 0.3, f"shuffled labels still correlate with the truth (r = {r:.2f})"
