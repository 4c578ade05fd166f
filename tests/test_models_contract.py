"""Every registered model passes the same contract: sites, plates, dims, a short fit."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech import models
from semimech.infer._sites import plates, site_dims

# network models: "regulators" is the source axis of W[regulator, gene]; "programs" the latent program axis;
# signalling_network: PKN "nodes" and "edges", "contexts" (cell lines), "off_targets" (inhibitor x node pairs),
# "readout_blocks" (inhibitor x readout pairs); effect populations: "effect_programs" / "effect_scores" the
# programs' axis of their loadings / of the targets' scores, "embedding" the side information's dims
PLATE_NAMES = {"cells", "genes", "targets", "perturbations", "batches", "regulators", "programs", "shared_targets",
               "nodes", "edges", "contexts", "off_targets", "readout_blocks", "effect_programs", "effect_scores",
               "embedding",
               # factor designs (treatments): factors, their pairs, level pairs, (context, level/pair) cells
               "factors", "factor_pairs", "target_pairs", "context_targets", "context_pairs"}


@pytest.fixture(scope="module")
def counts_design(small_counts_adata):
    return sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control",
                                  batch_key="batch")


def _model(spec, design):
    like = "negbin" if design.is_counts else "normal"
    return functools.partial(spec.model, **{**spec.default_options, "likelihood": like})


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_sites_and_plates(name, counts_design):
    spec = models.get(name)
    model = _model(spec, counts_design)
    data = counts_design.model_data()
    y = counts_design.dense_y()
    sizes = plates(model, data, y)
    assert set(sizes) <= PLATE_NAMES and sizes["genes"] == counts_design.n_genes
    assert sizes["cells"] == counts_design.n_obs
    dims = site_dims(model, data, y)
    assert spec.mean_site in dims and dims[spec.mean_site] == ("perturbations", "genes")
    for site, ds in dims.items():
        for d in ds:
            assert d in PLATE_NAMES, f"{name}: site {site!r} has an axis {d!r} outside any plate"
        if site.endswith("_z"):
            assert ds[0] in PLATE_NAMES


@pytest.fixture(scope="module")
def factor_counts_design():
    """Counts of a stimulus x inhibitor design in two contexts (cell lines) and two batches: every stimulus set
    (none, EGF, TNFa, both) with no or one inhibitor (MEKi, PI3Ki, p38i), twice per line, 3 genes."""
    rng = np.random.default_rng(2)
    levels = ("EGF", "TNFa", "MEKi", "PI3Ki", "p38i")
    effect = {lv: rng.normal(0, 0.7, 3) for lv in levels}
    base = {c: 1.5 + rng.normal(0, 0.3, 3) for c in ("L1", "L2")}
    rows = []
    for line in ("L1", "L2"):
        for stims in ((), ("EGF",), ("TNFa",), ("EGF", "TNFa")):
            for inhs in ((), ("MEKi",), ("PI3Ki",), ("p38i",)):
                log_mu = base[line] + sum((effect[lv] for lv in stims + inhs), np.zeros(3))
                for batch in ("b1", "b2"):
                    rows.append({"stim": "+".join(stims) or "none", "inh": list(inhs), "line": line, "batch": batch,
                                 **{f"g{g}": rng.poisson(np.exp(log_mu[g])) for g in range(3)}})
    frame = pd.DataFrame(rows, index=[f"r{i}" for i in range(len(rows))])
    return sm.Design.from_frame(frame, readouts=["g0", "g1", "g2"], factors={"stimulus": "stim", "inhibitor": "inh"},
                                context_key="line", batch_key="batch")


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_short_svi_fit_and_predict(name, factor_counts_design):
    """Every model fits counts of a factor design with contexts and batches (negative binomial) and predicts from a
    table: an unseen treatment combination in one line, a seen single in the other. (The plain-label count design
    and its plates: test_sites_and_plates.)"""
    d = factor_counts_design
    assert d.is_counts and d.contexts == ("L1", "L2")
    fit = sm.fit_svi(models.get(name), d, rng_key=0, num_steps=20, num_samples=10, progress_bar=False)
    assert np.all(np.isfinite(fit.losses))
    table = pd.DataFrame({"stim": ["EGF+TNFa", "none"], "inh": [["MEKi", "PI3Ki"], ["p38i"]], "line": ["L2", "L1"]})
    p = sm.predict(fit, table, rng_key=1)
    assert p.perturbations == ("EGF+TNFa+MEKi+PI3Ki@L2", "p38i@L1")
    assert p.draws["mean"].shape == (10, 2, 3)
    assert np.all(np.isfinite(p.draws["mean"])) and np.all(p.draws["mean"] >= 0)  # counts: data-scale means are rates


def test_registry_is_explicit():
    assert "additive" in models.REGISTRY
    with pytest.raises(KeyError, match="registered"):
        models.get("nope")
