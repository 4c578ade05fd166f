"""Every registered model passes the same contract: sites, plates, dims, a short fit."""

from __future__ import annotations

import functools

import numpy as np
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


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_short_svi_fit_and_predict(name, counts_design):
    spec = models.get(name)
    fit = sm.fit_svi(spec, counts_design, rng_key=0, num_steps=50, num_samples=20, progress_bar=False)
    assert np.all(np.isfinite(fit.losses))
    p = sm.predict(fit, ["A+B", "control"], rng_key=1)
    assert p.draws["mean"].shape == (20, 2, counts_design.n_genes)
    assert np.all(p.draws["mean"] >= 0)  # counts: means on the data scale are rates


def test_registry_is_explicit():
    assert "additive" in models.REGISTRY
    with pytest.raises(KeyError, match="registered"):
        models.get("nope")
