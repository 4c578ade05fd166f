"""Randomised property tests of the protocol algebra (fixed seeds; many cases per compiled solve)."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from semimech.dynamics.intervention import Intervention
from semimech.protocol import Evolve, Measure, Media, Perturb, protocols_from_frame, run_many, simultaneous, stack

N = 3


def sigmoid_field(x, params, *, media, intervention):
    drive = params["W"] @ x + params["b"] + params["B"] @ media
    return params["alpha"] * intervention.production * jax.nn.sigmoid(drive) - params["gamma"] * x


def _sigmoid_params(rng):
    return dict(
        alpha=jnp.asarray(rng.uniform(0.5, 2.0, N)),
        W=jnp.asarray(rng.normal(0, 2.0, (N, N))),
        b=jnp.asarray(rng.normal(0, 1.0, N)),
        B=jnp.asarray(rng.normal(0, 2.0, (N, 1))),
        gamma=jnp.asarray(rng.uniform(0.5, 1.5, N)),
    )


def mixed_field(x, params, *, media, intervention):
    """s * (a + c * sigmoid(W x + b + B_in m)) + B_out m - gamma x.

    With c = 0 it is linear with both operators entering as state-independent additive inputs (the
    edit scales the constant production a, the medium adds B_out m), so by superposition their
    effects add whatever the order and timing. With a = 0 and B_out = 0 it is the production-decay
    system, where the medium acts inside the sigmoid and effects interact. One function for both
    keeps one compiled program.
    """
    drive = params["W"] @ x + params["b"] + params["B_in"] @ media
    production = params["a"] + params["c"] * jax.nn.sigmoid(drive)
    return intervention.production * production + params["B_out"] @ media - params["gamma"] * x


def _mixed_params(rng, *, linear):
    sig = _sigmoid_params(rng)
    return dict(
        a=jnp.asarray(rng.uniform(0.5, 2.0, N)) * linear,
        c=sig["alpha"] * (not linear),
        W=sig["W"],
        b=sig["b"],
        B_in=sig["B"] * (not linear),
        B_out=jnp.asarray(rng.normal(0, 1.0, (N, 1))) * linear,
        gamma=sig["gamma"],
    )


def _edit(rng):
    return Intervention.scale(jnp.asarray(rng.choice([0.0, 0.3, 1.0, 2.5], N)))


def test_evolve_is_a_semigroup_and_zero_is_the_identity():
    """Evolve(a) >> Evolve(b) == Evolve(a + b) and Evolve(0) == identity, 16 random cases."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = _sigmoid_params(rng)
        a, b = rng.uniform(0, 3, 16), rng.uniform(0, 3, 16)
        b[:3] = 0.0
        edits = [_edit(rng) for _ in range(16)]
        kw = dict(x0=jnp.asarray(rng.uniform(0, 1, N)), media0=jnp.ones(1))
        split = run_many(stack([Perturb(e) >> Evolve(s) >> Evolve(t) >> Measure() for e, s, t in zip(edits, a, b)]), sigmoid_field, params, **kw)
        whole = run_many(stack([Perturb(e) >> Evolve(s + t) >> Evolve(0.0) >> Measure() for e, s, t in zip(edits, a, b)]), sigmoid_field, params, **kw)
        assert bool(jnp.all(split.ok & whole.ok))
        np.testing.assert_allclose(split.state, whole.state, rtol=1e-7, atol=1e-9)


def test_simultaneous_edits_commute_for_random_edits():
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = rng.integers(2, 5)
        ops = []
        for _ in range(k):
            mask = rng.random(N) < 0.3
            vals = np.round(rng.uniform(0, 2, N), 1)
            ops.append(Perturb(Intervention(jnp.asarray(rng.uniform(0, 3, N)), jnp.asarray(mask), jnp.asarray(vals))))
        masks = np.array([np.asarray(o.p.clamp_mask) for o in ops])
        vals = np.array([np.asarray(o.p.clamp_value) for o in ops])
        conflict = any(
            np.any(masks[i] & masks[j] & (vals[i] != vals[j])) for i in range(k) for j in range(i + 1, k)
        )
        if conflict:
            with pytest.raises(Exception, match="different values"):
                simultaneous(*ops)
            continue
        fwd, rev = simultaneous(*ops), simultaneous(*ops[::-1])
        perm = simultaneous(*[ops[i] for i in rng.permutation(k)])
        for other in (rev, perm):
            for x, y in zip(jax.tree.leaves(fwd), jax.tree.leaves(other)):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


def test_instantaneous_edits_commute_without_evolve_between():
    """Media >> Perturb and Perturb >> Media give the same state (nothing flows between them)."""
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):  # same compiled program as the semigroup test (16 experiments, 2 segments)
        params = _sigmoid_params(rng)
        edits = [_edit(rng) for _ in range(16)]
        media = [jnp.asarray(rng.normal(0, 1, 1)) for _ in range(16)]
        kw = dict(x0=jnp.asarray(rng.uniform(0, 1, N)), media0=jnp.zeros(1))
        mp = run_many([Media(m) >> Perturb(e) >> Evolve(1.0) >> Evolve(1.0) >> Measure() for e, m in zip(edits, media)], sigmoid_field, params, **kw)
        pm = run_many([Perturb(e) >> Media(m) >> Evolve(1.0) >> Evolve(1.0) >> Measure() for e, m in zip(edits, media)], sigmoid_field, params, **kw)
        np.testing.assert_array_equal(mp.state, pm.state)


def _interaction(field, params, rng, n_cases):
    """x(P, M) - x(P) - x(M) + x(none) for random orders and event times (media at t_m, edit at t_p)."""
    ident = Intervention.none(N, dtype=jnp.float64)
    rows = []
    for _ in range(n_cases):
        e, m = _edit(rng), jnp.asarray(rng.normal(0, 1.5, 1))
        gap, tail = rng.uniform(0.1, 2.0), rng.uniform(0.1, 3.0)
        media_first = rng.random() < 0.5
        for with_e, with_m in [(1, 1), (1, 0), (0, 1), (0, 0)]:
            p_op = Perturb(e if with_e else ident)
            m_op = Media(m if with_m else jnp.zeros(1))
            first, second = (m_op, p_op) if media_first else (p_op, m_op)
            rows.append(first >> Evolve(gap) >> second >> Evolve(tail) >> Measure())
    res = run_many(rows, field, params, x0="steady", media0=jnp.zeros(1), x_guess=jnp.full(N, 0.5))
    assert bool(jnp.all(res.ok))
    s = np.asarray(res.state).reshape(n_cases, 4, N)
    return s[:, 0] - s[:, 1] - s[:, 2] + s[:, 3]


def test_linear_additive_operators_superpose_and_the_sigmoid_system_does_not():
    """In the linear system (media and edit are both additive inputs) the interaction contrast is zero
    for every order and timing; in the sigmoid system it is not (negative control)."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        lin = _interaction(mixed_field, _mixed_params(rng, linear=True), rng, 4)
        np.testing.assert_allclose(lin, 0.0, atol=1e-8)
        nonlin = _interaction(mixed_field, _mixed_params(rng, linear=False), rng, 4)
        assert np.max(np.abs(nonlin)) > 1e-2


def test_the_control_steady_state_is_invariant_under_waiting():
    """Starting at the control steady state, a leading Evolve under control conditions changes nothing."""
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        params = _mixed_params(rng, linear=True)
        waits = rng.uniform(0, 50, 16)  # 16 experiments of 2 segments: shares the compiled superposition solve
        e = _edit(rng)
        kw = dict(x0="steady", media0=jnp.zeros(1), x_guess=jnp.full(N, 0.5))
        waited = run_many(stack([Evolve(w) >> Perturb(e) >> Evolve(1.0) >> Measure() for w in waits]), mixed_field, params, **kw)
        np.testing.assert_allclose(waited.state, np.tile(waited.state[0], (16, 1)), rtol=1e-8)


def _random_table(rng, n):
    t_pert = rng.choice([0.0, 0.5, 1.0], n)
    lag = rng.choice([0.0, 0.25, 2.0], n)
    order = rng.choice(["perturb_then_media", "media_then_perturb", "simultaneous"], n)
    sign = np.select([order == "perturb_then_media", order == "media_then_perturb"], [1.0, -1.0], 0.0)
    t_media = t_pert + sign * lag
    t_meas = np.maximum(t_pert, t_media) + rng.choice([0.0, 1.0, 3.0], n)
    return pd.DataFrame(
        {
            "t": t_meas,
            "onset": t_pert,
            "p": rng.choice(["ctrl", "A", "B"], n),
            "m": rng.choice(["EGF", "TNF"], n),
            "o": order,
            "lag": lag,
        }
    ), t_media


@pytest.mark.parametrize("seed", range(5))
def test_frame_protocols_reproduce_every_rows_events(seed):
    """Rebuilding each row's event times from its group's structure and durations gives back the table."""
    rng = np.random.default_rng(seed)
    df, t_media = _random_table(rng, 60)
    start = -2.0
    pr = protocols_from_frame(df, time_key="t", perturbation_key="p", perturbation_time_key="onset", media_key="m", order_key="o", lag="lag", start_time=start, control="ctrl")
    flat = [(g, i) for g in pr.groups for i in range(len(g.perturbation_index))]
    # deduplication is exact: rows share a protocol iff they share labels, event times and event order
    pert_first = (df["onset"] < t_media) | ((df["onset"] == t_media) & (df["o"] == "perturb_then_media"))
    key = pd.Series(list(zip(df["p"], df["m"], df["onset"], t_media, df["t"], pert_first)))
    assert key.groupby(pr.row_protocol).nunique().max() == 1
    assert len(flat) == key.nunique()
    for r, row in enumerate(df.itertuples()):
        g, i = flat[pr.row_protocol[r]]
        clock, times = start, {}
        j = 0
        for kind in g.structure:
            if kind == "Evolve":
                clock += g.durations[i, j]
                j += 1
            elif kind in ("Perturb", "Media"):
                times[kind] = clock
        np.testing.assert_allclose([times["Perturb"], times["Media"], clock], [row.onset, t_media[r], row.t], atol=1e-12)
        assert pr.perturbation_labels[g.perturbation_index[i]] == row.p
        assert pr.media_labels[g.media_index[i]] == row.m
        if row.onset != t_media[r]:
            assert (g.structure.index("Perturb") < g.structure.index("Media")) == (row.onset < t_media[r])


def _pd_params(rng, scale=1.0):
    from semimech.dynamics import ProductionDecayParams

    return ProductionDecayParams(
        W=jnp.asarray(rng.normal(0, 2.0, (N, N))),
        b=jnp.asarray(rng.normal(0, 1.0, N)),
        alpha=scale * jnp.asarray(rng.uniform(0.5, 2.0, N)),
        gamma=scale * jnp.asarray(rng.uniform(0.5, 1.5, N)),
        M=jnp.asarray(rng.normal(0, 1.0, (N, 1))),
    )


def test_rescaling_all_rates_is_rescaling_time():
    """Production-decay with rates c*alpha, c*gamma over durations t/c gives the states of rates alpha,
    gamma over t: Evolve integrates in the field's own time units (16 random protocols, c = 4)."""
    from semimech.dynamics import production_decay_field

    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        slow, fast = _pd_params(np.random.default_rng(6)), _pd_params(np.random.default_rng(6), scale=4.0)
        t1, t2 = rng.uniform(0, 3, 16), rng.uniform(0, 3, 16)
        edits, media = [_edit(rng) for _ in range(16)], rng.normal(0, 1, 16)
        kw = dict(x0=jnp.asarray(rng.uniform(0, 1, N)), media0=jnp.zeros(1))

        def exps(c):
            return [Perturb(e) >> Evolve(a / c) >> Media(jnp.array([m])) >> Evolve(b / c) >> Measure() for e, m, a, b in zip(edits, media, t1, t2)]

        ref = run_many(exps(1.0), production_decay_field, slow, **kw)
        scaled = run_many(exps(4.0), production_decay_field, fast, **kw)
        assert bool(jnp.all(ref.ok & scaled.ok))
        np.testing.assert_allclose(scaled.state, ref.state, rtol=1e-7, atol=1e-9)


def test_a_clamp_holds_its_variable_after_long_evolution():
    """do(x_j = v) through a protocol: with the package's field, the clamped variable settles at v."""
    from semimech.dynamics import production_decay_field

    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        params = _pd_params(rng)
        j, v = rng.integers(0, N, 16), rng.uniform(0, 2, 16)
        clamps = [Intervention(jnp.ones(N), jnp.arange(N) == jj, jnp.full(N, vv)) for jj, vv in zip(j, v)]
        kw = dict(x0=jnp.asarray(rng.uniform(0, 1, N)), media0=jnp.zeros(1))
        res = run_many([Perturb(c) >> Evolve(20.0) >> Media(jnp.ones(1)) >> Evolve(20.0) >> Measure() for c in clamps], production_decay_field, params, **kw)
        np.testing.assert_allclose(np.asarray(res.state)[np.arange(16), j], v, atol=1e-7)
