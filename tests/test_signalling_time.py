"""Signalling network in time (model option ``times``): the relaxation, its checks, the model's sites."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from semimech.errors import DesignError
from semimech.models import _logic, _pkn
from semimech.models import _signalling_time as tm
from semimech.models._signalling_options import network_arrays, network_option

# s -> a -> b; inhibitor Ai on a
CHAIN = pd.DataFrame([("s", 1, "a"), ("a", 1, "b")], columns=["source", "sign", "target"])


def _chain():
    net = _pkn.compile_network(CHAIN, stimuli={"S": "s"}, inhibitors={"Ai": "a"}, readouts={"A": "a", "B": "b"},
                               compress=False, and_gates=False)
    arr = network_arrays(network_option(net, targets=["S", "Ai"], genes=["A", "B"]), n_targets=2, n_genes=2)
    st = arr["structure"]
    p = _logic.LogicParams(w=jnp.full((st.src.size,), 0.9), k=jnp.full((st.src.size,), 0.5), n=jnp.asarray(3.0),
                           basal=jnp.full((st.n_nodes,), 0.05))
    idx = {n: i for i, n in enumerate(net.nodes)}
    return net, st, p, idx


def test_relaxation_starts_before_the_ligand_and_ends_at_the_steady_state():
    net, st, p, idx = _chain()
    N, s, a, b = st.n_nodes, idx["s"], idx["a"], idx["b"]
    stim = jnp.zeros((2, N)).at[:, s].set(1.0)  # the ligand on, with and without a half block of a
    keep = jnp.ones((2, N)).at[1, a].set(0.5)
    z0, ok0 = tm.start_state(p, jnp.zeros((2, N)), keep, st)
    grid = np.array([0.0, 2.0, 7.0, 20.0, 500.0])
    z, ok = tm.activation_at(p, stim, keep, z0, jnp.full((N,), 1 / 7.0), grid, st)
    assert bool(ok.all()) and bool(ok0.all()) and z.shape == (2, grid.size, N)
    _, B = _logic.closed_form(p, stim, keep, st)
    np.testing.assert_allclose(z[:, 0], z0, atol=1e-5)  # t = 0: the pretreatment steady state
    np.testing.assert_allclose(z[:, -1], B, atol=1e-3)  # long after: the static model's steady state
    # the stimulated root jumps to B = 1, so z(t) = 1 - (1 - z0) exp(-t / tau) exactly
    np.testing.assert_allclose(z[0, :, s], 1.0 - (1.0 - z0[0, s]) * np.exp(-grid / 7.0), atol=2e-4)
    assert bool(jnp.all(jnp.diff(z[0, :, a]) > 0))  # a, driven by the rising s, rises monotonically
    assert float(z[0, 1, a]) < float(1.0 - (1.0 - z0[0, a]) * np.exp(-2.0 / 7.0))  # and lags its own exponential
    assert float(B[0, b] - z[0, 1, b]) > 0.2  # early (2 min, tau 7): b still far below its steady state
    assert float(z[0, -1, b] - z[1, -1, b]) > 0.2  # the block of a lowers b downstream in time too


@pytest.mark.parametrize("times, n, match", [([30.0], 2, "1 time"), ([30.0, -1.0], 2, ">= 0"),
                                             (["early", "late"], 2, "numbers"), ([10.0, np.nan], 2, "finite")])
def test_bad_times_name_the_problem(times, n, match):
    with pytest.raises(DesignError, match=match):
        tm.time_grid(times, n)


def test_time_grid_maps_contexts_to_sorted_times():
    grid, idx = tm.time_grid([180.0, 30.0, 30.0], 3)
    assert grid.tolist() == [30.0, 180.0] and idx.tolist() == [1, 0, 0]


def _design():
    import semimech as sm

    rows = []
    for t in ("10", "60"):
        for s, i in (("none", "none"), ("S", "none"), ("S", "Ai"), ("none", "Ai")):
            rows.append({"time": t, "stimulus": s, "inhibitor": i, "A": 1.0, "B": 1.0})
    frame = pd.DataFrame(rows)
    frame.index = [f"r{k}" for k in range(len(frame))]
    frame[["A", "B"]] += np.random.default_rng(0).normal(0, 0.1, (len(frame), 2))
    return sm.Design.from_frame(frame, readouts=["A", "B"], factors={"stimulus": "stimulus", "inhibitor": "inhibitor"},
                                context_key="time")


def test_model_with_times_shares_parameters_and_measures_each_time():
    import numpyro

    from semimech.models import signalling_network as sn

    design = _design()
    net, *_ = _chain()
    data = design.model_data()
    opt = sn.network_option(net, design=design)
    times = [float(c) for c in design.contexts]
    with numpyro.handlers.trace() as tr, numpyro.handlers.seed(rng_seed=0):
        sn.model(data, network=opt, times=times, noise_sd=0.1, y=None)
    assert "tau" in tr and tr["tau"]["value"].shape == (len(net.nodes),)
    assert not any(k.endswith("_context_sd") for k in tr)  # time points share every parameter
    mean = np.asarray(tr["mean"]["value"])
    labels = list(design.perturbations)
    s10, s60 = labels.index("S@10"), labels.index("S@60")
    assert not np.allclose(mean[s10], mean[s60])  # the same treatment, measured at two times
    with numpyro.handlers.trace() as tr2, numpyro.handlers.seed(rng_seed=0):
        sn.model(data, network=opt, noise_sd=0.1, y=None)  # negative control: contexts pooled, no time
    assert "tau" not in tr2 and "edge_context_sd" in tr2
    with pytest.raises(DesignError, match="context"):
        with numpyro.handlers.seed(rng_seed=0):
            sn.model(data, network=opt, times=[10.0], noise_sd=0.1, y=None)


def test_times_contexts_reads_each_contexts_name_as_its_time():
    """``times="contexts"`` is resolved by the fit to the contexts' names as numbers (the design of
    ``Design.from_midas(table, time="contexts")``), stored as the list written out; a context that is no number
    and another word are named."""
    import semimech as sm
    from semimech.infer.fit import resolved_options
    from semimech.models import signalling_network as sn

    design = _design()
    net, *_ = _chain()
    options = dict(network=net, noise_sd=0.1, off_target=False, readout_block=False)
    opts = resolved_options(sn.SPEC, {**options, "times": "contexts"}, "svi", design=design)  # as every fit does
    assert design.contexts == ("10", "60") and opts["times"] == [10.0, 60.0]   # the list written out
    kw = dict(rng_key=0, num_steps=3, num_samples=4, progress_bar=False, **options)
    frame = pd.DataFrame({"time": ["early"] * 2 + ["late"] * 2, "stimulus": ["none", "S"] * 2, "inhibitor": "none",
                          "A": [1.0, 1.2, 1.1, 1.3], "B": [1.0, 0.9, 1.0, 0.8]}, index=[f"r{k}" for k in range(4)])
    named = sm.Design.from_frame(frame, readouts=["A", "B"], factors={"stimulus": "stimulus", "inhibitor": "inhibitor"},
                                 context_key="time")
    with pytest.raises(DesignError, match="context 'early' is not a number; give times= one number per context"):
        sm.fit_svi(sn.SPEC, named, times="contexts", **kw)
    with pytest.raises(DesignError, match="or 'contexts'.*got 'context'"):
        sm.fit_svi(sn.SPEC, design, times="context", **kw)


# ------------------------------------------------------------------ recovery (slow): a late time point from early ones
def _simulate_time(net, rows, *, tau, rng, noise_sd=0.05, offset=2.0, scale=1.5, efficacy=0.9):
    """Readouts A, B of (stimulus, inhibitor, time) rows from the relaxation with known parameters."""
    from semimech.models._signalling_options import network_arrays, network_option

    arr = network_arrays(network_option(net, targets=["S", "Ai"], genes=["A", "B"]), n_targets=2, n_genes=2)
    st = arr["structure"]
    E, N = st.src.size, st.n_nodes
    p = _logic.LogicParams(w=jnp.full((E,), 0.9), k=jnp.full((E,), 0.5), n=jnp.asarray(3.0),
                           basal=jnp.full((N,), 0.05))
    t_mat = np.array([[r[0] == "S", r[1] == "Ai"] for r in rows], float)
    stim = jnp.asarray(t_mat @ arr["stim_map"])
    keep = jnp.asarray(np.exp(t_mat @ (np.log1p(-efficacy) * arr["inh_map"])))
    z0, _ = tm.start_state(p, jnp.zeros_like(stim), keep, st)
    grid, _ = tm.time_grid(sorted({r[2] for r in rows}), len({r[2] for r in rows}))
    z, ok = tm.activation_at(p, stim, keep, z0, 1.0 / jnp.asarray(tau), grid, st)
    z = np.asarray(z)[np.arange(len(rows)), np.searchsorted(grid, [r[2] for r in rows])]
    rn = arr["readout_node"]
    return offset + scale * z[:, rn] + noise_sd * rng.normal(size=(len(rows), 2))


@pytest.mark.slow
def test_fit_in_time_predicts_a_late_time_point_the_steady_state_model_cannot():
    """Known answer: b is slow (tau 40 vs 3 and 5 min), so at 120 min b under S is far above its 30-min
    value. Train: every condition at 5, 15, 30 and 60 min, the unstimulated ones at 120; predict S and
    S+Ai at 120 min. The network in time extrapolates (error < 0.15 on B); the same network without
    time (time points as pooled contexts), the negative control, cannot (error > 0.3). (With 5 and 30
    min only, tau of b is not identified and the time model misses too: the data must see the curve.)"""
    import semimech as sm
    from semimech.models import signalling_network as sn

    net, st, _, idx = _chain()
    tau = np.ones(st.n_nodes)
    tau[idx["s"]], tau[idx["a"]], tau[idx["b"]] = 3.0, 5.0, 40.0
    conds = [("none", "none"), ("S", "none"), ("none", "Ai"), ("S", "Ai")]
    rows = [(s, i, t) for t in (5.0, 15.0, 30.0, 60.0, 120.0) for s, i in conds for _ in range(2)]
    y = _simulate_time(net, rows, tau=tau, rng=np.random.default_rng(1))
    frame = pd.DataFrame({"stimulus": [r[0] for r in rows], "inhibitor": [r[1] for r in rows],
                          "time": [f"{int(r[2])}" for r in rows], "A": y[:, 0], "B": y[:, 1]})
    frame.index = [f"r{k}" for k in range(len(frame))]
    held = (frame.time == "120") & (frame.stimulus == "S")
    design = sm.Design.from_frame(frame[~held], readouts=["A", "B"], context_key="time",
                                  factors={"stimulus": "stimulus", "inhibitor": "inhibitor"})
    truth = frame[held].groupby("inhibitor")[["A", "B"]].mean()
    opt = sn.network_option(net, design=design)
    common = dict(rng_key=0, num_steps=1500, num_samples=100, progress_bar=False, network=opt, noise_sd=0.05,
                  off_target=False, readout_block=False, learning_rate=0.03)
    errs = {}
    for name, extra in (("time", {"times": [float(c) for c in design.contexts]}), ("steady", {})):
        fit = sm.fit_svi(sn.SPEC, design, **common, **extra)
        pred = sm.predict(fit, ["S@120", "S+Ai@120"], rng_key=1).draws["mean"].mean(0)
        errs[name] = np.abs(pred[:, 1] - truth.loc[["none", "Ai"], "B"].to_numpy())
        if name == "time":
            errs["tau"] = 20.0 * np.exp(np.median(np.asarray(fit.samples["tau_z"]).reshape(-1, st.n_nodes), axis=0))
    assert errs["time"].max() < 0.15, errs
    assert errs["steady"].max() > 0.3, errs


@pytest.mark.slow
def test_feedback_makes_a_transient_and_ends_at_the_fixed_point():
    """With b -| a kept (cycles='solve') and b slow, a rises then falls back (a transient); the
    relaxation ends at the dynamics fixed point. Negative control: without the feedback edge, a
    rises monotonically."""
    fb = pd.DataFrame([("s", 1, "a"), ("a", 1, "b"), ("b", -1, "a")], columns=["source", "sign", "target"])
    runs = {}
    for name, edges, cycles in (("feedback", fb, "solve"), ("none", CHAIN, "error")):
        net = _pkn.compile_network(edges, stimuli={"S": "s"}, inhibitors={}, readouts={"A": "a", "B": "b"},
                                   compress=False, and_gates=False, cycles=cycles)
        arr = network_arrays(network_option(net, targets=["S"], genes=["A", "B"]), n_targets=1, n_genes=2)
        st = arr["structure"]
        E, N = st.src.size, st.n_nodes
        p = _logic.LogicParams(w=jnp.full((E,), 0.95), k=jnp.full((E,), 0.5), n=jnp.asarray(3.0),
                               basal=jnp.full((N,), 0.05))
        idx = {n: i for i, n in enumerate(net.nodes)}
        tau = np.full(N, 2.0)
        tau[idx["b"]] = 30.0
        stim = jnp.zeros((1, N)).at[:, idx["s"]].set(1.0)
        keep = jnp.ones((1, N))
        z0, ok0 = tm.start_state(p, jnp.zeros((1, N)), keep, st)
        grid = np.array([0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 400.0])
        z, ok = tm.activation_at(p, stim, keep, z0, jnp.asarray(1.0 / tau), grid, st)
        assert bool(ok.all()) and bool(ok0.all())
        runs[name] = np.asarray(z[0, :, idx["a"]])
        if name == "feedback":
            _, B, ok_fp = _logic.fixed_point(p, stim, keep, st)
            assert bool(ok_fp.all())
            np.testing.assert_allclose(z[0, -1], B[0], atol=2e-3)  # the end is the fixed point
    a = runs["feedback"]
    assert a.max() - a[-1] > 0.1  # a transient: up, then down as the slow inhibitor b catches up
    assert np.all(np.diff(runs["none"]) >= -1e-3), runs["none"]  # without feedback: monotone (solver rtol 1e-4)
