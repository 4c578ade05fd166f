"""Intervals of the signalling-network model under structural misfit and a replicate noise prior.

Known answer: data = network steady state + a per-condition misfit (sd 0.2, what no network
explains) + assay noise (sd 0.05, which technical replicates measure). With the replicate prior
and the learned structural error (``misfit``, joint or cut (the default)) the 90% intervals of unseen inhibitor
combinations cover near 90%; the negative control holds the noise at the replicate level
(``misfit=None``) and must under-cover. The quick test checks the sites; the fits are slow.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

STIMULI = ["s0", "s1", "s2"]
LAYER1 = ["a0", "a1", "a2"]
LAYER2 = ["b0", "b1", "b2"]
ASSAY_SD, MISFIT_SD = 0.05, 0.2


def _network():
    from semimech.models import signalling_network as sn

    edges = [(s, 1, a) for s in STIMULI for a in LAYER1] + [(a, 1, b) for a in LAYER1 for b in LAYER2]
    pkn = pd.DataFrame(edges, columns=["source", "sign", "target"])
    return sn.compile_network(pkn, stimuli={s.upper(): s for s in STIMULI},
                              inhibitors={f"{a.upper()}i": a for a in LAYER1},
                              readouts={n.upper(): n for n in LAYER1 + LAYER2}, compress=False, and_gates=False)


def _replicate_noise(readouts, rng):
    """A prior from 40 duplicated measurements at the assay's sd (df 40, as HepG2's t = 0 duplicates)."""
    import semimech as sm
    from semimech.measurement import from_replicates

    base = rng.normal(2.0, 0.5, (40, len(readouts)))
    y = np.repeat(base, 2, axis=0) + ASSAY_SD * rng.normal(size=(80, len(readouts)))
    frame = pd.DataFrame(y, columns=readouts, index=[f"t{i}" for i in range(80)])
    frame["label"] = ["none", "none"] + [f"c{i // 2}" for i in range(2, 80)]
    reps = sm.Design.from_frame(frame, readouts=readouts, perturbation_key="label", control="none")
    return from_replicates(reps)


@pytest.fixture(scope="module")
def problem():
    import semimech as sm
    from semimech.models._signalling_sim import factorial_labels, simulate

    net = _network()
    rng = np.random.default_rng(5)
    active = rng.random(len(net.edges)) < 0.5
    for node in LAYER1 + LAYER2:  # every node reachable
        rows = np.flatnonzero(net.edges.target.to_numpy() == node)
        if not active[rows].any():
            active[rng.choice(rows)] = True
    labels = factorial_labels([s.upper() for s in STIMULI], [f"{a.upper()}i" for a in LAYER1], max_stimuli=2,
                              max_inhibitors=2)
    frame = simulate(net, labels, active=active, rng_key=0, replicates=1, noise_sd=ASSAY_SD)
    readouts = [c for c in frame.columns if c != "label"]
    perturbed = (frame.label != "none").to_numpy()[:, None]
    frame[readouts] = frame[readouts] + perturbed * MISFIT_SD * rng.normal(size=(len(frame), len(readouts)))
    design = sm.Design.from_frame(frame, readouts=readouts, perturbation_key="label", control="none")
    design = design.with_noise(_replicate_noise(readouts, rng))
    double = [lab for lab in labels if sum(p.endswith("i") for p in lab.split("+")) == 2]
    train = design.select_perturbations([lab for lab in labels if lab not in double])
    truth = frame.set_index("label").loc[double, readouts].to_numpy()
    return net, train, double, truth


def _coverage(problem, *, misfit, prob=0.9, **options):
    import semimech as sm
    from semimech.models import signalling_network as sn

    net, train, double, truth = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.fit_svi(sn.SPEC, train, rng_key=0, num_steps=2000, num_samples=300, progress_bar=False,
                         network=sn.network_option(net, design=train), off_target=False, readout_block=False,
                         misfit=misfit, **options)
        pred = sm.predict(fit, double, rng_key=1, num_cells=1, steady_state_draws=0)
    lo, hi = pred.interval(prob)
    return float(np.mean((truth >= lo) & (truth <= hi))), fit


@pytest.mark.slow
def test_learned_misfit_covers_unseen_combinations(problem):
    cov, fit = _coverage(problem, misfit=1.0, misfit_cut=False)
    assert 0.8 <= cov <= 0.98, cov
    misfit = np.asarray(fit.samples["misfit_sd"]).reshape(-1, 9).mean(0)
    assert 0.1 < np.median(misfit) < 0.35  # the structural error found, near its 0.2


@pytest.mark.slow
def test_cut_misfit_covers_unseen_combinations(problem):
    cov, fit = _coverage(problem, misfit=1.0, misfit_cut=True)
    assert 0.8 <= cov <= 0.98, cov


@pytest.mark.slow
def test_noise_held_at_the_replicates_under_covers(problem):
    cov, _ = _coverage(problem, misfit=None)
    assert cov < 0.75, cov  # measured 0.75 with a df-10 prior (the noise stretched towards the misfit)


def test_misfit_sites_follow_the_noise_source():
    """Quick: with a replicate prior and ``misfit`` the total sd is a deterministic of assay and
    misfit; learned noise has no misfit; ``misfit=None`` keeps the replicate prior as the whole sd."""
    import jax
    from numpyro import handlers

    import semimech as sm
    from semimech.models import signalling_network as sn

    rng = np.random.default_rng(0)
    readouts = ["A0", "A1"]
    frame = pd.DataFrame({"label": ["none", "S0", "S1", "S0+S1"], "A0": rng.normal(size=4), "A1": rng.normal(size=4)},
                         index=[f"r{i}" for i in range(4)])
    net = sn.compile_network(pd.DataFrame([("s0", 1, "a0"), ("s1", 1, "a1")], columns=["source", "sign", "target"]),
                             stimuli={"S0": "s0", "S1": "s1"}, inhibitors={}, readouts={"A0": "a0", "A1": "a1"},
                             compress=False, and_gates=False)
    design = sm.Design.from_frame(frame, readouts=readouts, perturbation_key="label", control="none")

    def sites(d, **kw):
        opt = sn.network_option(net, design=d)
        tr = handlers.trace(handlers.seed(sn.model, jax.random.PRNGKey(0))).get_trace(
            d.model_data(), network=opt, y=d.dense_y(), **kw)
        return tr

    tr = sites(design.with_noise(_replicate_noise(readouts, rng)), misfit=1.0)
    assert tr["noise_sd"]["type"] == "deterministic" and tr["misfit_sd"]["type"] == "sample"
    total = np.sqrt(np.asarray(tr["assay_sd"]["value"]) ** 2 + np.asarray(tr["misfit_sd"]["value"]) ** 2)
    np.testing.assert_allclose(np.asarray(tr["noise_sd"]["value"]), total, rtol=1e-6)
    plain = sites(design.with_noise(_replicate_noise(readouts, rng)), misfit=None)
    assert "misfit_sd" not in plain and plain["noise_sd"]["type"] == "sample"
    learned = sites(design, misfit=1.0)
    assert "misfit_sd" not in learned and learned["noise_sd"]["type"] == "sample"
    option = sites(design, noise_sd=0.1, misfit=1.0)
    assert option["noise_sd"]["type"] == "deterministic" and "assay_sd" in option


@pytest.mark.heavy
def test_cut_misfit_leaves_the_network_fit_to_the_measurement_noise():
    """Quick: with ``misfit_cut`` the gradient of the log density in the network's parameters is
    that of the model observed with the measurement sd alone (the misfit does not feed back);
    the joint misfit (control) changes it."""
    import jax
    from numpyro import handlers
    from numpyro.infer.util import log_density

    import semimech as sm
    from semimech.models import signalling_network as sn

    rng = np.random.default_rng(0)
    net = _network()
    readouts = list(net.readouts)
    labels = ["none", "S0", "S1", "S0+A0i", "S1+A1i", "S2+A2i"]
    frame = pd.DataFrame(rng.normal(2.0, 0.3, (6, len(readouts))), columns=readouts, index=[f"r{i}" for i in range(6)])
    frame["label"] = labels
    design = sm.Design.from_frame(frame, readouts=readouts, perturbation_key="label", control="none")
    design = design.with_noise(_replicate_noise(readouts, rng))
    data, y = design.model_data(), design.dense_y()
    opt = dict(network=sn.network_option(net, design=design), off_target=False, readout_block=False, y=y)
    tr = handlers.trace(handlers.seed(sn.model, jax.random.PRNGKey(0))).get_trace(data, misfit=1.0, **opt)
    params = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    params["misfit_sd"] = 0.3 * np.ones(len(readouts), np.float32)  # a misfit that matters

    def grad(p, **kw):
        return jax.grad(lambda q: log_density(sn.model, (data,), {**opt, **kw}, q)[0])(p)

    cut = grad(params, misfit=1.0, misfit_cut=True)
    joint = grad(params, misfit=1.0, misfit_cut=False)
    plain = {k: v for k, v in params.items() if k not in ("assay_sd", "misfit_sd")}
    plain["noise_sd"] = params["assay_sd"]
    alone = grad(plain, misfit=None)
    for site in ("offset_z", "scale_z", "edge_z", "basal_z"):
        np.testing.assert_allclose(np.asarray(cut[site]), np.asarray(alone[site]), rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(joint["offset_z"]), np.asarray(alone["offset_z"]), atol=1e-3)
    assert np.all(np.asarray(cut["misfit_sd"]) != 0)


def test_a_cut_posterior_is_fitted_by_svi_and_refused_by_nuts():
    """Quick: with the measurement noise given, the default structural error is a cut factor:
    ``sm.fit`` chooses SVI and says why, ``fit_nuts`` refuses with the fix; negative controls:
    ``misfit_cut=False`` and a learned noise (no cut factor) leave NUTS available."""
    import semimech as sm
    from semimech.errors import InferenceError
    from semimech.infer.auto import choose_method
    from semimech.models import signalling_network as sn

    rng = np.random.default_rng(0)
    net = _network()
    readouts = list(net.readouts)
    frame = pd.DataFrame(rng.normal(2.0, 0.3, (6, len(readouts))), columns=readouts, index=[f"r{i}" for i in range(6)])
    frame["label"] = ["none", "S0", "S1", "S0+A0i", "S1+A1i", "S2+A2i"]
    plain = sm.Design.from_frame(frame, readouts=readouts, perturbation_key="label", control="none")
    design = plain.with_noise(_replicate_noise(readouts, rng))
    opts = dict(network=sn.network_option(net, design=design), off_target=False, readout_block=False)
    method, reason = choose_method(sn.SPEC, design, **opts)
    assert method == "svi" and "cut posterior" in reason and "misfit_cut" in reason
    with pytest.raises(InferenceError, match="cut posterior.*misfit_cut=False"):
        sm.fit_nuts(sn.SPEC, design, rng_key=0, num_warmup=2, num_samples=2, progress_bar=False, **opts)
    assert choose_method(sn.SPEC, design, misfit_cut=False, **opts)[0] != "svi" or \
        "cut" not in choose_method(sn.SPEC, design, misfit_cut=False, **opts)[1]
    assert "cut" not in choose_method(sn.SPEC, plain, **{**opts, "network": sn.network_option(net, design=plain)})[1]
