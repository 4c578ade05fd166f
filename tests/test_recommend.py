"""design.recommend: which experiment next (issue 16).

Known answers: the estimators against closed forms on Gaussian draws; on a simulated screen with
one large interaction the information objective ranks that combination first. Negative controls:
the same screen with every interaction zero (no candidate stands out beyond Monte Carlo error),
discriminating a fit from itself (gains ~ 0). Plus diminishing returns, controls per batch, the
Monte Carlo error against repeated runs, and bad input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.design import _gain, recommend
from semimech.errors import DesignError, PredictionError
from semimech.models import additive

TARGETS = ("A", "B", "C", "D")
COMBOS = [f"{a}+{b}" for i, a in enumerate(TARGETS) for b in TARGETS[i + 1:]]
G = 8
G_TOY = 4


def _screen(big: float, seed: int = 0, reps: int = 3) -> sm.Design:
    """Control, 4 singles, their 6 doubles; only A+B interacts (+big on half the genes)."""
    rng = np.random.default_rng(seed)
    eff = {t: rng.normal(0, 0.5, G) for t in TARGETS}
    rows = []
    for c in ["control", *TARGETS, *COMBOS]:
        ts = [] if c == "control" else c.split("+")
        mu = 1.0 + sum((eff[t] for t in ts), np.zeros(G))
        if c == "A+B":
            mu = mu + big * (np.arange(G) < G // 2)
        for _ in range(reps * (2 if c == "control" else 1)):
            rows.append([c, *(mu + rng.normal(0, 0.3, G))])
    genes = [f"g{i}" for i in range(G)]
    frame = pd.DataFrame(rows, columns=["cond", *genes])
    return sm.Design.from_frame(frame, readouts=genes, perturbation_key="cond", control="control")


@pytest.fixture(scope="module")
def fits():
    """One fit of the screen with a large A+B interaction, one with none (same compiled model)."""
    out = {}
    for name, big in (("large", 2.0), ("null", 0.0)):
        # horseshoe effects: the screen's singles are sparse and unrelated (no shared population response).
        # Gaussian interactions (interactions="normal", the additive model's default before the
        # horseshoe interactions): the known answers below were set for them. With the horseshoe
        # default the information ranking differs (measured: the large fit ranks B+D first, the null
        # fit's gains spread 0.1-1.6 nats, beyond 3 Monte Carlo SE): an open question for recommend
        # with heavy-tailed posteriors (/work/notes/treatments.md), not checked by these tests.
        out[name] = sm.fit_svi(additive.SPEC, _screen(big), rng_key=0, num_steps=800, progress_bar=False,
                               effects="horseshoe", interactions="normal")
    return out


def _z_lead(ranking: pd.DataFrame, label: str) -> float:
    """How far ``label``'s gain lies above the median of the others', in its standard errors."""
    row = ranking.set_index("condition").loc[label]
    others = ranking[ranking["condition"] != label]
    se = np.hypot(row["gain_se"], float(np.median(others["gain_se"])))
    return float((row["gain_alone"] - np.median(others["gain_alone"])) / se)


# ------------------------------------------------------------------ estimators (known answers)
def _gaussian_draws(S=512, C=3, G=4, r=0.1, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, (S, C, G))
    theta[:, 1] = theta[:, 0] + 0.05 * rng.normal(size=(S, G))  # 1 is a near-duplicate of 0
    var = np.full((S, C, G), r)
    return theta, var, theta + rng.normal(0, np.sqrt(r), theta.shape)


def test_reweight_information_matches_gaussian_closed_form():
    """Quantity = candidate 2 itself, N(0, 1) draws, noise variance r: gain 0.5 log(1 + 1/r) per gene."""
    theta, var, out = _gaussian_draws(r=0.5)
    rk = _gain.reweight(theta, var, out, theta[:, 2:], budget=1, kind="information", num_outcomes=128)
    exact = G_TOY * 0.5 * np.log(1 + 1 / 0.5)
    assert rk.alone[2] == pytest.approx(exact, rel=0.1)
    assert abs(rk.alone[0]) < 0.1 * exact and abs(rk.alone[1]) < 0.1 * exact  # independent: teaches nothing
    assert 0 < rk.alone_se[2] < 0.1 * exact


def test_gaussian_update_matches_closed_form():
    theta, var, _ = _gaussian_draws(r=0.5)
    rk = _gain.gaussian_predictive(theta, var, theta[:, 2:], budget=1)
    exact = G_TOY * (1 - 0.5 / 1.5)  # variance 1 -> 1/(1 + 1/r)
    assert rk.alone[2] == pytest.approx(exact, rel=0.1)
    assert rk.total_before == pytest.approx(G_TOY, rel=0.1)


@pytest.mark.parametrize("estimator", ["gaussian", "reweight"])
def test_batch_of_near_duplicates_is_not_chosen(estimator):
    """Candidates 0 and 1 measure nearly the same thing; 2 is independent and slightly less
    informative alone. Greedy takes one of the pair then 2; ranking by gain alone takes the pair."""
    theta, var, out = _gaussian_draws(r=0.1)
    var[:, 2] = 0.15
    if estimator == "gaussian":
        run = lambda greedy: _gain.gaussian_predictive(theta, var, theta, budget=2, greedy=greedy)  # noqa: E731
    else:
        run = lambda greedy: _gain.reweight(theta, var, out, theta, budget=2, kind="information",  # noqa: E731
                                            num_outcomes=128, greedy=greedy)
    greedy, alone = run(True), run(False)
    assert {p.index for p in alone.picks} == {0, 1}  # the negative control: no diminishing returns
    assert greedy.picks[0].index in (0, 1) and greedy.picks[1].index == 2
    dup = 1 - greedy.picks[0].index
    assert alone.alone[dup] > alone.alone[2]  # alone the duplicate looks better than 2 ...
    # ... and 2, independent of the first pick, gains about as much after it as alone
    assert greedy.picks[1].gain == pytest.approx(alone.alone[2], rel=0.1)


# ------------------------------------------------------------------ simulated screen
def test_information_ranks_the_large_interaction_first(fits):
    r = recommend(fits["large"], COMBOS, budget=2, objective="information", about="interactions", rng_key=1,
                  num_outcomes=128)
    ranking = pd.DataFrame(r.attrs["ranking"])
    assert ranking["condition"].iloc[0] == "A+B" and r["condition"].iloc[0] == "A+B"
    assert _z_lead(ranking, "A+B") > 2.5
    assert r.attrs["objective"] == "information" and "nats" in r.attrs["unit"]
    cand = r[r["role"] == "candidate"]
    assert np.all(np.isfinite(cand["gain_se"])) and np.all(cand["gain_se"] > 0)  # the MC error is reported


def test_negative_control_no_interaction_ranks_like_random(fits):
    """Criterion: with every interaction zero no candidate's gain stands out; each lies within
    3 standard errors of the candidates' mean gain (an order no better than a random one up to
    Monte Carlo noise), and A+B leads the others by less than 2 SE (it led by > 2.5 above)."""
    r = recommend(fits["null"], COMBOS, budget=2, objective="information", about="interactions", rng_key=1,
                  num_outcomes=128)
    ranking = pd.DataFrame(r.attrs["ranking"])
    g, se = ranking["gain_alone"].to_numpy(), ranking["gain_se"].to_numpy()
    assert np.all(np.abs(g - g.mean()) < 3 * se)
    assert _z_lead(ranking, "A+B") < 2.0
    # the contrast, in standard errors: the same call on the large-interaction fit puts A+B ahead by
    # > 2.5 SE. (Raw gain ranges are not compared: their ratio large/null moved between 0.8 and 3.6
    # with the fits' seed, on main's per-condition interactions as with per-pair ones.)
    big = pd.DataFrame(recommend(fits["large"], COMBOS, budget=1, objective="information", rng_key=1,
                                 num_outcomes=128).attrs["ranking"])
    assert big["condition"].iloc[0] == "A+B" and _z_lead(big, "A+B") > 2.5


def test_reported_error_matches_repeat_spread(fits):
    """The gain's standard error agrees with the spread over simulated-outcome seeds (factor 3)."""
    gains, ses = [], []
    for key in range(5):
        r = recommend(fits["large"], ["A+B", "C+D"], budget=1, objective="information", rng_key=key,
                      num_outcomes=64, targets=COMBOS)
        rk = pd.DataFrame(r.attrs["ranking"]).set_index("condition")
        gains.append(rk.loc["C+D", "gain_alone"])
        ses.append(rk.loc["C+D", "gain_se"])
    spread, se = float(np.std(gains, ddof=1)), float(np.mean(ses))
    assert se / 3 < spread < 3 * se, (spread, se)


def test_predictive_objective_prefers_measuring_the_target(fits):
    r = recommend(fits["large"], ["A+C", "C+D", "B"], budget=1, objective="predictive", rng_key=0,
                  targets=["C+D"])
    assert r["condition"].iloc[0] == "C+D"
    assert 0 < r["expected_gain"].iloc[0] < r.attrs["total_before"]
    rw = recommend(fits["large"], ["A+C", "C+D", "B"], budget=1, objective="predictive", rng_key=0,
                   targets=["C+D"], estimator="reweight")
    assert rw["condition"].iloc[0] == "C+D" and np.isfinite(rw["gain_se"].iloc[0])


def test_candidate_gains_do_not_depend_on_the_order_of_candidates_and_targets(fits):
    """Each candidate's gain comes from its own columns of the draws (candidates that are also
    targets, listed in another order): the same gains either way, and the gains differ, so
    columns taken from the wrong condition would show."""
    kw = dict(budget=1, objective="predictive", rng_key=0, targets=["B", "A+B", "C+D"])
    a = pd.DataFrame(recommend(fits["large"], ["A+C", "C+D", "B"], **kw).attrs["ranking"]).set_index("condition")
    b = pd.DataFrame(recommend(fits["large"], ["B", "C+D", "A+C"], **kw).attrs["ranking"]).set_index("condition")
    np.testing.assert_allclose(a.loc[["A+C", "C+D", "B"], "gain_alone"], b.loc[["A+C", "C+D", "B"], "gain_alone"],
                               rtol=1e-6)
    assert np.ptp(a["gain_alone"]) > 0.1 * a["gain_alone"].max()


def test_discriminate_finds_where_two_fits_disagree(fits):
    r = recommend(fits["large"], COMBOS, budget=1, objective="discriminate", other=fits["null"], rng_key=0)
    ranking = pd.DataFrame(r.attrs["ranking"])
    assert ranking["condition"].iloc[0] == "A+B" and _z_lead(ranking, "A+B") > 3
    # negative control: a fit against itself cannot be told apart anywhere
    same = pd.DataFrame(recommend(fits["null"], COMBOS, budget=1, objective="discriminate", other=fits["null"],
                                  rng_key=0).attrs["ranking"])
    assert np.all(np.abs(same["gain_alone"]) < 3 * same["gain_se"] + 0.05)


def test_controls_in_every_batch(fits):
    r = recommend(fits["large"], COMBOS, budget=4, objective="predictive", rng_key=0, batches=2, num_cells=3)
    ctrl = r[r["role"] == "control"]
    assert sorted(ctrl["batch"]) == [0, 1] and set(ctrl["condition"]) == {"control"}
    assert np.all(ctrl["num_cells"] >= 3)  # Dunnett: about sqrt(K) times a condition's cells
    cand = r[r["role"] == "candidate"]
    assert list(cand["pick"]) == [1, 2, 3, 4] and sorted(cand["batch"]) == [0, 0, 1, 1]
    assert "Dunnett" in r.attrs["allocation"] or "control" in r.attrs["allocation"]


def test_input_is_not_mutated(fits):
    cands = pd.DataFrame({"condition": COMBOS, "note": range(6)})
    before = cands.copy()
    recommend(fits["large"], cands, budget=2, rng_key=0)
    pd.testing.assert_frame_equal(cands, before)


# ------------------------------------------------------------------ bad input
def test_bad_input_is_a_clear_error(fits):
    fit = fits["large"]
    with pytest.raises(DesignError, match=r"unknown to the fitted design: 'NOPE'.*'ZZZ'"):
        recommend(fit, ["A+NOPE", "ZZZ", "C+D"], budget=1, rng_key=0)
    with pytest.raises(DesignError, match="budget 7 is larger than the pool of 6"):
        recommend(fit, COMBOS, budget=7, rng_key=0)
    with pytest.raises(DesignError, match="budget must be a whole number"):
        recommend(fit, COMBOS, budget=0, rng_key=0)
    with pytest.raises(PredictionError, match="no 'edges' to learn about"):
        recommend(fit, COMBOS, budget=1, objective="information", about="edges", rng_key=0)
    with pytest.raises(PredictionError, match="needs combinations"):
        recommend(fit, ["A", "B"], budget=1, objective="information", about="interactions", rng_key=0)
    with pytest.raises(PredictionError, match="other="):
        recommend(fit, COMBOS, budget=1, objective="discriminate", rng_key=0)
    with pytest.raises(DesignError, match="objective 'entropy' is not one of"):
        recommend(fit, COMBOS, budget=1, objective="entropy", rng_key=0)
    with pytest.raises(DesignError, match="the same condition"):
        recommend(fit, ["A+B", "B+A"], budget=1, rng_key=0)
    with pytest.raises(DesignError, match="control"):
        recommend(fit, ["control", "A+B"], budget=1, rng_key=0)
    for bad in (0, -2, 2.5):  # 0 and -2 were taken silently
        with pytest.raises(DesignError, match=rf"num_outcomes must be a positive integer \(simulated outcomes per candidate\), got {bad!r}"):
            recommend(fit, COMBOS, budget=1, rng_key=0, num_outcomes=bad)


def test_factor_design_conditions_and_parts_keep_their_context():
    """Factor designs with contexts: one treatment set in two contexts is two candidates; the
    interaction of a combination is taken against its own context's singles and untreated mean."""
    from types import SimpleNamespace

    from semimech.design.recommend import _about, _same_condition

    frame = pd.DataFrame({"stim": ["none", "EGF", "none", "EGF", "none", "EGF"],
                          "inh": [[], [], ["MEKi"], ["MEKi", "PI3Ki"], [], ["PI3Ki"]],
                          "line": ["L1", "L1", "L1", "L1", "L2", "L2"], "g0": np.arange(6.0) + 0.5})
    d = sm.Design.from_frame(frame, readouts=["g0"], factors={"stimulus": "stim", "inhibitor": "inh"},
                             context_key="line")
    _same_condition(d, ["EGF+MEKi+PI3Ki@L1", "EGF+MEKi+PI3Ki@L2"])  # two contexts: two conditions
    with pytest.raises(DesignError, match="the same condition"):
        _same_condition(d, ["EGF+MEKi+PI3Ki@L1", "EGF+PI3Ki+MEKi@L1"])
    about = _about(SimpleNamespace(design=d), "interactions", ["EGF+MEKi+PI3Ki@L2", "MEKi@L1"])
    assert about.targets == ["EGF+MEKi+PI3Ki@L2"]
    assert about.parts == ["EGF@L2", "MEKi@L2", "PI3Ki@L2", "control@L2"]


@pytest.mark.heavy
def test_observation_variance_follows_each_contexts_noise():
    """A label design with contexts (context_noise, the default there): the variance of a new observation
    that the expected gains use is the candidate's context's, as predict draws it (sd 0.05 vs 0.4 here);
    one per-gene noise for both contexts (what recommend used before) would make them equal."""
    from semimech.design.recommend import _predict

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(5)]
    eff = {t: rng.normal(0, 0.5, len(genes)) for t in "ABCD"}
    rows = []
    for line, s in (("quiet", 0.05), ("loud", 0.4)):
        for _ in range(3):
            for lab in ["none", *eff]:
                mu = eff[lab] if lab != "none" else np.zeros(len(genes))
                rows.append(dict(drug=lab, line=line, **dict(zip(genes, mu + rng.normal(0, s, len(genes))))))
    frame = pd.DataFrame(rows, index=[f"o{i}" for i in range(len(rows))])
    d = sm.Design.from_frame(frame, readouts=genes, perturbation_key="drug", control="none", context_key="line")
    fit = sm.fit_svi(additive.SPEC, d, rng_key=0, num_steps=1000, num_samples=200, progress_bar=False)
    _, var, _ = _predict(fit, ["A@quiet", "A@loud"], 1, 0)
    sd = np.sqrt(var.mean(0)).mean(1)
    assert sd[1] > 2.0 * sd[0] and sd[1] == pytest.approx(0.4, rel=0.35)
    pred = sm.predict(fit, ["A@quiet", "A@loud"], rng_key=0, num_cells=1)
    assert np.allclose(var, np.broadcast_to(np.asarray(pred.noise, float) ** 2, var.shape), rtol=1e-5)
