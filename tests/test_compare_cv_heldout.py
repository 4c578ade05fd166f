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
