"""Reading per-sample protocols from table columns: structure, deduplication, validation, running."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from semimech.dynamics.intervention import Intervention
from semimech.errors import DesignError
from semimech.protocol import (
    Evolve,
    Measure,
    Media,
    Perturb,
    build_group,
    protocols_from_frame,
    run,
    run_protocols,
)


def field(x, params, *, media, intervention):
    drive = params["W"] @ x + params["b"] + params["B"] @ media
    return params["alpha"] * intervention.production * jax.nn.sigmoid(drive) - params["gamma"] * x


PARAMS = dict(
    alpha=jnp.array([2.0, 1.5]),
    W=jnp.array([[0.0, -3.0], [4.0, 0.0]]),
    b=jnp.array([0.5, -2.0]),
    B=jnp.array([[3.0, 0.0], [-1.0, 1.0]]),
    gamma=jnp.array([1.0, 0.7]),
)
EDITS = {"ctrl": Intervention.none(2), "KO1": Intervention.scale(jnp.array([0.0, 1.0])), "KD2": Intervention.scale(jnp.array([1.0, 0.4]))}
MEDIA = {"base": jnp.zeros(2), "EGF": jnp.array([1.0, 0.0]), "TNF": jnp.array([0.0, 2.0])}


def _frame():
    return pd.DataFrame(
        {
            "hours": [2.0, 2.0, 2.0, 6.0, 6.0, 2.0, 2.0, 6.0],
            "guide": ["ctrl", "KO1", "KO1", "ctrl", "KD2", "ctrl", "KO1", "KO1"],
            "stim": ["EGF", "EGF", "EGF", "TNF", "TNF", "EGF", "EGF", "base"],
            "order": ["perturb_then_media"] * 5 + ["media_then_perturb"] * 3,
        },
        index=[f"cell{i}" for i in range(8)],
    )


def test_structure_durations_and_deduplication():
    df = _frame()
    before = df.copy()
    pr = protocols_from_frame(df, time_key="hours", perturbation_key="guide", media_key="stim", order_key="order", lag=0.5, control="ctrl")
    pd.testing.assert_frame_equal(df, before)  # the user's table is not modified
    assert pr.perturbation_labels == ("ctrl", "KD2", "KO1") and pr.media_labels == ("EGF", "TNF", "base")
    assert [g.structure for g in pr.groups] == [
        ("Media", "Evolve", "Perturb", "Evolve", "Measure"),
        ("Perturb", "Evolve", "Media", "Evolve", "Measure"),
    ]
    # cells 1 and 2 share one protocol; 8 rows -> 7 unique protocols
    assert pr.row_protocol[1] == pr.row_protocol[2]
    assert sum(len(g.perturbation_index) for g in pr.groups) == 7
    flat = [(g, i) for g in pr.groups for i in range(len(g.perturbation_index))]
    g, i = flat[pr.row_protocol[4]]  # KD2, TNF, perturbation at 0, media at 0.5, measured at 6
    assert pr.perturbation_labels[g.perturbation_index[i]] == "KD2"
    assert pr.media_labels[g.media_index[i]] == "TNF"
    np.testing.assert_allclose(g.durations[i], [0.5, 5.5])
    g, i = flat[pr.row_protocol[7]]  # media 0.5 before the perturbation, measured 6 after it
    assert g.structure[0] == "Media"
    np.testing.assert_allclose(g.durations[i], [0.5, 6.0])


def test_time_since_perturbation_without_media_and_with_a_start_time():
    df = pd.DataFrame({"t": [0.0, 1.0, 1.0, 3.0], "p": ["ctrl", "KO1", "ctrl", "KO1"], "onset": [0.0, 0.5, 0.0, 2.0]})
    pr = protocols_from_frame(df, time_key="t", perturbation_key="p")
    assert [g.structure for g in pr.groups] == [("Perturb", "Evolve", "Measure")]
    np.testing.assert_allclose(pr.groups[0].durations[pr.row_protocol, 0], df["t"])
    pr2 = protocols_from_frame(df, time_key="t", perturbation_key="p", perturbation_time_key="onset", start_time=0.0)
    assert pr2.groups[0].structure == ("Evolve", "Perturb", "Evolve", "Measure")
    np.testing.assert_allclose(pr2.groups[0].durations[pr2.row_protocol], np.c_[df["onset"], df["t"] - df["onset"]])


def test_media_time_column_and_consistent_order():
    df = pd.DataFrame(
        {"t": [1.0, 1.0, 1.0], "p": ["KO1"] * 3, "m": ["EGF"] * 3, "tm": [-0.5, 0.5, 0.0], "o": ["media_then_perturb", "perturb_then_media", "simultaneous"]}
    )
    pr = protocols_from_frame(df, time_key="t", perturbation_key="p", media_key="m", media_time_key="tm", order_key="o")
    kinds = {g.structure[0] for g in pr.groups}
    assert kinds == {"Media", "Perturb"}


@pytest.mark.parametrize(
    "change, kwargs, match",
    [
        (lambda d: d.assign(hours=-d["hours"]), {}, "Negative measurement times"),
        (lambda d: d.assign(hours=d["hours"].where(d.index != "cell3", np.nan)), {}, "missing or non-numeric.*cell3"),
        (lambda d: d.assign(hours=d["hours"].astype(object).where(d.index != "cell0", "two")), {}, "non-numeric.*cell0"),
        (lambda d: d.assign(onset=[0.0] * 7 + [7.0]), dict(perturbation_time_key="onset"), "Perturbation scheduled after the measurement.*cell7"),
        (lambda d: d, dict(lag=3.0), "Media change scheduled after the measurement"),
        (lambda d: d.assign(order=["perturb then media"] * 8), {}, "Unknown order labels"),
        (lambda d: d, dict(lag=None), "needs the time between"),
        (lambda d: d, dict(lag=-1.0), "Negative lag"),
        (lambda d: d.drop(columns="stim"), {}, "Media column 'stim' is not in the table"),
        (lambda d: d, dict(control="NT"), "control label 'NT' not found"),
        (lambda d: d, dict(start_time=0.0), "Events before start_time"),
        (lambda d: d.assign(guide=[None] + ["KO1"] * 7), {}, "missing labels"),
        (lambda d: d.iloc[:0], {}, "empty"),
    ],
)
def test_bad_tables_give_clear_design_errors(change, kwargs, match):
    args = dict(time_key="hours", perturbation_key="guide", media_key="stim", order_key="order", lag=0.5) | kwargs
    with pytest.raises(DesignError, match=match):
        protocols_from_frame(change(_frame()), **args)


def test_declared_order_contradicting_the_times_is_out_of_order():
    df = pd.DataFrame({"t": [1.0, 1.0], "p": ["KO1"] * 2, "m": ["EGF"] * 2, "tm": [0.5, 0.5], "o": ["perturb_then_media", "media_then_perturb"]})
    with pytest.raises(DesignError, match="out of order.*1"):
        protocols_from_frame(df, time_key="t", perturbation_key="p", media_key="m", media_time_key="tm", order_key="o")
    with pytest.raises(DesignError, match="pass media_key"):
        protocols_from_frame(df, time_key="t", perturbation_key="p", order_key="o")


def test_run_protocols_matches_hand_built_experiments():
    df = _frame()
    pr = protocols_from_frame(df, time_key="hours", perturbation_key="guide", media_key="stim", order_key="order", lag=0.5, control="ctrl")
    res = run_protocols(pr, field, PARAMS, interventions=EDITS, media=MEDIA, x0="steady", media0=jnp.zeros(2), x_guess=jnp.full(2, 0.5))
    assert bool(jnp.all(res.ok))
    per_row = res.state[pr.row_protocol]
    x0 = res.initial[0]
    for i, row in enumerate(df.itertuples()):
        ev = Media(MEDIA[row.stim]), Perturb(EDITS[row.guide])
        first, second = ev if row.order == "media_then_perturb" else ev[::-1]
        t2 = row.hours if row.order == "media_then_perturb" else row.hours - 0.5
        exp = first >> Evolve(0.5) >> second >> Evolve(t2) >> Measure()
        ref = run(exp, field, PARAMS, x0=x0, media0=jnp.zeros(2)).state
        np.testing.assert_allclose(per_row[i], ref, rtol=1e-4, atol=1e-6)
    # controls are time-matched: same schedule, identity edit, different state from the KO
    assert np.max(np.abs(np.asarray(per_row[0] - per_row[1]))) > 1e-2


def test_build_group_accepts_arrays_and_checks_tables():
    pr = protocols_from_frame(_frame(), time_key="hours", perturbation_key="guide", media_key="stim", order_key="order", lag=0.5, control="ctrl")
    stacked_edits = jax.tree.map(lambda *xs: jnp.stack(xs), *[EDITS[k] for k in pr.perturbation_labels])
    media = jnp.stack([MEDIA[k] for k in pr.media_labels])
    e = build_group(pr.groups[0], pr, interventions=stacked_edits, media=media)
    assert e.structure == pr.groups[0].structure
    assert e.ops[2].p.production.shape == (len(pr.groups[0].perturbation_index), 2)
    with pytest.raises(DesignError, match="no entry for perturbation labels"):
        build_group(pr.groups[0], pr, interventions={"ctrl": EDITS["ctrl"]}, media=MEDIA)
    with pytest.raises(DesignError, match="pass media="):
        build_group(pr.groups[0], pr, interventions=EDITS)
    with pytest.raises(DesignError, match="one row per media label"):
        build_group(pr.groups[0], pr, interventions=EDITS, media=media[:2])


def test_real_cellnopt_design_reads_as_inhibitor_then_stimulus_protocols(shared_data):
    """EGFR-ErbB (Saez-Rodriguez et al. 2009), HepG2: 7 inhibitor settings x TGFa/none x 0/30/180 min
    after the stimulus. We assume a 60 min inhibitor pre-incubation (the clock is the stimulus)."""
    from semimech.datasets import read_midas

    tidy = read_midas(shared_data / "cellnopt_liver_phospho/EGFR-ErbB_PCB2009/data/RawData-Exp1.csv")
    samples = tidy.drop_duplicates("row").query("cell_line == 'HepG2'").set_index("row")
    samples = samples.assign(onset=-60.0, stim_time=0.0)
    pr = protocols_from_frame(
        samples,
        time_key="time",
        perturbation_key="inhibitors",
        perturbation_time_key="onset",
        media_key="stimuli",
        media_time_key="stim_time",
        order_key=None,
        control="none",
    )
    assert len(samples) == 42 and pr.perturbation_labels[0] == "none" and len(pr.perturbation_labels) == 7
    assert set(pr.media_labels) == {"TGFa", "none"}
    (group,) = pr.groups
    assert group.structure == ("Perturb", "Evolve", "Media", "Evolve", "Measure")
    np.testing.assert_allclose(group.durations[pr.row_protocol], np.c_[np.full(42, 60.0), samples["time"]])
    assert len(group.durations) == 42  # every (inhibitor, stimulus, time) is measured once

    # run a toy 2-node pathway (rates per minute): TGFa drives node 0, which drives node 1
    def pathway(x, params, *, media, intervention):
        drive = jnp.array([2.0 * media[0] - 1.0, 4.0 * x[0] - 2.0])
        return 0.05 * (intervention.production * jax.nn.sigmoid(drive) - x)

    edits = {lab: Intervention.scale(jnp.array([1.0, 0.2 if lab == "MEK12i" else 1.0])) for lab in pr.perturbation_labels}
    res = run_protocols(pr, pathway, None, interventions=edits, media={"TGFa": jnp.ones(1), "none": jnp.zeros(1)}, x0="steady", media0=jnp.zeros(1), x_guess=jnp.zeros(2))
    assert bool(jnp.all(res.ok))
    state = pd.DataFrame(np.asarray(res.state[pr.row_protocol]), index=samples.index, columns=["node0", "node1"]).join(samples)
    at = state.set_index(["inhibitors", "stimuli", "time"])
    # at t = 0 the stimulus has had no time to act; later it raises node 0, and MEK12i caps node 1
    assert abs(at.loc[("none", "TGFa", 0.0), "node0"] - at.loc[("none", "none", 0.0), "node0"]) < 1e-5
    assert at.loc[("none", "TGFa", 180.0), "node0"] > at.loc[("none", "none", 180.0), "node0"] + 0.1
    assert at.loc[("MEK12i", "TGFa", 180.0), "node1"] < at.loc[("none", "TGFa", 180.0), "node1"] - 0.1
