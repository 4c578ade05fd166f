"""Per-guide efficacy in the steady-state models (``shared_targets``: guides of a gene share its efficacy).

Known answer: guides of the same gene with different true efficacies are recovered in order and
within tolerance. Negative control: guides of equal true efficacy show no spurious spread. An
unseen guide of a seen gene is predicted with a wider interval than a seen guide.
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from numpyro import handlers
from numpyro.infer import Predictive

import semimech as sm
from semimech.errors import DesignError
from semimech.infer._sites import site_dims, trace
from semimech.models import _network as net
from semimech.models import latent_programs, linear_steady_state, production_decay

GENES = [f"g{i}" for i in range(6)]
#: true log production scale (efficacy) of each guide; g3..g5 are never targeted
GUIDES = {"g0_a": -1.2, "g0_b": -0.3, "g1_a": -1.0, "g1_b": -0.5, "g1_c": 0.0, "g2_a": -0.8, "g2_b": -0.8}
PATTERN = r"(g\d)_[abc]"


def _scaffold(labels, n_cells):
    lab = np.repeat(["control"] + list(labels), n_cells)
    frame = pd.DataFrame(np.random.default_rng(0).normal(2.0, 0.3, (len(lab), len(GENES))), columns=GENES)
    frame["perturbation"] = lab
    return frame, sm.Design.from_frame(frame, readouts=GENES, perturbation_key="perturbation", control="control")


def _truth(design, efficacies):
    """Latent sites of the guide-mode linear model that give each guide its efficacy (W: g0 -> g3)."""
    opts = net.shared_targets(design, PATTERN)
    sgi, var = opts["shared_gene_index"], opts["variant_of"]
    n, T = len(GENES), len(design.targets)
    shared = np.zeros((len(sgi), n), np.float32)
    tz = np.zeros((T, n), np.float32)
    for t, name in enumerate(design.targets):
        k = var[t]
        members = [efficacies[m] for m in design.targets if var[design.targets.index(m)] == k]
        shared[k, sgi[k]] = np.mean(members)
        tz[t, sgi[k]] = efficacies[name] - np.mean(members)
    wz = np.zeros((n, n), np.float32)
    wz[0, 3] = 0.6
    return opts, {"w_scale": np.float32(1.0), "w_local": np.ones((n, n), np.float32), "w_z": wz,
                  "control_state": np.ones(n, np.float32), "efficacy_loc": np.float32(0.0),
                  "efficacy_sd": np.float32(1.0), "guide_sd": np.float32(1.0), "shared_z": shared, "target_z": tz,
                  "noise_sd": np.full(n, 0.3, np.float32)}


def _simulate(efficacies, *, n_cells=60, seed=0):
    frame, scaffold = _scaffold(efficacies, n_cells)
    opts, truth = _truth(scaffold, efficacies)
    model = handlers.condition(linear_steady_state.model, data=truth)
    pred = Predictive(lambda data, y=None: model(data, y=y, residual=False, **opts), num_samples=1,
                      return_sites=["y"])
    frame[GENES] = np.asarray(pred(jax.random.PRNGKey(seed), scaffold.model_data())["y"][0])
    return sm.Design.from_frame(frame, readouts=GENES, perturbation_key="perturbation", control="control")


def _guide_efficacies(fit):
    """Posterior draws of each guide's efficacy: its own gene's log production scale."""
    ls = fit.flat("log_scale")
    d = fit.design
    return {p: ls[:, d.perturbations.index(p), GENES.index(p.split("_")[0])] for p in GUIDES}


def _fit(design, **kw):
    opts = net.shared_targets(design, PATTERN)
    return sm.fit_svi(linear_steady_state.SPEC, design.pseudobulk(), rng_key=0, num_steps=kw.pop("steps", 1500),
                      num_samples=200, progress_bar=False, w_prior="laplace", w_scale=0.3, **opts, **kw)


# ---------------------------------------------------------------- structure (fast)
@pytest.mark.parametrize("spec", [linear_steady_state.SPEC, production_decay.SPEC, latent_programs.SPEC])
def test_guide_mode_adds_sites_only_when_asked(spec):
    _, d = _scaffold(GUIDES, 2)
    data = d.model_data()
    plain = site_dims(spec.model, data)
    assert not {"shared_z", "guide_sd", "context_sd"} & set(plain)
    opts = net.shared_targets(d, PATTERN)
    dims = site_dims(lambda data, y=None: spec.model(data, y=y, **opts), data)
    assert dims["shared_z"] == ("shared_targets", "genes") and dims["guide_sd"] == ()
    assert "context_sd" not in dims  # every shared target is a modelled gene
    assert set(dims) - set(plain) == {"shared_z", "guide_sd"}


def test_guide_efficacy_is_shared_plus_guide_deviation():
    _, d = _scaffold(GUIDES, 2)
    opts, truth = _truth(d, GUIDES)
    tr = trace(lambda data, y=None: handlers.condition(linear_steady_state.model, data=truth)(data, y=y, **opts),
               d.model_data())
    ls = np.asarray(tr["log_scale"]["value"])
    for p, eff in GUIDES.items():
        row = ls[d.perturbations.index(p)]
        g = GENES.index(p.split("_")[0])
        assert row[g] == pytest.approx(eff, abs=1e-6)
        assert np.all(np.delete(row, g) == 0.0)  # a guide edits only its gene's production
    assert opts["shared_gene_index"].tolist() == [0, 1, 2]


def test_shared_targets_bad_input_is_clear():
    _, d = _scaffold(GUIDES, 2)
    with pytest.raises(DesignError, match="not in the design"):
        net.shared_targets(d, {"g9_a": "g9"})
    with pytest.raises(DesignError, match="matches no target"):
        net.shared_targets(d, r"(x)_\d")
    with pytest.raises(DesignError, match="go together"):
        site_dims(lambda data, y=None: linear_steady_state.model(data, y=y, variant_of=np.zeros(7, int)),
                  d.model_data())
    with pytest.raises(DesignError, match="shared-target index"):
        site_dims(lambda data, y=None: linear_steady_state.model(
            data, y=y, variant_of=np.full(7, 3), shared_gene_index=np.array([0, 1, 2])), d.model_data())


# ---------------------------------------------------------------- recovery (slow)
@pytest.mark.slow
def test_guide_efficacies_recovered_and_equal_guides_show_no_spread():
    fit = _fit(_simulate(GUIDES))
    est = {p: float(np.mean(v)) for p, v in _guide_efficacies(fit).items()}
    sd = {p: float(np.std(v)) for p, v in _guide_efficacies(fit).items()}
    for p, eff in GUIDES.items():
        assert abs(est[p] - eff) < 0.3, (p, est[p], eff)
        assert sd[p] < 0.3  # contraction: prior sd of an efficacy is > 1
    assert est["g0_a"] < est["g0_b"] - 0.5 and est["g1_a"] < est["g1_b"] < est["g1_c"]
    assert np.median(fit.flat("guide_sd")) > 0.2

    # negative control: the same guides with equal true efficacy per gene -> no spurious spread
    equal = {p: {"g0": -0.75, "g1": -0.5, "g2": -0.8}[p[:2]] for p in GUIDES}
    null = _fit(_simulate(equal, seed=1))
    est0 = {p: float(np.mean(v)) for p, v in _guide_efficacies(null).items()}
    for g, members in (("g0", ["g0_a", "g0_b"]), ("g1", ["g1_a", "g1_b", "g1_c"])):
        spread = max(est0[m] for m in members) - min(est0[m] for m in members)
        assert spread < 0.25, (g, spread)
    assert est0["g0_b"] - est0["g0_a"] < (est["g0_b"] - est["g0_a"]) / 3


@pytest.mark.slow
def test_unseen_guide_of_seen_gene_is_predicted_with_wider_interval():
    d = _simulate(GUIDES, n_cells=30)
    held = "g1_c"
    train = d.subset(d.perturbation_index != d.perturbations.index(held))  # encodings keep g1_c
    fit = _fit(train)
    pred = sm.predict(fit, [held, "g1_b", "control"], rng_key=0)
    lo, hi = pred.interval(0.9, kind="mean")
    width = hi - lo
    g1 = GENES.index("g1")
    assert np.all(np.isfinite(pred.draws["mean"]))
    assert width[0, g1] > 1.3 * width[1, g1], width[:, g1]
    # the unseen guide still inherits g1's shared knockdown: its interval sits around a drop
    ctrl = pred.summary(kind="mean")["mean"][2, g1]
    assert pred.summary(kind="mean")["mean"][0, g1] < ctrl


def test_shared_targets_are_taken_by_name_in_another_design():
    """Options built on one design and fitted on another (its genes in another order; fewer guides): each target's
    shared target is taken by name and each shared target's gene found among the fitted design's genes. A plain
    array is taken as it is (the negative control: the guides of g0 would edit g5)."""
    from semimech.infer.fit import resolved_options

    frame, d = _scaffold(GUIDES, 2)
    opts = net.shared_targets(d, PATTERN)
    flipped = sm.Design.from_frame(frame, readouts=GENES[::-1], perturbation_key="perturbation", control="control")
    fewer = sm.Design.from_frame(frame[~frame.perturbation.isin(["g0_a", "g1_c"])], readouts=GENES[::-1],
                                 perturbation_key="perturbation", control="control")
    for other in (flipped, fewer):
        got = resolved_options(linear_steady_state.SPEC, opts, "svi", design=other)
        own = net.shared_targets(other, PATTERN)
        for key in ("variant_of", "shared_gene_index"):
            np.testing.assert_array_equal(got[key], own[key], err_msg=key)
    plain = resolved_options(linear_steady_state.SPEC, {k: np.asarray(v) for k, v in opts.items()}, "svi",
                             design=flipped)
    assert plain["shared_gene_index"].tolist() == [0, 1, 2] != net.shared_targets(flipped, PATTERN)[
        "shared_gene_index"].tolist()
    extra = sm.Design.from_frame(frame.assign(perturbation=frame.perturbation.replace("g2_b", "g2_z")),
                                 readouts=GENES, perturbation_key="perturbation", control="control")
    with pytest.raises(DesignError, match=r"variant_of has no row for 1 of the design's 7 targets: \['g2_z'\]"):
        resolved_options(linear_steady_state.SPEC, opts, "svi", design=extra)
