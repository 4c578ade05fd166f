"""benchmarks/compare_cv.py reads the held-out contract's value (the mean over seeds) of the configuration
the comparison fits, not another one, and says which it used."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def compare_cv(benchmark_module):
    return benchmark_module("compare_cv")


def _entry(per_seed):
    import numpy as np

    return {"value": float(np.mean(per_seed)), "sd_over_seeds": float(np.std(per_seed, ddof=1)),
            "per_seed": list(per_seed)}


def test_heldout_json_gives_the_mean_over_seeds_of_the_compared_configuration(compare_cv, tmp_path):
    res = {"models": {
        "additive/default": _entry([9.0, 9.0, 9.0]),             # sm.fit's default: not what the comparison fits
        "additive/svi (as compared)": _entry([0.3, 0.4, 0.8]),
        "production_decay/default": _entry([0.4, 0.4, 0.9]),      # the only one there: used, and said so
    }, "config": {"seeds": [0, 1, 2], "num_steps": 2000, "num_samples": 200}}
    path = tmp_path / "heldout.json"
    path.write_text(json.dumps(res))
    values, detail = compare_cv.read_heldout_json(str(path), ["additive", "production_decay", "latent_programs"])
    assert values["additive"] == pytest.approx(0.5)               # the mean of 3 seeds, not seed 0 (0.3)
    assert detail["additive"]["config"] == "additive/svi (as compared)"
    assert detail["additive"]["per_seed"] == [0.3, 0.4, 0.8] and detail["additive"]["seeds"] == [0, 1, 2]
    assert values["production_decay"] == pytest.approx(1.7 / 3)
    assert detail["production_decay"]["config"] == "production_decay/default"
    assert values["latent_programs"] is None and detail["latent_programs"]["config"] is None


def test_the_compared_configuration_is_registered_once_as_fit_svi_default(compare_cv):
    from heldout_models import MODELS

    before = dict(MODELS)
    try:
        cfg = compare_cv.as_compared("latent_programs")
        assert cfg == "latent_programs/svi (as compared)" and cfg in MODELS
        assert "sm.fit_svi (its default guide)" in MODELS[cfg].description
        assert compare_cv.as_compared("latent_programs") == cfg  # a second call does not register it again
    finally:  # leave the registry as other tests find it
        MODELS.clear()
        MODELS.update(before)


def test_held_out_separation_ranks_the_held_out_conditions_by_the_comparisons_rule(compare_cv):
    """Known answer: B worse than A on every held-out condition by about the same amount is separated; the
    negative control, B worse on one condition only (a mean 40% higher, carried by that condition), is a tie."""
    a = [[0.30, 0.35, 0.40, 0.32, 0.38]] * 3                       # 3 seeds, 5 conditions
    steady = [[0.40, 0.46, 0.49, 0.43, 0.47]] * 3
    one_off = [[1.00, 0.35, 0.40, 0.32, 0.38]] * 3
    sep = compare_cv.held_out_separation({"A": a, "B": steady}, higher_is_better=False)
    assert sep["rank"] == {"A": 1, "B": 2} and sep["n_conditions"] == 5
    assert sep["below"]["B"][0]["model"] == "A" and sep["below"]["B"][0]["difference"] > 0
    tie = compare_cv.held_out_separation({"A": a, "B": one_off}, higher_is_better=False)
    assert tie["rank"] == {"A": 1, "B": 1} and tie["tied_with"]["B"] == ["A"]
    assert compare_cv.held_out_separation({"A": a, "B": None}, higher_is_better=False) is None


def test_agreement_reads_a_tie_beyond_10pct_against_the_held_outs_own_separation(compare_cv):
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"model": ["A", "B"], "rank": [1, 1], "elpd_cv": [1.0, 0.9]})
    a = [[0.30, 0.35, 0.40, 0.32, 0.38]] * 3
    held = {"A": float(np.mean(a)), "B": None}
    for b, separated in (([[0.40, 0.46, 0.49, 0.43, 0.47]] * 3, True), ([[1.00, 0.35, 0.40, 0.32, 0.38]] * 3, False)):
        held["B"] = float(np.mean(b))
        out = compare_cv.agreement(table, held, higher_is_better=False, held_per_condition={"A": a, "B": b})
        assert out["first_within_10pct"] is False                  # B is > 10% above A's held out either way
        assert out["first_beyond_10pct_separated_by_held_out"] == (["B"] if separated else [])
        assert out["first_within_10pct_or_held_out_tie"] is (not separated)
