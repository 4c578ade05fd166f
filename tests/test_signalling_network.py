"""Signalling-network model: the PKN compiler, the continuous-logic math, the model on tiny networks."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from semimech.errors import DesignError
from semimech.models import _logic, _pkn
from semimech.models._signalling_options import network_arrays, network_option


def sif(*edges):
    return pd.DataFrame(edges, columns=["source", "sign", "target"])


# s -> a -> b, readouts on a and b; inhibitors on a (upstream of b) and on b
CHAIN = sif(("s", 1, "a"), ("a", 1, "b"))


def chain(**kw):
    return _pkn.compile_network(CHAIN, stimuli={"S": "s"}, inhibitors={"Ai": "a", "Bi": "b"},
                                readouts={"A": "a", "B": "b"}, **kw)


def steady(net, stim_nodes, keep_nodes, *, w=0.9, basal=0.05, solve=False):
    arrays = network_arrays(network_option(net, targets=list(net.stimuli) + list(net.inhibitors), genes=["A", "B"]),
                            n_targets=len(net.stimuli) + len(net.inhibitors), n_genes=2)
    st = arrays["structure"]
    N, E = st.n_nodes, st.src.size
    p = _logic.LogicParams(w=jnp.full((E,), w), k=jnp.full((E,), 0.5), n=jnp.asarray(3.0), basal=jnp.full((N,), basal))
    idx = {n: i for i, n in enumerate(net.nodes)}
    stim = np.zeros((1, N))
    keep = np.ones((1, N))
    for n in stim_nodes:
        stim[0, idx[n]] = 1.0
    for n, k in keep_nodes.items():
        keep[0, idx[n]] = k
    if solve:
        st_cyc = st._replace(levels=())
        x, B, ok = _logic.fixed_point(p, jnp.asarray(stim), jnp.asarray(keep), st_cyc)
        assert bool(ok.all())
    else:
        x, B = _logic.closed_form(p, jnp.asarray(stim), jnp.asarray(keep), st)
    return {n: float(B[0, i]) for n, i in idx.items()}, {n: float(x[0, i]) for n, i in idx.items()}


def test_hill_is_normalised_and_monotone():
    import jax

    x = jnp.linspace(0.0, 1.0, 21)
    f = _logic.hill(x, 0.4, 2.5)
    assert float(f[0]) == pytest.approx(0.0, abs=1e-9) and float(f[-1]) == pytest.approx(1.0, rel=1e-6)
    assert bool(jnp.all(jnp.diff(f) > 0))
    # the closed form x^n / (x^n + k^n) (1 + k^n) where it is representable (float64 reference) ...
    xs, ks, ns = np.array([0.05, 0.3, 0.6, 0.9]), np.array([0.1, 0.5, 0.7, 0.2]), np.array([1.5, 3.0, 8.0, 2.0])
    ref = xs**ns / (xs**ns + ks**ns) * (1 + ks**ns)
    np.testing.assert_allclose(np.asarray(_logic.hill(jnp.asarray(xs), jnp.asarray(ks), jnp.asarray(ns))), ref,
                               rtol=1e-5)
    # ... and finite for steep switches with small x and k, where x^n + k^n underflows in float32 (was 0 / 0 = NaN;
    # LiverDREAM fits reach n ~ 30): the value is k^n / (x^n + k^n) -> 1 or 0, and its gradient is finite too
    x, k, n = jnp.asarray([0.0, 0.02, 0.05]), jnp.asarray(0.05), jnp.asarray(40.0)
    assert float(jnp.sum(x**n + k**n)) == 0.0  # the old denominator
    f = _logic.hill(x, k, n)
    assert np.allclose(np.asarray(f), [0.0, 0.0, 0.5], atol=1e-6)
    g = jax.grad(lambda kk, nn: jnp.sum(_logic.hill(x, kk, nn)), argnums=(0, 1))(k, n)
    assert all(np.isfinite(np.asarray(v)).all() for v in g)


@pytest.mark.parametrize("solve", [False, True])
def test_inhibitor_upstream_lowers_downstream_leaves_unchanged(solve):
    net = chain(compress=False)
    B0, _ = steady(net, ["s"], {}, solve=solve)
    Ba, _ = steady(net, ["s"], {"a": 0.1}, solve=solve)  # block a: upstream of b
    Bb, _ = steady(net, ["s"], {"b": 0.1}, solve=solve)  # block b: downstream of a
    assert B0["b"] > 0.5 and Ba["b"] < 0.5 * B0["b"]  # the readout below the block falls
    assert Ba["a"] == pytest.approx(B0["a"], abs=1e-6)  # the blocked node's activation is untouched
    assert Bb["a"] == pytest.approx(B0["a"], abs=1e-6)  # a block downstream leaves the readout unchanged
    unstim, _ = steady(net, [], {}, solve=solve)
    assert unstim["b"] < 0.2 * B0["b"]  # no stimulus, little signal (basal only)


def test_fixed_point_matches_closed_form_and_solves_feedback():
    net = chain(compress=False)
    for keep in ({}, {"a": 0.3}):
        c, _ = steady(net, ["s"], keep)
        f, _ = steady(net, ["s"], keep, solve=True)
        assert all(c[n] == pytest.approx(f[n], abs=1e-5) for n in c)
    fb = _pkn.compile_network(sif(("s", 1, "a"), ("a", 1, "b"), ("b", -1, "a")), stimuli={"S": "s"},
                              inhibitors={}, readouts={"A": "a", "B": "b"}, cycles="solve", compress=False)
    assert not fb.acyclic
    opt = network_option(fb, targets=["S"], genes=["A", "B"])
    st = network_arrays(opt, n_targets=1, n_genes=2)["structure"]
    E, N = st.src.size, st.n_nodes
    p = _logic.LogicParams(w=jnp.full((E,), 0.9), k=jnp.full((E,), 0.5), n=jnp.asarray(3.0), basal=jnp.full((N,), 0.05))
    stim = jnp.zeros((1, N)).at[0, fb.nodes.index("s")].set(1.0)
    x, B, ok = _logic.fixed_point(p, stim, jnp.ones((1, N)), st)
    assert bool(ok.all())
    assert np.allclose(np.asarray(x), np.asarray(_logic.activation(x, p, stim, st)), atol=1e-5)  # x = B(x)
    no_fb, _ = steady(net, ["s"], {})
    assert float(x[0, fb.nodes.index("a")]) < no_fb["a"] - 0.05  # negative feedback lowers a


def test_and_pair_needs_both_inputs():
    net = _pkn.compile_network(sif(("s1", 1, "t"), ("s2", 1, "t")), stimuli={"S1": "s1", "S2": "s2"}, inhibitors={},
                               readouts={"T": "t"}, compress=False)
    assert (net.edges.gate == "and").sum() == 1
    opt = network_option(net, targets=["S1", "S2"], genes=["T"])
    st = network_arrays(opt, n_targets=2, n_genes=1)["structure"]
    w = jnp.asarray(np.where(net.edges.gate == "and", 0.95, 0.0))
    p = _logic.LogicParams(w=w, k=jnp.full(w.shape, 0.5), n=jnp.asarray(3.0), basal=jnp.zeros(st.n_nodes))
    idx = {n: i for i, n in enumerate(net.nodes)}
    stim = np.zeros((3, st.n_nodes))
    stim[0, idx["s1"]] = 1
    stim[1, [idx["s1"], idx["s2"]]] = 1
    _, B = _logic.closed_form(p, jnp.asarray(stim), jnp.ones_like(jnp.asarray(stim)), st)
    t = np.asarray(B[:, idx["t"]])
    assert t[0] < 0.01 and t[1] > 0.9 and t[2] < 0.01


def test_compression_keeps_the_path_and_multiplies_signs():
    net = _pkn.compile_network(sif(("s", 1, "l1"), ("l1", -1, "l2"), ("l2", 1, "r")), stimuli={"S": "s"},
                               inhibitors={}, readouts={"R": "r"})
    assert net.nodes == ("s", "r")
    (row,) = net.edges.itertuples()
    assert (row.source, row.target, row.sign, row.via) == ("s", "r", -1, "s>l1>l2>r")
    assert "s\t-1\tr" in net.to_sif()


def test_bad_input_names_the_node():
    with pytest.raises(DesignError, match="'zz'"):
        _pkn.compile_network(CHAIN, stimuli={"S": "s"}, inhibitors={"Zi": "zz"}, readouts={"B": "b"})
    with pytest.raises(DesignError, match="'nope'"):
        _pkn.compile_network(CHAIN, stimuli={"S": "s"}, inhibitors={}, readouts={"B": "nope"})
    with pytest.raises(DesignError, match="'Q'"):
        _pkn.default_readouts(["B", "Q"], ["s", "a", "b"])
    with pytest.warns(_pkn.NetworkWarning, match="orphan"):
        _pkn.compile_network(pd.concat([CHAIN, sif(("orphan", 1, "x"))]), stimuli={"S": "s"}, inhibitors={},
                             readouts={"B": "b"})
    cyc = sif(("s", 1, "a"), ("a", 1, "b"), ("b", 1, "a"))
    with pytest.raises(DesignError, match="cycle .*'a'|cycle .*'b'"):
        _pkn.compile_network(cyc, stimuli={"S": "s"}, inhibitors={}, readouts={"B": "b"}, compress=False)
    with pytest.warns(_pkn.NetworkWarning, match="b->a"):
        net = _pkn.compile_network(cyc, stimuli={"S": "s"}, inhibitors={}, readouts={"B": "b"}, cycles="drop",
                                   compress=False)
    assert net.acyclic and ("b", "a") not in set(zip(net.edges.source, net.edges.target))
    with pytest.raises(DesignError, match="'X'"):
        network_option(chain(), targets=["S", "X"], genes=["A", "B"])
    with pytest.raises(DesignError, match="'C'"):
        network_option(chain(), targets=["S"], genes=["A", "C"])


def test_clean_network_compiles_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = chain()
    assert net.acyclic and net.nodes == ("s", "a", "b")
    assert repr(net) == ("Network(3 nodes, 2 edges (2 single), acyclic; stimuli ['S'], inhibitors ['Ai', 'Bi'], "
                         "2 readouts, 0 dropped: .edges, .dropped, .to_sif())")  # not the edge table


# ------------------------------------------------------------------ the fitted model (one short fit)
@pytest.fixture(scope="module")
def chain_fit():
    import semimech as sm
    from semimech.models import signalling_network as sn
    from semimech.models._signalling_sim import simulate

    net = chain(compress=False)
    labels = ["none", "S", "S+Ai", "S+Bi", "Ai", "Bi"]
    frame = simulate(net, labels, active=np.ones(len(net.edges), bool), rng_key=0, replicates=3, noise_sd=0.05)
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    train = design.select_perturbations(["S", "S+Ai", "Ai", "Bi"])
    # the mechanism alone (no off-target or readout-block candidates): what the network implies
    fit = sm.fit_svi(sn.SPEC, train, rng_key=0, num_steps=400, num_samples=100, progress_bar=False,
                     network=sn.network_option(net, design=train), learning_rate=0.03, off_target=False,
                     readout_block=False)
    return fit, frame


def test_fitted_model_inhibitor_upstream_lowers_downstream_unchanged(chain_fit):
    import semimech as sm

    fit, frame = chain_fit
    pred = sm.predict(fit, ["S", "S+Ai", "S+Bi"], rng_key=1).draws["mean"]  # (draws, 3, [A, B])
    s, s_ai, s_bi = pred[:, 0], pred[:, 1], pred[:, 2]
    assert np.mean(s_ai[:, 1] < s[:, 1] - 0.3) > 0.9  # Ai blocks a, upstream of readout B: B falls
    assert abs(np.mean(s_bi[:, 0] - s[:, 0])) < 0.1  # Bi acts downstream of readout A (unseen with S): A unchanged
    assert abs(np.mean(s_ai[:, 0] - s[:, 0])) < 0.1  # Ai's own node: its activation (readout A) unchanged
    obs = frame.groupby("label")[["A", "B"]].mean()
    assert abs(np.mean(s[:, 1]) - obs.loc["S", "B"]) < 0.15


def test_edge_table_and_pruned_sif(chain_fit):
    from semimech.models import signalling_network as sn

    fit, _ = chain_fit
    table = sn.edge_posteriors(fit)
    assert list(table.columns[:3]) == ["source", "target", "sign"] and len(table) == len(fit.options["network"]["src"])
    assert table.set_index(["source", "target"]).loc[("a", "b"), "p_active"] > 0.9  # needed by the data
    sif_text = sn.pruned_sif(fit)
    assert "a\t1\tb" in sif_text


def test_background_stimulus_is_on_unless_withdrawn():
    net = _pkn.compile_network(sif(("bg", 1, "a"), ("p", 1, "a")), stimuli={"P": "p"}, inhibitors={},
                               readouts={"A": "a"}, background=("bg",), withdraws={"P": "bg"}, compress=False,
                               and_gates=False)
    opt = network_option(net, targets=["P"], genes=["A"])
    arr = network_arrays(opt, n_targets=1, n_genes=1)
    tm = np.array([[0.0], [1.0]])  # control (background on), P (background withdrawn, p on)
    stim = np.clip(tm @ arr["stim_map"] + arr["background"] * (1 - np.clip(tm @ arr["wd_map"], 0, 1)), 0, 1)
    idx = {n: i for i, n in enumerate(net.nodes)}
    assert stim[0, idx["bg"]] == 1 and stim[0, idx["p"]] == 0
    assert stim[1, idx["bg"]] == 0 and stim[1, idx["p"]] == 1
    with pytest.raises(DesignError, match="'zz'"):
        _pkn.compile_network(sif(("bg", 1, "a")), stimuli={}, inhibitors={}, readouts={"A": "a"}, background=("bg",),
                             withdraws={"P": "zz"})


def test_shipped_hepg2_subset_compiles_with_its_vocabulary():
    from semimech.datasets import HEPG2_NETWORK, hepg2_cancerres2011, hepg2_cancerres2011_pkn

    tidy = hepg2_cancerres2011()
    assert tidy.shape == (400 * 18, 8) and set(tidy.time) == {30.0} and tidy.cell_line.nunique() == 5
    pkn = hepg2_cancerres2011_pkn()
    nodes = set(pkn.source) | set(pkn.target)
    reads = _pkn.default_readouts(sorted(set(tidy.readout)), nodes, HEPG2_NETWORK["readout_aliases"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = _pkn.compile_network(pkn, stimuli=HEPG2_NETWORK["stimuli"], inhibitors=HEPG2_NETWORK["inhibitors"],
                                   readouts=reads, readout_signs=HEPG2_NETWORK["readout_signs"], cycles="drop")
    messages = [str(w.message) for w in caught if issubclass(w.category, _pkn.NetworkWarning)]
    assert any("feedback" in m for m in messages) and any("pp2a" in m for m in messages)
    assert net.acyclic and {"pi3k", "mek", "ikk", "akt", "erk"} <= set(net.nodes)
    assert {"akt->ras", "erk->ras"} <= {k.replace(">", "->") for k, v in net.dropped.items() if v == "feedback"}


def test_default_network_refits_with_a_row_mask():
    """Cross-validation masks rows, so the control summaries reach the model traced: the PKN-free
    default network must build from static shapes (np.asarray of a tracer used to fail here)."""
    import semimech as sm
    from semimech.models import signalling_network as sn

    rng = np.random.default_rng(0)
    labels = np.repeat(["none", "S", "T", "S+T"], 2)
    frame = pd.DataFrame({"label": labels, "A": rng.normal(size=8), "B": rng.normal(size=8)},
                         index=[f"r{i}" for i in range(8)])
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    mask = np.ones(design.n_obs, bool)
    mask[np.flatnonzero(np.asarray(design.perturbation_index) == 3)[0]] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.fit_svi(sn.SPEC, design, rng_key=0, num_steps=3, num_samples=5, progress_bar=False, row_mask=mask,
                         off_target=False, readout_block=False)
    assert np.isfinite(np.asarray(fit.samples["offset_z"])).all()
    # without a mask the default network's centre and spread are the control summaries, as before
    from semimech.models._signalling_options import default_network

    data = design.model_data()
    net = default_network(data)
    np.testing.assert_allclose(np.asarray(net["spread"]), np.asarray(data["baseline_scale"]), rtol=1e-6)



@pytest.mark.parametrize("options, match", [
    ({"edge_prior": 1.0}, r"edge_prior must be a pair \(location, scale\), got 1.0"),
    ({"hill_prior": (0.0, -1.0)}, r"hill_prior's scale must be a finite number > 0, got -1.0"),
    ({"basal_prior": (float("nan"), 1.0)}, r"basal_prior's location must be a finite number, got nan"),
    ({"noise_sd": -0.1}, r"noise_sd must be a finite number > 0, got -0.1"),
    ({"noise_sd": (0.1, float("nan"))}, r"noise_sd's log-sd must be a finite number > 0"),
    ({"noise_sd": (0.1, 0.2, 0.3)}, r"noise_sd must be a known sd or a pair"),
    ({"context_scale": -1.0}, r"context_scale must be a finite number > 0"),
    ({"misfit": 0.0}, r"misfit must be a finite number > 0"),
])
def test_bad_signalling_options_are_named_before_tracing(options, match):
    """Each was taken silently (a negative scale acts as its absolute value), failed every initial point (a
    negative or NaN noise_sd: "log density is NaN/inf"), or was a TypeError in the trace (a bare number)."""
    import semimech as sm
    from semimech.models import signalling_network as sn

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"label": np.repeat(["none", "S", "S+Ai"], 2), "A": rng.normal(size=6),
                          "B": rng.normal(size=6)}, index=[f"r{i}" for i in range(6)])
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    with pytest.raises(DesignError, match=match):
        sm.fit_svi(sn.SPEC, design, rng_key=0, num_steps=2, num_samples=2, progress_bar=False, network=chain(),
                   **options)


def test_edge_tables_name_a_bad_threshold_and_the_plot_takes_a_fit(chain_fit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semimech.errors import PredictionError
    from semimech.models import signalling_network as sn

    fit, _ = chain_fit
    with pytest.raises(PredictionError, match=r"threshold must be a number in \[0, 1\].*got 1.5"):
        sn.edge_posteriors(fit, threshold=1.5)  # every edge "inactive", silently
    with pytest.raises(PredictionError, match=r"min_probability must be a number in \[0, 1\].*got -1"):
        sn.pruned_sif(fit, min_probability=-1)  # every edge kept, silently
    with pytest.raises(PredictionError, match="takes edge_posteriors\\(fit\\)'s table"):
        sn.plot_edge_posteriors(fit.samples)
    with pytest.raises(PredictionError, match="empty"):
        sn.plot_edge_posteriors(sn.edge_posteriors(fit).iloc[:0])
    with pytest.raises(PredictionError, match="max_edges must be a positive integer"):
        sn.plot_edge_posteriors(fit, max_edges=0)
    ax = sn.plot_edge_posteriors(fit)  # the fit itself: its table
    assert len(ax.get_yticklabels()) == len(sn.edge_posteriors(fit))
    plt.close(ax.figure)


def test_a_pkn_row_without_a_source_or_with_a_word_for_a_sign_is_named():
    with pytest.raises(DesignError, match=r"PKN row 1 \(None 1 b\) has no source"):
        _pkn.compile_network(sif(("s", 1, "a"), (None, 1, "b")), stimuli=["s"], inhibitors={}, readouts=["a"])
    with pytest.raises(DesignError, match=r"PKN edge s -> a has sign 'activates'; signs must be 1"):
        _pkn.compile_network(sif(("s", "activates", "a")), stimuli=["s"], inhibitors={}, readouts=["a"])
    net = _pkn.compile_network(sif(("s", "+1", "a"), ("a", -1.0, "b")), stimuli=["s"], inhibitors={}, readouts=["b"],
                               compress=False)  # numbers written as text or floats are signs
    assert list(net.edges.sign) == [1, -1]


def test_compile_network_takes_lists_of_names_that_are_nodes():
    net = _pkn.compile_network(CHAIN, stimuli=["s"], inhibitors={"Ai": "a"}, readouts=["a", "b"], compress=False)
    assert net.readouts == {"a": "a", "b": "b"} and net.stimuli == {"s": ("s",)}
    same = _pkn.compile_network(CHAIN, stimuli={"s": "s"}, inhibitors={"Ai": "a"}, readouts={"a": "a", "b": "b"},
                                compress=False)
    assert net.nodes == same.nodes and net.edges.equals(same.edges) and net.inhibitors == same.inhibitors
    with pytest.raises(DesignError, match="'zz'"):  # a listed name that is no node
        _pkn.compile_network(CHAIN, stimuli=["s"], inhibitors={}, readouts=["zz"])
    with pytest.raises(DesignError, match=r"stimulus 'S' targets node 'S', which is not a node of the PKN "
                                          r"\(did you mean 's'\?\)"):  # a name written in another case
        _pkn.compile_network(CHAIN, stimuli=["S"], inhibitors={}, readouts=["b"])
    with pytest.raises(DesignError, match=r"readout 'zz' maps to node 'zz', which is not a node of the PKN\. Map"):
        _pkn.compile_network(CHAIN, stimuli=["s"], inhibitors={}, readouts=["zz"])  # nothing close: no guess
    with pytest.raises(DesignError, match="readouts lists a name twice.*'a'"):
        _pkn.compile_network(CHAIN, stimuli=["s"], inhibitors={}, readouts=["a", "a"])
    with pytest.raises(DesignError, match="readouts must map each name"):  # one bare string: ambiguous
        _pkn.compile_network(CHAIN, stimuli=["s"], inhibitors={}, readouts="a")


def test_a_fit_checks_its_network_option_against_the_design():
    """The model sees index arrays: an option built for the readouts or targets of another design (here
    the same names in another order) used to fit silently with readouts on the wrong nodes."""
    import semimech as sm
    from semimech.models import signalling_network as sn
    from semimech.models._signalling_sim import simulate

    net = chain(compress=False)
    frame = simulate(net, ["none", "S", "S+Ai", "Ai"], active=np.ones(len(net.edges), bool), rng_key=0,
                     replicates=2, noise_sd=0.05)
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    swapped = sm.Design.from_frame(frame, readouts=["B", "A"], perturbation_key="label", control="none")
    opt = network_option(net, design=design)
    kw = dict(rng_key=0, num_steps=3, num_samples=5, progress_bar=False, off_target=False, readout_block=False)
    with pytest.raises(DesignError, match="other readouts .*position 0: 'A' in the option, 'B' in the design"):
        sm.fit_svi(sn.SPEC, swapped, network=opt, **kw)
    reordered = network_option(net, targets=list(design.targets)[::-1], genes=design.genes, y=design.dense_y())
    with pytest.raises(DesignError, match="other targets"):
        sm.fit_svi(sn.SPEC, design, network=reordered, **kw)
    with pytest.raises(DesignError, match="compile_network"):
        sm.fit_svi(sn.SPEC, design, network="chain", **kw)
    # the good calls: the option of this design, or the compiled network itself, made into that option by the fit
    # (one fit; the other design's option through the resolution every fit runs)
    from semimech.infer.fit import resolved_options

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_network = sm.fit_svi(sn.SPEC, design, network=net, **kw)
    assert by_network.options["network"] == opt
    assert resolved_options(sn.SPEC, {"network": opt}, "svi", design=design)["network"] == opt
    swapped_option = resolved_options(sn.SPEC, {"network": net}, "svi", design=swapped)["network"]
    assert swapped_option["genes"] == ["B", "A"]
    b, a = (net.nodes.index(n) for n in ("b", "a"))
    assert swapped_option["readout_node"] == [b, a]


def test_a_masked_fits_readout_scales_come_from_its_kept_rows():
    """The network option's per-readout centre and spread (the offset and scale priors' units) were computed from
    every row of the design it was built for, so a cross-validation fold's priors saw its held-out rows. A fit of
    continuous readouts now takes them from its data (``readout_center`` / ``readout_spread``, recomputed from a
    row mask's kept rows like the other data-centred constants). Known answers: a masked fit's are the kept rows'
    summaries, and shifting them shifts every predicted mean by exactly as much; negative controls: the full
    design's differ (the held-out condition moves them), and the PKN-free default network ignores them."""
    import jax
    from numpyro import handlers

    import semimech as sm
    from semimech.data._aggregate import readout_summaries
    from semimech.infer.fit import _prepare
    from semimech.models import signalling_network as sn
    from semimech.models._signalling_sim import simulate

    net = chain(compress=False)
    frame = simulate(net, ["none", "S", "S+Ai", "Ai"], active=np.ones(len(net.edges), bool), rng_key=0,
                     replicates=2, noise_sd=0.05)
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    held = np.asarray(design.perturbation_index) == design.perturbations.index("S")
    options = {"network": network_option(net, design=design), "off_target": False, "readout_block": False}
    _, data, _, opts = _prepare(sn.SPEC, design, options, ~held, with_y=False, warn=False)
    kept = readout_summaries(design.subset(~held).dense_y())
    np.testing.assert_allclose(data["readout_center"], kept[0], rtol=1e-6)
    np.testing.assert_allclose(data["readout_spread"], kept[1], rtol=1e-6)
    assert np.abs(np.asarray(options["network"]["center"]) - kept[0]).max() > 0.05   # the full design's: not these

    def mean(data, **opts):
        tr = handlers.trace(handlers.seed(sn.model, jax.random.PRNGKey(0))).get_trace(data, **opts)
        return np.asarray(tr["mean"]["value"])

    shifted = {**data, "readout_center": np.asarray(data["readout_center"]) + 1.0}
    np.testing.assert_allclose(mean(shifted, **opts) - mean(data, **opts), 1.0, atol=1e-5)
    default = {k: v for k, v in opts.items() if k != "network"}
    np.testing.assert_allclose(mean(shifted, **default), mean(data, **default), atol=1e-6)


@pytest.mark.parametrize("per_edge_n", [False, True])
def test_closed_form_equals_iterating_the_activation(per_edge_n):
    """The level-concatenated closed form equals ``len(levels)`` sweeps of ``x <- keep * B(x)`` (exact
    on a DAG) on a random DAG with AND pairs and inhibiting edges (two sweeps do not)."""
    import jax

    rng = np.random.default_rng(0)
    N = 12
    src, dst, part, sign = [], [], [], []
    for t in range(2, N):
        for s in rng.choice(t, size=min(t, 3), replace=False):
            src.append(int(s))
            dst.append(t)
            part.append(int(rng.choice(t)) if rng.random() < 0.2 else -1)
            sign.append(1 if rng.random() < 0.75 else -1)
    st = _logic.structure({"src": src, "dst": dst, "partner": part, "sign": sign}, N, acyclic=True)
    assert len(st.levels) >= 4
    E, P = len(src), 5
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    n = 1.0 + jax.random.uniform(keys[0], (E,)) * 2 if per_edge_n else jnp.asarray(2.5)
    p = _logic.LogicParams(w=jax.random.uniform(keys[1], (P, E)), k=jax.random.uniform(keys[2], (E,), minval=0.2,
                                                                                          maxval=0.8),
                           n=n, basal=jax.random.uniform(keys[3], (P, N)) * 0.3)
    stim = (jax.random.uniform(keys[4], (P, N)) > 0.7).astype(jnp.float32)
    keep = jax.random.uniform(keys[0], (P, N), minval=0.2, maxval=1.0)
    x, B = _logic.closed_form(p, stim, keep, st)
    xi, sweeps = jnp.zeros((P, N)), []
    for _ in range(len(st.levels)):
        Bi = _logic.activation(xi, p, stim, st)
        xi = keep * Bi
        sweeps.append(xi)
    np.testing.assert_allclose(np.asarray(B), np.asarray(Bi), atol=1e-5)
    np.testing.assert_allclose(np.asarray(x), np.asarray(xi), atol=1e-5)
    assert not np.allclose(np.asarray(x), np.asarray(sweeps[1]), atol=1e-3)  # control: two sweeps are not enough


def _chain_means(inhibitor_readout):
    """Population means of readouts A, B under S and S+Ai, one prior draw (same seed for every option)."""
    import numpyro

    import semimech as sm
    from semimech.models import signalling_network as sn

    net = chain(compress=False)
    frame = pd.DataFrame({"label": ["none", "S", "S+Ai"], "A": [0.1, 1.0, 1.0], "B": [0.1, 1.0, 0.2]},
                         index=["r0", "r1", "r2"])
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    net_opt = sn.network_option(net, design=design)
    with numpyro.handlers.seed(rng_seed=3):
        tr = numpyro.handlers.trace(sn.model).get_trace(
            design.model_data(), network=net_opt, off_target=False, readout_block=False, edge_prior=(4.0, 0.1),
            noise_sd=0.05, inhibitor_readout=inhibitor_readout)
    mean = np.asarray(tr["mean"]["value"])
    return {lab: mean[i] for i, lab in enumerate(design.perturbations)}


def test_inhibitor_readout_per_node_reads_the_listed_nodes_as_activity():
    by_input, by_node = _chain_means("input"), _chain_means(["a"])
    # readout A of the inhibited node a: its activation (input) is unchanged by Ai; read as activity it falls
    assert abs(by_input["S+Ai"][0] - by_input["S"][0]) < 1e-6
    assert by_node["S+Ai"][0] < by_node["S"][0] - 0.1
    # readout B (node b, not listed) is the same under both options: the block reaches it through the network
    np.testing.assert_allclose(by_node["S+Ai"][1], by_input["S+Ai"][1], rtol=1e-6)
    np.testing.assert_allclose(_chain_means("activity")["S+Ai"], by_node["S+Ai"], rtol=1e-6)  # a is the only block
    with pytest.raises(DesignError, match="'zz'"):
        _chain_means(["zz"])


# ------------------------------------------------------------------ bounded observations (CellNOpt's 0-1 normalisation)
def test_clipped_normal_is_the_censored_gaussian():
    import jax
    from jax.scipy.stats import norm

    from semimech.models.signalling_network import ClippedNormal

    loc, scale = jnp.asarray([-0.3, 0.4, 1.2]), jnp.asarray([0.2, 0.2, 0.3])
    d = ClippedNormal(loc, scale, 0.0, 1.0)
    # at a bound (or within 1% of the range of it) the mass beyond it; inside, the Gaussian density
    np.testing.assert_allclose(d.log_prob(jnp.zeros(3)), norm.logcdf(-loc / scale), rtol=1e-5)
    np.testing.assert_allclose(d.log_prob(jnp.full(3, 0.9995)), norm.logcdf((loc - 1.0) / scale), rtol=1e-5)
    np.testing.assert_allclose(d.log_prob(jnp.full(3, 0.5)), norm.logpdf(0.5, loc, scale), rtol=1e-5)
    x = np.asarray(d.sample(jax.random.PRNGKey(0), (20000,)))
    assert x.min() == 0.0 and x.max() == 1.0
    # the atoms carry the Gaussian's tail mass (a negative control: the unclipped draws would not)
    np.testing.assert_allclose((x == 0).mean(0), norm.cdf(-loc / scale), atol=0.01)
    np.testing.assert_allclose((x == 1).mean(0), norm.cdf((loc - 1) / scale), atol=0.01)


def _bounded_chain():
    """A chain design with values in [0, 1], exact zeros where nothing is on, and the model options."""
    import semimech as sm
    from semimech.models import signalling_network as sn

    net = chain(compress=False)
    rng = np.random.default_rng(0)
    labels = np.repeat(["none", "S", "S+Ai", "Bi"], 2)
    a = np.where(np.isin(labels, ["S", "S+Ai"]), 0.9, 0.0)
    b = np.where(labels == "S", 0.8, 0.0)
    frame = pd.DataFrame({"label": labels, "A": np.clip(a + rng.normal(0, 0.05, 8), 0, 1),
                          "B": np.clip(b + rng.normal(0, 0.05, 8), 0, 1)}, index=[f"r{i}" for i in range(8)])
    design = sm.Design.from_frame(frame, readouts=["A", "B"], perturbation_key="label", control="none")
    return design, dict(network=sn.network_option(net, design=design), off_target=False, readout_block=False,
                        noise_sd=0.1)


def test_bounds_observe_censored():
    import numpyro
    from scipy.stats import norm

    from semimech.measurement import observe_conditions
    from semimech.models import signalling_network as sn

    design, kw = _bounded_chain()
    data = design.model_data()
    y = np.asarray(design.y)
    loc_p = jnp.asarray(np.linspace(-0.4, 0.9, 4 * 2).reshape(4, 2))
    pidx = np.asarray(data["perturbation_index"])
    # a noise per gene, and per condition (context_noise's shape): the bounded path indexes it by row alike
    per_condition = np.linspace(0.1, 0.3, 8).reshape(4, 2)
    for noise, sd_rows in ((jnp.full(2, 0.2), np.full((8, 2), 0.2)), (jnp.asarray(per_condition), per_condition[pidx])):
        with numpyro.handlers.seed(rng_seed=0):
            tr = numpyro.handlers.trace(observe_conditions).get_trace(
                loc_p, noise, data, numpyro.plate("genes", 2, dim=-1), likelihood="normal", y=y, bounds=(0.0, 1.0))
        site = tr["y"]
        assert isinstance(site["fn"], sn.ClippedNormal)
        lp = np.asarray(site["fn"].log_prob(jnp.asarray(y)))
        zero, inside = y <= 0.01, (y > 0.01) & (y < 0.99)  # within 1% of the range of a bound: at the bound
        assert (y == 0.0).any() and inside.any()
        loc = np.asarray(loc_p)[pidx]
        np.testing.assert_allclose(lp[zero], norm.logcdf(-loc[zero] / sd_rows[zero]), rtol=1e-4,
                                   atol=1e-6)  # mass below 0 (float32)
        np.testing.assert_allclose(lp[inside], norm.logpdf(y[inside], loc[inside], sd_rows[inside]), rtol=1e-4)
    # bad input (checked before the network is built): values outside the bounds, malformed bounds, counts
    with pytest.raises(DesignError, match="outside"):
        sn.model(data, bounds=(0.0, 0.5), y=y, **kw)
    with pytest.raises(DesignError, match="low < high"):
        sn.model(data, bounds=(1.0, 0.0), y=y, **kw)
    with pytest.raises(DesignError, match="normal"):
        sn.model(data, bounds=(0.0, 1.0), likelihood="negbin", y=y, **kw)
    with pytest.raises(DesignError, match="pseudobulk"):  # rows that are means of several observations
        sn.model({**data, "n_cells": np.full(np.shape(data["n_cells"]), 3.0)}, bounds=(0.0, 1.0), y=y, **kw)


def test_bounded_model_density_is_the_censored_one():
    """The model's log density with ``bounds`` differs from the Gaussian model's, at the same
    parameters, by the censored minus the Gaussian log-likelihood of the rows (row mask honoured):
    the bounds act on the observation only (here ``misfit_cut=False``: no cut factor)."""
    import jax
    import numpyro
    from numpyro.infer.util import log_density
    from scipy.stats import norm

    from semimech.models import signalling_network as sn

    design, kw = _bounded_chain()
    kw = {**kw, "misfit_cut": False}
    y = jnp.asarray(np.asarray(design.y), jnp.float32)
    yv = np.asarray(y, float)
    data = design.model_data()
    data["row_mask"] = keep = np.array([True, True, False, True, True, True, False, True])

    @jax.jit  # one compiled program: eager tracing compiles every operation on its own (slow)
    def densities():
        tr = numpyro.handlers.trace(numpyro.handlers.seed(sn.model, 1)).get_trace(data, y=y, bounds=(0.0, 1.0), **kw)
        params = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
        lp_b = log_density(sn.model, (data,), dict(y=y, bounds=(0.0, 1.0), **kw), params)[0]
        lp_g = log_density(sn.model, (data,), dict(y=y, **kw), params)[0]
        return lp_b, lp_g, tr["mean"]["value"], tr["noise_sd"]["value"]

    lp_b, lp_g, mean, noise_sd = (np.asarray(v, float) for v in densities())
    loc = mean[np.asarray(data["perturbation_index"])]
    sd = np.broadcast_to(noise_sd, loc.shape)
    gauss = norm.logpdf(yv, loc, sd)
    cens = np.where(yv <= 0.01, norm.logcdf(-loc / sd), np.where(yv >= 0.99, norm.logcdf((loc - 1) / sd), gauss))
    assert (yv[keep] <= 0.01).any() and (yv[~keep] <= 0.01).any()
    np.testing.assert_allclose(lp_b - lp_g, np.sum((cens - gauss)[keep]), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_bounded_fit_predicts_observations_within_the_bounds():
    import semimech as sm
    from semimech.models import signalling_network as sn

    import numpyro

    design, kw = _bounded_chain()
    y = np.asarray(design.y)
    with numpyro.handlers.seed(rng_seed=0):  # the model observes through the clipped Gaussian
        tr = numpyro.handlers.trace(sn.model).get_trace(design.model_data(), bounds=(0.0, 1.0), y=y, **kw)
    assert isinstance(tr["y"]["fn"], sn.ClippedNormal) and np.isfinite(tr["misfit_cut"]["fn"].log_factor)
    # predictions of an observation lie within the bounds (ModelSpec.observed_bounds in predict)
    fit = sm.fit_svi(sn.SPEC, design, rng_key=0, num_steps=3, num_samples=50, progress_bar=False, bounds=(0.0, 1.0),
                     **kw)
    obs = sm.predict(fit, ["S", "S+Bi"], rng_key=1, num_cells=1).draws["observed_mean"]
    assert obs.min() >= 0.0 and obs.max() <= 1.0 and (obs == 0.0).any()


def test_identified_parametrisation_drops_redundant_sites_and_reads_from_the_untreated_state():
    """``parametrisation="identified"``: the input node's basal activity and the threshold of its
    edge are not sampled (basal 0), and the untreated condition's location is the readout's
    offset (readouts measured relative to the untreated state); the log density is finite; a
    wrong name is a clear error."""
    import jax
    import numpyro

    from semimech.models import signalling_network as sn

    design, kw = _bounded_chain()  # nodes s (input), a, b; edges s -> a, a -> b
    kw = {**kw, "misfit_cut": False}
    data = design.model_data()
    y = jnp.asarray(np.asarray(design.y), jnp.float32)

    @jax.jit  # one compiled program (eager tracing compiles every operation on its own)
    def run():
        opts = dict(y=y, parametrisation="identified", **kw)
        tr = numpyro.handlers.trace(numpyro.handlers.seed(sn.model, 2)).get_trace(data, **opts)
        lp = sum(jnp.sum(v["fn"].log_prob(v["value"])) for v in tr.values() if v["type"] == "sample")  # y included
        return {k: v["value"] for k, v in tr.items() if k in ("basal", "mean", "offset_z", "hill_k", "basal_z")}, lp

    ident, lp = run()
    nodes = kw["network"]["nodes"]
    assert len(nodes) == 3 and len(kw["network"]["src"]) == 2  # the default samples 3 basal logits, 2 thresholds
    assert ident["basal_z"].shape == (2,) and ident["hill_k"].shape == (1,)  # s's basal and s -> a's threshold fixed
    basal = np.asarray(ident["basal"])[0]
    assert basal[nodes.index("s")] == 0.0 and basal[nodes.index("a")] > 0.0
    assert np.isfinite(float(lp))
    net = kw["network"]
    sign, center, spread = (np.asarray(net[k], float) for k in ("readout_sign", "center", "spread"))
    offset = center - 0.5 * sign * spread + 1.5 * spread * np.asarray(ident["offset_z"])
    control = list(design.perturbations).index("none")
    np.testing.assert_allclose(np.asarray(ident["mean"])[control], offset, rtol=1e-5, atol=1e-5)
    with pytest.raises(DesignError, match="parametrisation"):
        numpyro.handlers.seed(sn.model, 0)(data, y=y, parametrisation="centred", **kw)
