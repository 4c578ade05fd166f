"""The default fit (sm.fit): NUTS for unreplicated designs below a size, SVI otherwise; it keeps the effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech import measurement as me
from semimech.models import additive


def _context_design(n_ctx=10, n_inhib=2, n_genes=2, effect_sd=0.2, noise_sd=0.12, seed=0):
    """Contexts x (control + each inhibitor alone), one row per condition, context-specific effects."""
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, 0.5, n_genes)
    rows, labels, ctx, effects = [], [], [], {}
    for c in range(n_ctx):
        offset = rng.normal(0.0, 0.2, n_genes)
        for j in range(-1, n_inhib):
            lab = "control" if j < 0 else f"i{j}@c{c}"
            e = np.zeros(n_genes) if j < 0 else effects.setdefault(lab, rng.normal(0.0, effect_sd, n_genes))
            rows.append(base + offset + e + rng.normal(0.0, noise_sd, n_genes))
            labels.append(lab)
            ctx.append(f"c{c}")
    frame = pd.DataFrame(rows, columns=[f"g{k}" for k in range(n_genes)]).assign(p=labels, ctx=ctx)
    frame.index = [f"{c}|{lab}" for c, lab in zip(ctx, labels)]
    d = sm.Design.from_frame(frame, readouts=[f"g{k}" for k in range(n_genes)], perturbation_key="p",
                             control="control", batch_key="ctx")
    return d, np.array([effects[t] for t in d.targets]).ravel()


def _slope(fit, truth):
    return float(np.polyfit(truth, fit.flat("effect").mean(0).ravel(), 1)[0])


def test_the_method_follows_the_design(norman_design, monkeypatch):
    import semimech.infer.auto as auto

    assert sm.choose_method(additive.SPEC, norman_design.pseudobulk())[0] == "svi"  # cells behind each row
    d, _ = _context_design()
    method, reason = sm.choose_method(additive.SPEC, d)
    assert method == "nuts" and "one observation per condition" in reason
    monkeypatch.setattr(auto, "NUTS_MAX_LATENT", 10)  # too large for NUTS: SVI, and the reason says so
    method, reason = sm.choose_method(additive.SPEC, d)
    assert method == "svi" and "exceed" in reason
    with pytest.raises(ValueError, match="method"):
        sm.fit(additive.SPEC, d, rng_key=0, method="laplace")


@pytest.mark.heavy
def test_fit_passes_row_mask_to_the_chosen_method_not_to_the_model(monkeypatch):
    """``row_mask`` is a fit argument: the choice's trace of the model must not receive it (it raised a
    TypeError from inside NumPyro), and the chosen fit gets it: the same draws as fit_svi with that mask."""
    import semimech.infer.auto as auto

    d, _ = _context_design(n_ctx=3)
    d = d.with_noise(me.fixed(0.12))  # a known noise: no warning about unreplicated rows
    monkeypatch.setattr(auto, "NUTS_MAX_LATENT", 1)  # SVI, so that the comparison below is quick
    mask = np.ones(d.n_obs, bool)
    mask[[2, 5]] = False
    kw = dict(num_steps=50, num_samples=20, progress_bar=False)
    got = sm.fit(additive.SPEC, d, rng_key=0, row_mask=mask, **kw)
    want = sm.fit_svi(additive.SPEC, d, rng_key=0, row_mask=mask, **kw)
    unmasked = sm.fit_svi(additive.SPEC, d, rng_key=0, **kw)
    assert got.method == "svi"
    np.testing.assert_array_equal(got.flat("effect"), want.flat("effect"))
    assert not np.array_equal(got.flat("effect"), unmasked.flat("effect"))  # the mask took effect


def test_default_fit_keeps_the_effects_of_an_unreplicated_design():
    """Known answer: with the noise sd known (0.12) and Gaussian effects (sd 0.2), each effect rests
    on one single-inhibitor row against one control row; the posterior-mean slope on the true
    effects is about 0.7 (NUTS, the exact posterior, with the default effect population: 0.70
    measured; 0.64 with horseshoe effects). Mean-field SVI shrinks further, to 0.52 (0.34 with
    horseshoe effects) on the same data (negative control in the slow test below)."""
    d, truth = _context_design()
    fit = sm.fit(additive.SPEC, d.with_noise(me.fixed(0.12)), rng_key=0, num_warmup=200, num_samples=200,
                 num_chains=1, progress_bar=False)
    assert fit.method == "nuts"
    assert 0.6 < _slope(fit, truth) < 1.0


@pytest.mark.slow
def test_mean_field_svi_over_shrinks_the_same_effects():
    """Negative control of the test above: the old default (mean-field SVI) over-shrinks (0.52 with the
    effect population, the default for label designs since issue 13; 0.34 with horseshoe effects, the
    default when this test was written, when its bound was 0.45; session 18)."""
    d, truth = _context_design()
    fit = sm.fit(additive.SPEC, d.with_noise(me.fixed(0.12)), rng_key=0, method="svi", num_steps=2000,
                 progress_bar=False)
    assert _slope(fit, truth) < 0.6
