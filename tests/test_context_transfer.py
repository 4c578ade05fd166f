"""Unseen contexts of a label design: how far the mean response transfers, and each context's noise.

In a design with contexts (cell lines) the additive model's mean response of the targets in
context ``c`` is ``effect_mean_scale * (sqrt(rho) * shared + sqrt(1 - rho) * own[c])``, with the
transfer ``rho = effect_transfer`` learned from how well the seen contexts agree, and each
context scales each gene's noise (``noise_context_*``). Known answer: lines that share their
mean response (rho = 1): an unseen line's knockdowns are predicted at it. Negative control:
lines whose responses are independent (rho = 0, as McFaline-Figueroa 2023's three lines): the
unseen line is predicted near no change, not at the training lines' response, and its intervals
still cover; the old full transfer (``effect_transfer="full"``) moves it and misses.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import numpyro
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import DesignError, PopulationOnlyWarning
from semimech.infer._sites import abstract_trace
from semimech.measurement import context_noise
from semimech.models import additive

NEW_SITES = {"effect_mean_scale", "effect_transfer", "effect_mean_z", "effect_mean_context_z", "noise_context_sd",
             "noise_context_z", "condition_noise"}


def simulate_lines(*, rho: float, seed: int, n_genes: int = 30, n_targets: int = 5, cells: int = 60,
                   noisy_line: float = 1.0):
    """Cell-level Gaussian readouts of ``n_targets`` knockdowns in lines L0, L1, L2 (cell sd 1).

    A knockdown's effect in line ``c`` is the line's mean response ``0.8 * (sqrt(rho) a +
    sqrt(1 - rho) b_c)`` plus a target deviation (sd 0.2) shared across lines. Line L2's genes
    g0-g14 have cell sd ``noisy_line``. Returns the cell frame and the true effects (lines,
    targets, genes).
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n_genes)
    dev = 0.2 * rng.normal(size=(n_targets, n_genes))
    rows, effects = [], []
    genes = [f"g{j}" for j in range(n_genes)]
    targets = [f"T{i}" for i in range(n_targets)]
    for c in range(3):
        base = rng.normal(size=n_genes)
        m = 0.8 * (np.sqrt(rho) * a + np.sqrt(1.0 - rho) * rng.normal(size=n_genes))
        eff = m + dev
        effects.append(eff)
        sd = np.ones(n_genes)
        if c == 2:
            sd[: n_genes // 2] = noisy_line
        for lab, mu in [("control", base)] + [(t, base + e) for t, e in zip(targets, eff)]:
            y = mu + sd * rng.normal(size=(cells, n_genes))
            rows.append(pd.DataFrame(y, columns=genes).assign(label=lab, line=f"L{c}"))
    return pd.concat(rows, ignore_index=True), np.array(effects), genes, targets


def _design(frame, genes):
    return sm.Design.from_frame(frame, readouts=genes, perturbation_key="label", control="control",
                                context_key="line")


def test_only_designs_with_contexts_get_the_transfer_and_context_noise_sites():
    frame, _, genes, _ = simulate_lines(rho=0.5, seed=0, n_genes=4, n_targets=2, cells=3)
    with_ctx = _design(frame, genes).pseudobulk()
    without = sm.Design.from_frame(frame[frame.line == "L0"], readouts=genes, perturbation_key="label",
                                   control="control").pseudobulk()
    sites = set(abstract_trace(additive.model, with_ctx.model_data(), None))
    assert NEW_SITES <= sites
    assert not NEW_SITES & set(abstract_trace(additive.model, without.model_data(), None))  # unchanged
    full = set(abstract_trace(lambda d, y=None: additive.model(d, effect_transfer="full", context_noise=False, y=y),
                              with_ctx.model_data(), None))
    assert not NEW_SITES & full and "effect_centre" in full  # the model as it was before
    tr = abstract_trace(additive.model, with_ctx.model_data(), None)
    assert tuple(tr["effect_mean_context_z"][1]) == (3, 4) and tuple(tr["noise_context_z"][1]) == (3, 4)


def test_bad_effect_transfer_is_a_clear_error():
    frame, _, genes, _ = simulate_lines(rho=0.5, seed=0, n_genes=3, n_targets=1, cells=3)
    data = _design(frame, genes).pseudobulk().model_data()
    with pytest.raises(DesignError, match=r"effect_transfer must be one of \('learned', 'full'\), got 'none'"):
        numpyro.handlers.seed(additive.model, 0)(data, effect_transfer="none")


def test_context_noise_scales_each_context_and_gene():
    data = {"n_contexts": 2, "n_genes": 3, "perturbation_context": np.array([0, 1, 1])}
    noise = np.array([1.0, 2.0, 0.5])
    z = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
    fixed = {"noise_context_sd": 0.5, "noise_context_z": z}
    m = np.exp(0.5 * z)[[0, 1, 1]]
    for lik, want in (("normal", noise * m), ("negbin", noise / m**2)):
        with numpyro.handlers.trace() as tr, numpyro.handlers.substitute(data=fixed):
            out = numpyro.handlers.seed(context_noise, 0)(noise, data, likelihood=lik)
        np.testing.assert_allclose(out, want, rtol=1e-6)
        np.testing.assert_allclose(tr["condition_noise"]["value"], want, rtol=1e-6)
    # negative control: one context leaves the noise as it is, and samples nothing
    with numpyro.handlers.trace() as tr:
        out = numpyro.handlers.seed(context_noise, 0)(noise, {"n_contexts": 1}, likelihood="normal")
    assert out is noise and not tr


def _unseen_line(rho: float, *, seed: int = 0, steps: int = 2500, **options):
    """Fit on L0, L1 (controls + knockdowns) and L2's controls; predict L2's knockdowns."""
    frame, effects, genes, targets = simulate_lines(rho=rho, seed=seed, noisy_line=2.0)
    keep = (frame.line != "L2") | (frame.label == "control")
    train = _design(frame[keep], genes).pseudobulk()
    fit = sm.fit_svi(additive.SPEC, train, rng_key=seed, num_steps=steps, num_samples=300, progress_bar=False,
                     **options)
    labels = ["control@L2"] + [f"{t}@L2" for t in targets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PopulationOnlyWarning)
        pred = sm.predict(fit, labels, rng_key=seed + 1, num_cells=60)
    held = frame[frame.line == "L2"].groupby("label")[genes].mean()
    observed = held.loc[targets].to_numpy()
    lo, hi = np.quantile(pred.draws["observed_mean"][:, 1:], [0.05, 0.95], axis=0)
    point = pred.draws["mean"].mean(0)
    return {"fit": fit, "cover": (observed >= lo) & (observed <= hi), "effect": point[1:] - point[:1],
            "true": effects[2], "train": effects[:2], "observed": observed, "control": held.loc["control"].to_numpy()}


@pytest.mark.slow
def test_a_shared_mean_response_transfers_to_an_unseen_line():
    out = _unseen_line(rho=1.0)
    assert float(np.mean(out["fit"].flat("effect_transfer"))) > 0.7
    assert np.corrcoef(out["effect"].ravel(), out["true"].ravel())[0, 1] > 0.8
    assert np.mean(out["cover"]) >= 0.8


@pytest.mark.slow
def test_independent_lines_put_an_unseen_line_near_no_change_with_covering_intervals():
    """Negative control: the lines' responses are independent, so nothing transfers."""
    out = _unseen_line(rho=0.0)
    assert float(np.mean(out["fit"].flat("effect_transfer"))) < 0.5
    size = np.sqrt(np.mean(out["train"] ** 2))
    assert np.sqrt(np.mean(out["effect"] ** 2)) < 0.35 * size  # shrunk to no change
    assert np.mean(out["cover"]) >= 0.8
    err = lambda p: np.sqrt(np.mean((out["observed"] - p) ** 2))  # noqa: E731
    full = _unseen_line(rho=0.0, effect_transfer="full", context_noise=False)
    # the full transfer (the model before) carries the training lines' response over and misses
    assert np.sqrt(np.mean(full["effect"] ** 2)) > 0.5 * size
    assert err(out["control"] + out["effect"]) < err(full["control"] + full["effect"])
    assert np.mean(full["cover"]) < np.mean(out["cover"]) - 0.1
