"""Fit.save / load keep model options that are arrays (a prior network, a direct mask) or tables, exactly."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax

import numpy as np
import pandas as pd
import pytest
from numpyro.infer import Predictive

import semimech as sm
from semimech.errors import InferenceError
from semimech.infer._sites import site_dims
from semimech.models import _network as net
from semimech.models import linear_steady_state

GENES = ["g0", "g1", "g2", "g3"]
EDGES = pd.DataFrame({"source": ["g0", "g1", "g2"], "target": ["g1", "g2", "g3"], "sign": [1.0, -1.0, np.nan]})


@pytest.fixture(scope="module")
def fit():
    """A Fit holding prior draws of the linear model with array options (no optimisation needed:
    the round trip does not depend on how the draws were obtained)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "g0", "g1", "drug"], 6)
    frame = pd.DataFrame(rng.normal(2.0, 0.3, (len(labels), len(GENES))), columns=GENES)
    frame["perturbation"] = labels
    d = sm.Design.from_frame(frame, readouts=GENES, perturbation_key="perturbation", control="control").pseudobulk()
    opts = {"likelihood": "normal", "network": net.network_matrix(EDGES, genes=d.genes), "network_mode": "mask",
            "direct_mask": net.target_gene_mask(d, {"drug": ["g2", "g3"]})}
    model = functools.partial(linear_steady_state.model, **opts)
    data = d.model_data()
    draws = Predictive(model, num_samples=20)(jax.random.PRNGKey(0), data)
    dims = site_dims(model, data)
    samples = {k: np.asarray(v)[None] for k, v in draws.items() if k in dims}
    return sm.Fit(spec=linear_steady_state.SPEC, design=d, samples=samples, dims=dims,
                  method="svi", options=opts)


def test_round_trip_with_array_options_predicts_identically(fit, tmp_path):
    fit.save(tmp_path / "fit")
    back = sm.load(tmp_path / "fit")
    for k in ("network", "direct_mask"):
        assert isinstance(back.options[k], np.ndarray)
        np.testing.assert_array_equal(back.options[k], fit.options[k])  # NaN (unknown sign) kept
        assert back.options[k].dtype == np.asarray(fit.options[k]).dtype
    assert back.options["network_mode"] == "mask" and back.options["likelihood"] == fit.options["likelihood"]
    labels = ["g0", "g0+drug", "g2", "control"]  # a new combination and an unseen gene target
    a = sm.predict(fit, labels, rng_key=3).draws["mean"]
    b = sm.predict(back, labels, rng_key=3).draws["mean"]
    np.testing.assert_array_equal(a, b)
    # negative control: the same prediction from a fit whose mask was dropped differs
    other = dataclasses.replace(back, options={k: v for k, v in back.options.items() if k != "direct_mask"})
    assert not np.array_equal(sm.predict(other, labels, rng_key=3).draws["mean"], a)


def test_round_trip_keeps_tables_and_tuples(fit, tmp_path):
    with_table = dataclasses.replace(fit, options={**fit.options, "edges": EDGES, "tag": ("a", 1), "n": np.int64(3)})
    with_table.save(tmp_path / "fit")
    back = sm.load(tmp_path / "fit")
    pd.testing.assert_frame_equal(back.options["edges"], EDGES)
    assert back.options["tag"] == ("a", 1) and back.options["n"] == 3
    assert json.loads((tmp_path / "fit" / "meta.json").read_text())["options"]["n"] == 3


def test_unsavable_option_is_a_clear_error_and_writes_nothing(fit, tmp_path):
    bad = dataclasses.replace(fit, options={**fit.options, "callback": object()})
    with pytest.raises(InferenceError, match="'callback'.*cannot be saved"):
        bad.save(tmp_path / "fit")
    assert not (tmp_path / "fit").exists()
