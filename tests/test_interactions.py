"""Pairwise interactions and contexts in the models: prediction tables, alignment, recovery."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import semimech as sm
from semimech.models import additive
from semimech.models._treatments import local_scale

STIMULI = ("EGF", "TNFa")
INHIBITORS = ("MEKi", "PI3Ki", "p38i")


def simulate(*, contexts=("L1", "L2", "L3"), n_genes=3, reps=1, pairs=None, noise=0.1, context_sd=0.3,
             max_inhibitors=3, rng_key=0):
    """Stimulus x inhibitor x context table with known main effects, context deviations and pair terms.

    ``pairs``: ``{(level, level): (genes,) interaction}``; all other pairs are exactly additive.
    Returns the frame and the truth (a function: condition -> noiseless mean).
    """
    rng = np.random.default_rng(rng_key)
    levels = STIMULI + INHIBITORS
    effect = {lv: rng.normal(0, 1.0, n_genes) for lv in levels}
    dev = {(c, lv): rng.normal(0, context_sd, n_genes) for c in contexts for lv in levels}
    base = {c: rng.normal(0, 0.5, n_genes) for c in contexts}
    pairs = {frozenset(k): np.asarray(v) for k, v in (pairs or {}).items()}

    def mean(stims, inhs, c):
        on = tuple(stims) + tuple(inhs)
        out = base[c] + sum((effect[lv] + dev[(c, lv)] for lv in on), np.zeros(n_genes))
        for a, b in itertools.combinations(on, 2):
            out = out + pairs.get(frozenset((a, b)), 0.0)
        return out

    rows = []
    stim_sets = [(), ("EGF",), ("TNFa",), ("EGF", "TNFa")]
    inh_sets = [s for k in range(max_inhibitors + 1) for s in itertools.combinations(INHIBITORS, k)]
    for c in contexts:
        for st in stim_sets:
            for ih in inh_sets:
                m = mean(st, ih, c)
                for _ in range(reps):
                    rows.append({"stim": "+".join(st) or "none", "inh": list(ih), "line": c,
                                 **{f"g{g}": m[g] + rng.normal(0, noise) for g in range(n_genes)}})
    frame = pd.DataFrame(rows, index=[f"r{i}" for i in range(len(rows))])
    return frame, mean


def design_of(frame, n_genes=3):
    return sm.Design.from_frame(frame, readouts=[f"g{g}" for g in range(n_genes)],
                                factors={"stimulus": "stim", "inhibitor": "inh"}, context_key="line")


@pytest.fixture(scope="module")
def small_fit():
    """A short fit on singles, stimulus pairs and one inhibitor pair: MEKi+p38i and PI3Ki+p38i never seen."""
    frame, _ = simulate(rng_key=1, reps=2)
    keep = frame["inh"].map(lambda x: len(x) <= 1 or set(x) == {"MEKi", "PI3Ki"})
    return sm.fit_svi(additive.SPEC, design_of(frame[keep]), rng_key=0, num_steps=40, num_samples=30,
                      progress_bar=False)


def _table():
    rows = [{"stimulus": st, "inhibitor": ih, "context": c}
            for c in ("L1", "L2", "L3")
            for st in ([], ["EGF"], ["EGF", "TNFa"])
            for ih in ([], ["MEKi"], ["MEKi", "p38i"], ["PI3Ki", "p38i", "MEKi"])]
    return pd.DataFrame(rows)


def test_one_call_across_contexts_equals_per_context_calls(small_fit):
    table = _table()
    whole = sm.predict(small_fit, table, rng_key=5)
    assert len(whole.perturbations) == len(table)
    assert "EGF+MEKi+p38i@L2" in whole.perturbations  # a pair never seen together, in one call
    for c in ("L1", "L2", "L3"):
        part = sm.predict(small_fit, table[table["context"] == c], rng_key=5)
        idx = [whole.perturbations.index(p) for p in part.perturbations]
        np.testing.assert_array_equal(whole.draws["mean"][:, idx], part.draws["mean"])
    # the list-of-dicts form and hand-written labels give the same draws
    lab = sm.predict(small_fit, ["p38i+MEKi+EGF@L2", "control@L1"], rng_key=5)
    for p in lab.perturbations:
        canon = "EGF+MEKi+p38i@L2" if "p38i" in p else "control@L1"
        np.testing.assert_array_equal(lab.draws["mean"][:, lab.perturbations.index(p)],
                                      whole.draws["mean"][:, whole.perturbations.index(canon)])
    # negative control: another key gives other draws for the unseen pair (the equality above is not vacuous)
    other = sm.predict(small_fit, table, rng_key=6)
    i = whole.perturbations.index("EGF+MEKi+p38i@L2")
    assert not np.allclose(other.draws["mean"][:, i], whole.draws["mean"][:, i])


def test_seen_conditions_reuse_fitted_terms_and_unseen_pairs_draw_from_the_scale(small_fit, pair_terms):
    d = small_fit.design
    # a seen condition: its draws are the fitted means
    seen = "EGF+MEKi+PI3Ki@L1"
    p = sm.predict(small_fit, [seen], rng_key=0)
    np.testing.assert_allclose(p.draws["mean"][:, 0], small_fit.flat("mean")[:, d.perturbations.index(seen)],
                               rtol=1e-5, atol=1e-5)
    # an unseen inhibitor pair (MEKi, p38i): mean = its single-level parts + a fresh pair term with the learned
    # inhibitor|inhibitor scale
    q = sm.predict(small_fit, ["MEKi+p38i@L1", "MEKi@L1", "p38i@L1", "control@L1"], rng_key=0)
    m = q.draws["mean"]
    resid = m[:, 0] - (m[:, 1] + m[:, 2] - m[:, 3])
    unit = np.asarray(d.model_data()["baseline_scale"])
    ii = d.coords["factor_pairs"].index("inhibitor|inhibitor")
    tau = small_fit.flat("interaction_scale")[:, ii, None] * small_fit.flat("interaction_sd")
    ref = tau * unit * pair_terms(small_fit, np.tile(tau, (20, 1))).reshape(20, *tau.shape) \
        + small_fit.flat("pair_context_sd")[:, None] * unit * np.random.default_rng(1).normal(size=(20, *tau.shape))
    assert stats.ks_2samp(resid.ravel(), ref.ravel()).pvalue > 1e-3
    # negative control: a seen single is exactly its fitted mean, no fresh term
    np.testing.assert_allclose(m[:, 1], small_fit.flat("mean")[:, d.perturbations.index("MEKi@L1")], rtol=1e-5,
                               atol=1e-5)


def test_predict_errors_name_level_and_context(small_fit):
    from semimech.errors import SemimechError

    with pytest.raises(SemimechError, match="unknown level 'AKTi'"):
        sm.predict(small_fit, [{"inhibitor": "AKTi", "context": "L1"}], rng_key=0)
    with pytest.raises(SemimechError, match="unknown level 'AKTi'.*neither a treatment level"):
        sm.predict(small_fit, pd.DataFrame({"stim": ["EGF"], "inh": [["AKTi"]], "line": ["L9"]}), rng_key=0)


# every registered model on a factor design with contexts (counts, batches): tests/test_models_contract.py


def test_factor_fit_saves_and_loads(small_fit, tmp_path):
    small_fit.save(tmp_path / "fit")
    back = sm.load(tmp_path / "fit")
    d, e = small_fit.design, back.design
    assert e.contexts == d.contexts and e.target_factors == d.target_factors and e.factor_spec == d.factor_spec
    np.testing.assert_array_equal(e.perturbation_context, d.perturbation_context)
    table = _table()
    np.testing.assert_array_equal(sm.predict(back, table, rng_key=2).draws["mean"],
                                  sm.predict(small_fit, table, rng_key=2).draws["mean"])


def _pair_draws(fit):
    """Draws of the shared pair interactions on the data scale, ``(draws, pairs, genes)``, and pair names."""
    d = fit.design
    md = d.model_data()
    unit = np.asarray(md["baseline_scale"])
    scale = fit.flat("interaction_scale")[:, md["pair_factor_pair"]]  # (draws, pairs)
    tau = scale[:, :, None] * fit.flat("interaction_sd")[:, None, :]
    z = fit.flat("pair_z")
    if "pair_local_z" in fit.samples:  # interactions="horseshoe" (the default)
        z = z * np.asarray(local_scale(fit.flat("pair_local_z"), tau, slab=fit.options.get("interaction_slab", 2.0)))
    draws = tau * unit * z
    names = [frozenset((d.targets[i], d.targets[j])) for i, j in md["pair_index"]]
    return draws, names


TRUE_PAIRS = {("EGF", "MEKi"): [1.0, 0.0, -0.8], ("MEKi", "PI3Ki"): [-1.0, 0.7, 0.0]}


@pytest.mark.slow
def test_pairwise_interactions_recovered_and_not_invented_from_shuffled_data():
    """NUTS on a replicated 2-context stimulus x inhibitor design with two known non-additive pairs.

    Known answer: the entries of the two true pairs with |interaction| >= 0.7 have 90% intervals
    that exclude zero with the right sign and cover the truth; the other pair entries (truly zero)
    rarely exclude zero. Negative control: the same rows with readouts shuffled across rows (no
    structure left): the true pairs are no longer found and almost no entry excludes zero.
    """
    frame, _ = simulate(contexts=("L1", "L2"), reps=3, pairs=TRUE_PAIRS, noise=0.15, context_sd=0.2, rng_key=4)
    truth = {frozenset(k): np.asarray(v) for k, v in TRUE_PAIRS.items()}

    def fit_of(f):
        return sm.fit_nuts(additive.SPEC, design_of(f), rng_key=0, num_warmup=400, num_samples=400, num_chains=1,
                           progress_bar=False)

    draws, names = _pair_draws(fit_of(frame))
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    found, covered, false_hits, n_zero = 0, 0, 0, 0
    for q, name in enumerate(names):
        t = truth.get(name, np.zeros(3))
        for g in range(3):
            if abs(t[g]) >= 0.7:
                found += (lo[q, g] > 0) if t[g] > 0 else (hi[q, g] < 0)
                covered += lo[q, g] <= t[g] <= hi[q, g]
            elif t[g] == 0:
                n_zero += 1
                false_hits += (lo[q, g] > 0) or (hi[q, g] < 0)
    assert found == 4 and covered >= 3, (found, covered)
    assert false_hits <= max(2, 0.15 * n_zero), (false_hits, n_zero)

    shuffled = frame.copy()
    genes = [c for c in frame.columns if c.startswith("g")]
    shuffled[genes] = frame[genes].to_numpy()[np.random.default_rng(0).permutation(len(frame))]
    draws, names = _pair_draws(fit_of(shuffled))
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    excl = (lo > 0) | (hi < 0)
    assert excl.sum() <= max(2, 0.1 * excl.size), excl.sum()
    for name in truth:
        assert not excl[names.index(name)].any()


def test_horseshoe_local_scale_is_half_cauchy_and_bounded_by_the_slab():
    """Known answer: with a small global scale the local scale of a standard-normal draw is
    half-Cauchy(0, 1) (median 1, 90% quantile tan(0.45 pi) = 6.31); the entry sd ``tau * local``
    never exceeds the slab, however large the draw. Negative control: a half-normal's quantiles
    (0.67, 1.64) are far from those."""
    z = np.random.default_rng(0).normal(size=200_000)
    lam = np.asarray(local_scale(z, 1e-4, slab=2.0))
    np.testing.assert_allclose(np.quantile(lam, [0.5, 0.9]), [1.0, np.tan(0.45 * np.pi)], rtol=0.03)
    assert not np.allclose(np.quantile(np.abs(z), [0.5, 0.9]), [1.0, np.tan(0.45 * np.pi)], rtol=0.3)
    for tau in (0.01, 0.5, 3.0):
        sd = tau * np.asarray(local_scale(np.array([-3.0, 0.0, 3.0, 6.0, 40.0]), tau, slab=2.0))
        assert np.all(sd <= 2.0 + 1e-6) and np.all(np.diff(sd) >= 0) and sd[-1] > 1.0
