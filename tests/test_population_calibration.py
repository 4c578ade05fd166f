"""Calibration of unseen-target intervals (issue 13): heavy-tailed screens and knockdowns.

Known answers:
- a screen whose target effects are heavy-tailed (a few strong "hits" among many near-null
  targets, as in real knockout screens): for held-out targets drawn like the training ones
  (exchangeable: the same share of hits), the population's 90% intervals cover at about the
  nominal rate, the misses falling on the hits (the population's tail); negative control: the
  same posterior with the population's spread shrunk 20-fold under-covers (by a drop of 0.3, and
  below 0.35 once the shared response is fixed at its posterior mean as well).
- a spike-and-slab screen (1 target in 8 a strong hit, the others null): with
  ``effect_tails="strength"`` (a per-target strength in (0, 1), a scale mixture) the training
  hits get strength > 0.5 and the null targets < 0.5, and unseen targets' 90% intervals cover;
  negative control: a screen whose targets all deviate alike gives every target the same
  strength (spread < 0.1).
- a screen whose target effects are a two-cluster mixture (3 in 4 targets null, 1 in 4 a hit of
  one pathway: a shared shape at amplitude 0.8-1.2): with ``effect_predictive="urn"`` (the
  Polya-urn predictive: a seen target's departure with probability n / (n + 1)) unseen targets'
  90% intervals cover >= 0.8, with the hits covered better than by the Gaussian predictive of the
  same fit (whose misses fall on the hits while it covers every null entry), and the predictive
  mean sits at the mean of the seen targets' effects; seen targets' predictions are unchanged.
  Negative control: the same urn with the seen effects (the population scales) shrunk 20-fold
  under-covers (< 0.5).
- a screen of gene targets whose knockout lowers their own transcript by ~2.5 cell sd: an unseen
  target's own gene is predicted at the typical knockdown (the knockdown population); negative
  control: without it (``effect_knockdown=False``) the own gene is predicted at the shared response
  and misses.

The default run keeps the heavy-tailed screen and the option checks; the strength, urn and
knockdown screens (25-50 s each on two cores) are statistical validation: `pytest -m slow`.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import PopulationOnlyWarning
from semimech.models import additive


def screen(effects: np.ndarray, *, cells: int, seed: int, names=None, genes=None):
    """Cell-level Gaussian readouts (cell sd 1): 2 x cells controls plus ``cells`` per target."""
    rng = np.random.default_rng(seed)
    n_targets, n_genes = effects.shape
    targets = names or [f"T{i:02d}" for i in range(n_targets)]
    genes = genes or [f"g{j}" for j in range(n_genes)]
    labels = np.repeat(["control"] + targets, [2 * cells] + [cells] * n_targets)
    mean = np.vstack([np.zeros((2 * cells, n_genes))] + [np.tile(e, (cells, 1)) for e in effects])
    frame = pd.DataFrame(mean + rng.normal(size=mean.shape), columns=genes).assign(label=labels)
    return sm.Design.from_frame(frame, readouts=genes, perturbation_key="label", control="control")


def heavy_tailed(seed: int, *, n_targets: int = 30, n_genes: int = 6):
    """Shared response + deviations of sd 0.2, times 6 for every 6th target (the hits, 1 in 6)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.5, 1.0, n_genes) * rng.choice([-1, 1], n_genes)
    scale = np.where(np.arange(n_targets) % 6 == 0, 6.0, 1.0)[:, None]
    return m + 0.2 * scale * rng.normal(size=(n_targets, n_genes))


def unseen_fit(design, held, *, seed: int, steps: int, **options):
    """Fit the additive model without the ``held`` targets."""
    rows = np.isin(np.asarray(design.perturbations)[design.perturbation_index], held)
    train = sm.evaluate.split_rows(design, rows)[0]
    return sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=seed, num_steps=steps, num_samples=300,
                      progress_bar=False, effect_programs=1, **options)


def effect_draws(fit, held, *, seed: int):
    """Effect draws (draws, held, genes) of the held-out targets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PopulationOnlyWarning)
        pred = sm.predict(fit, ["control", *held], rng_key=seed + 1)
    return pred.draws["mean"][:, 1:] - pred.draws["mean"][:, :1]


def unseen_draws(design, held, *, seed: int, steps: int, **options):
    return effect_draws(unseen_fit(design, held, seed=seed, steps=steps, **options), held, seed=seed)


def pointed(fit, sites):
    """The same posterior with ``sites`` fixed at their posterior means (no uncertainty left in them)."""
    samples = dict(fit.samples)
    for site in sites:
        v = np.asarray(samples[site])
        samples[site] = np.broadcast_to(v.reshape(-1, *v.shape[2:]).mean(0), v.shape).copy()
    return dataclasses.replace(fit, samples=samples)


def shrunk(fit, factor: float):
    """The same posterior with the population's spread (deviation and program scales) times ``factor``."""
    samples = dict(fit.samples)
    for site in ("effect_scale", "program_scale"):
        samples[site] = np.asarray(samples[site]) * factor
    return dataclasses.replace(fit, samples=samples)


def coverage(draws, true, prob=0.9):
    lo, hi = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return float(np.mean((true >= lo) & (true <= hi)))


@pytest.mark.heavy
def test_heavy_tailed_screen_unseen_targets_cover_and_a_tiny_population_does_not():
    effects = heavy_tailed(0)
    design = screen(effects, cells=40, seed=0)
    held = [f"T{i:02d}" for i in range(6)]  # T00 is a hit: 1 in 6, as in training
    true = effects[:6]
    fit = unseen_fit(design, held, seed=0, steps=800)
    good = effect_draws(fit, held, seed=0)
    assert coverage(good, true) >= 0.75  # 36 entries: nominal 0.9 within sampling error
    # every unseen target gets the same population answer, so the misses fall on the hit (its tail)
    assert coverage(good[:, 1:], true[1:]) > coverage(good[:, :1], true[:1])
    # negative control: the same posterior with a population of tiny spread under-covers. Its intervals keep the
    # shared mean's posterior uncertainty (sd ~0.11 per gene here, 90% width ~0.38), which alone covers about half
    # of the small deviations: session 19 measured good / tiny 0.89 / 0.47 (non-centred SVI), 0.92 / 0.50 (centred
    # SVI, the default), 0.92 / 0.58 (NUTS), so that control is the drop, not an absolute level
    tiny = effect_draws(shrunk(fit, 0.05), held, seed=0)
    assert coverage(tiny, true) < coverage(good, true) - 0.3
    # and with the shared response fixed at its posterior mean too, nothing is left to cover the deviations: an
    # absolute level (session 20: 0.17; the good population with the same fixed response still covers 0.92)
    fixed = ("effect_centre", "baseline")
    assert coverage(effect_draws(pointed(shrunk(fit, 0.05), fixed), held, seed=0), true) < 0.35
    assert coverage(effect_draws(pointed(fit, fixed), held, seed=0), true) >= 0.75


def spike_slab(seed: int, *, n_targets: int = 32, n_genes: int = 8):
    """Shared response + every 8th target a hit (deviations of sd 1), the others null (sd 0.02)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.5, 1.0, n_genes) * rng.choice([-1, 1], n_genes)
    scale = np.where(np.arange(n_targets) % 8 == 0, 1.0, 0.02)[:, None]
    return m + scale * rng.normal(size=(n_targets, n_genes))


def strengths(fit, held):
    """Posterior mean strength of each training target (``effect_tails="strength"``), by name."""
    import jax

    u = fit.flat("effect_strength_z")[..., 0]
    st = jax.nn.sigmoid(fit.flat("effect_strength_loc")[:, None] + fit.flat("effect_strength_scale")[:, None] * u)
    return {t: float(v) for t, v in zip(fit.design.targets, np.asarray(st).mean(0)) if t not in held}


@pytest.mark.slow  # statistical validation, 25-50 s on CI's 2 cores
def test_strength_population_marks_the_hits_and_covers_unseen_targets():
    held = [f"T{i:02d}" for i in range(8)]  # T00 is a hit: 1 in 8, as in training
    effects = spike_slab(0)
    fit = unseen_fit(screen(effects, cells=400, seed=0), held, seed=0, steps=1000, effect_tails="strength")
    st = strengths(fit, held)
    hits = [t for t in st if int(t[1:]) % 8 == 0]
    assert min(st[t] for t in hits) > 0.5 > max(v for t, v in st.items() if t not in hits), st
    assert coverage(effect_draws(fit, held, seed=0), effects[:8]) >= 0.8  # 64 entries, nominal 0.9
    # negative control: every target deviates alike (Gaussian population): no target is singled out
    rng = np.random.default_rng(100)
    alike = effects.mean(0) + 0.35 * rng.normal(size=effects.shape)
    st = strengths(unseen_fit(screen(alike, cells=400, seed=0), held, seed=0, steps=1000, effect_tails="strength"),
                   held)
    assert max(st.values()) - min(st.values()) < 0.1, st


def knockdown_screen(seed: int, *, n: int = 12):
    """Gene targets G00..G11 on genes G00..G11: shared response (sd 0.15 deviations) + own gene -2.5 (sd 0.2)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.4, 0.8, n) * rng.choice([-1, 1], n)
    effects = m + 0.15 * rng.normal(size=(n, n))
    effects[np.arange(n), np.arange(n)] += -2.5 + 0.2 * rng.normal(size=n)
    names = [f"G{i:02d}" for i in range(n)]
    return screen(effects, cells=40, seed=seed, names=names, genes=names), effects


@pytest.mark.slow  # statistical validation, 25-50 s on CI's 2 cores
def test_an_unseen_gene_target_gets_the_typical_knockdown_of_its_own_gene():
    design, effects = knockdown_screen(1)
    held = ["G00", "G01", "G02"]
    own = np.arange(3)
    on = unseen_draws(design, held, seed=1, steps=2000)
    off = unseen_draws(design, held, seed=1, steps=2000, effect_knockdown=False)
    true_own = effects[own, own]
    err_on = np.abs(on.mean(0)[own, own] - true_own)
    err_off = np.abs(off.mean(0)[own, own] - true_own)
    assert np.mean(err_on) < 0.8, err_on  # knockdown -2.5 (sd 0.2) + deviation (sd 0.15) + noise
    assert coverage(on[:, own, own], true_own) >= 2 / 3
    assert np.all(err_off > 1.5), err_off  # negative control: predicted at the shared response, misses
    # the other genes are the population's answer either way: covered by the centred geometry's SVI (0.82, session
    # 18); the default geometry's SVI covers 0.73 here, the known under-coverage of unseen targets by mean-field SVI
    # (the strict xfail in test_effects_population.py)
    rest = ~np.eye(12, dtype=bool)[:3]
    centred = unseen_draws(design, held, seed=1, steps=2000, effect_deviation="centred")
    assert coverage(centred[:, rest], effects[:3][rest]) >= 0.75


@pytest.mark.slow
@pytest.mark.parametrize("factor", [1.0, 0.05])
def test_heavy_tailed_coverage_pooled_over_screens(factor):
    """Pooled over 4 heavy-tailed screens (4 x 6 held-out targets x 6 genes): 0.8-0.97; a population of
    tiny spread (scales x 0.05) < 0.5."""
    inside = []
    for seed in range(4):
        effects = heavy_tailed(seed, n_targets=36)
        design = screen(effects, cells=40, seed=seed)
        held = [f"T{i:02d}" for i in range(6)]
        draws = effect_draws(shrunk(unseen_fit(design, held, seed=seed, steps=3000), factor), held, seed=seed)
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        inside.append((effects[:6] >= lo) & (effects[:6] <= hi))
    cov = float(np.mean(np.concatenate(inside)))
    if factor == 1.0:
        assert 0.8 <= cov <= 0.97, cov
    else:
        assert cov < 0.5, cov


def test_effect_tails_must_be_named():
    design = screen(spike_slab(1, n_targets=4, n_genes=2), cells=5, seed=1)
    with pytest.raises(sm.errors.DesignError, match="effect tails must be one of"):
        sm.fit_svi(additive.SPEC, design.pseudobulk(), rng_key=0, num_steps=1, effect_tails="cauchy")


def two_cluster(seed: int, *, n_targets: int = 48, n_genes: int = 6):
    """Shared response + noise (sd 0.1); every 4th target also a pathway hit (one shape, amplitude 0.8-1.2)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.2, 0.4, n_genes) * rng.choice([-1, 1], n_genes)
    hit = rng.uniform(1.5, 2.5, n_genes) * rng.choice([-1, 1], n_genes)
    is_hit = (np.arange(n_targets) % 4 == 0)[:, None]
    amp = rng.uniform(0.8, 1.2, (n_targets, 1))
    return m + np.where(is_hit, amp * hit, 0.0) + 0.1 * rng.normal(size=(n_targets, n_genes))


@pytest.mark.slow  # statistical validation, 25-50 s on CI's 2 cores
def test_urn_predictive_covers_a_two_cluster_screen_and_a_shrunk_urn_does_not():
    effects = two_cluster(0)
    held = [f"T{i:02d}" for i in range(16)]  # 4 hits in 16, as in training (8 in 32)
    fit = unseen_fit(screen(effects, cells=40, seed=0), held, seed=0, steps=800, effect_predictive="urn")
    assert "effect_urn_z" not in fit.samples  # a site of the prediction only: the fit is the Gaussian's
    gauss_fit = dataclasses.replace(fit, options={**fit.options, "effect_predictive": "gaussian"})
    urn, gauss = effect_draws(fit, held, seed=0), effect_draws(gauss_fit, held, seed=0)
    true = effects[:16]
    hits = np.arange(16) % 4 == 0
    assert coverage(urn, true) >= 0.8  # 96 entries, nominal 0.9
    assert coverage(urn[:, hits], true[hits]) >= coverage(gauss[:, hits], true[hits]) + 0.1
    assert coverage(gauss[:, ~hits], true[~hits]) == 1.0  # the Gaussian over-covers the nulls ...
    assert coverage(urn[:, ~hits], true[~hits]) < 1.0  # ... the urn's intervals follow the null cluster
    # its mean is the seen targets' mean effect (the train-mean rule's), the Gaussian's is not
    seen = [list(fit.design.targets).index(t) for t in fit.design.targets if t not in held]
    seen_mean = fit.flat("effect")[:, seen].mean(axis=(0, 1))
    assert np.abs(urn.mean((0, 1)) - seen_mean).max() < 0.05
    assert np.abs(gauss.mean((0, 1)) - seen_mean).max() > 0.1
    # negative control: the same urn over seen effects shrunk 20-fold under-covers
    assert coverage(effect_draws(shrunk(fit, 0.05), held, seed=0), true) < 0.5
    # seen targets are answered from their data either way; the urn is marked in the sources
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PopulationOnlyWarning)
        a = sm.predict(fit, ["T20", "T00"], rng_key=3)
        b = sm.predict(gauss_fit, ["T20", "T00"], rng_key=3)
    np.testing.assert_allclose(a.draws["mean"][:, 0], b.draws["mean"][:, 0], rtol=1e-6)  # float32: a few ulps apart
    assert list(a.sources.parts) == ["T20: data", "T00: population (urn of seen targets)"]
    assert list(a.sources.source) == ["data", "population"] and list(b.sources.parts)[1] == "T00: population"


def test_urn_sources_pick_seen_targets_at_rate_n_over_n_plus_alpha():
    from semimech.models._effects import urn_sources

    seen = np.array([True] * 6 + [False] * 2000)
    z = np.random.default_rng(0).normal(size=seen.size)
    for alpha, rate in [(1.0, 6 / 7), (6.0, 0.5), (1e6, 0.0)]:
        src = np.asarray(urn_sources(seen, z, alpha))
        assert np.array_equal(src[:6], np.arange(6))  # seen targets keep their own
        copied = src[6:] < 6
        assert abs(copied.mean() - rate) < 0.03, (alpha, copied.mean())
        assert np.all(src[6:][~copied] == np.arange(6, seen.size)[~copied])  # base draws: their own fresh z
        if rate:  # uniform over the seen targets
            assert np.bincount(src[6:][copied], minlength=6).min() > 0.7 * copied.sum() / 6


@pytest.mark.parametrize("option", [{"effect_predictive": "dirichlet"}, {"effect_urn_concentration": 0.0}])
def test_urn_options_must_be_valid(option):
    design = screen(spike_slab(1, n_targets=4, n_genes=2), cells=5, seed=1)
    with pytest.raises(sm.errors.DesignError, match="effect_predictive|effect_urn_concentration"):
        sm.fit_svi(additive.SPEC, design.pseudobulk(), rng_key=0, num_steps=1, **option)
