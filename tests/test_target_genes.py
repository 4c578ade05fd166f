"""Restricting a non-gene target's direct effect to listed genes (``target_gene_mask`` -> ``direct_mask``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import DesignError
from semimech.infer._sites import site_dims, trace
from semimech.models import _network as net
from semimech.models import latent_programs, linear_steady_state, production_decay

GENES = ["g0", "g1", "g2", "g3", "g4"]
LABELS = ["control", "drugA@c1", "drugA@c2", "drugB@c1", "g0", "drugA@c1+g0", "drugA@c1+drugB@c1"]
ONLY = {"drugA@c1": ["g1", "g2"], "drugA@c2": ["g1", "g2"], "drugB@c1": ["g4"]}


def _design():
    lab = np.repeat(LABELS, 3)
    frame = pd.DataFrame(np.random.default_rng(0).normal(2.0, 0.3, (len(lab), len(GENES))), columns=GENES)
    frame["perturbation"] = lab
    return sm.Design.from_frame(frame, readouts=GENES, perturbation_key="perturbation", control="control")


def _log_scale(model, design, **opts):
    tr = trace(lambda data, y=None: model(data, y=y, **opts), design.model_data(), rng_key=1)
    return np.asarray(tr["log_scale"]["value"]), tr


@pytest.mark.parametrize("model", [linear_steady_state.model, production_decay.model, latent_programs.model])
def test_unlisted_genes_get_exactly_zero_direct_effect(model):
    d = _design()
    mask = net.target_gene_mask(d, ONLY)
    ls, _ = _log_scale(model, d, direct_mask=mask)
    row = {p: ls[d.perturbations.index(p)] for p in LABELS}
    for p in ("drugA@c1", "drugA@c2"):
        assert np.all(row[p][[0, 3, 4]] == 0.0) and np.all(row[p][[1, 2]] != 0.0)
    assert np.all(row["drugB@c1"][:4] == 0.0) and row["drugB@c1"][4] != 0.0
    # composition: a gene target adds only its own edit; two drugs only their listed genes
    assert np.all(row["drugA@c1+g0"][[3, 4]] == 0.0) and row["drugA@c1+g0"][0] != 0.0
    assert row["drugA@c1+drugB@c1"][[0, 3]].tolist() == [0.0, 0.0]
    # negative control: without the mask the same draw moves every gene
    plain, _ = _log_scale(model, d)
    assert np.all(plain[d.perturbations.index("drugA@c1")] != 0.0)


def test_mask_with_drug_shared_across_contexts():
    d = _design()
    opts = {"direct_mask": net.target_gene_mask(d, ONLY), **net.shared_targets(d, r"(drug\w)@.+")}
    assert opts["shared_gene_index"].tolist() == [-1, -1] and opts["variant_of"].tolist() == [0, 0, 1, -1]
    ls, tr = _log_scale(linear_steady_state.model, d, **opts)
    assert "context_sd" in tr and "guide_sd" not in tr and tr["shared_z"]["value"].shape == (2, len(GENES))
    a1, a2 = ls[d.perturbations.index("drugA@c1")], ls[d.perturbations.index("drugA@c2")]
    assert np.all(a1[[0, 3, 4]] == 0.0) and np.all(a2[[0, 3, 4]] == 0.0)
    # the two contexts share drugA's effect: direct_scale * direct_sd * (shared + context_sd * own z)
    v = {k: np.asarray(tr[k]["value"]) for k in ("direct_scale", "direct_sd", "shared_z", "target_z", "context_sd")}
    t, sz, tz, csd = v["direct_scale"] * v["direct_sd"], v["shared_z"][0], v["target_z"], v["context_sd"]
    np.testing.assert_allclose(a1[[1, 2]], (t * (sz + csd * tz[d.targets.index("drugA@c1")]))[[1, 2]], rtol=1e-5)
    np.testing.assert_allclose(a2[[1, 2]], (t * (sz + csd * tz[d.targets.index("drugA@c2")]))[[1, 2]], rtol=1e-5)


def test_prediction_design_with_a_new_gene_target_pads_the_mask():
    d = _design()
    mask = net.target_gene_mask(d, ONLY)
    pd_ = d.with_perturbations(["g3", "drugB@c1+g3"])  # g3 never perturbed: appended target
    data = {**pd_.model_data(), **{k: v for k, v in d.model_data().items() if k.startswith(("baseline", "noise"))}}
    assert net.direct_mask_array(data, mask).shape == (len(pd_.targets), len(GENES))
    tr = trace(lambda data, y=None: linear_steady_state.model(data, y=y, direct_mask=mask), data, rng_key=0)
    row = np.asarray(tr["log_scale"]["value"])[1]
    assert row[3] != 0.0 and np.all(row[:3] == 0.0) and row[4] != 0.0


def test_bad_target_genes_are_clear_errors():
    d = _design()
    with pytest.raises(DesignError, match="not modelled: \\['AKT'\\]"):
        net.target_gene_mask(d, {"drugA@c1": ["g1", "AKT"]})
    with pytest.raises(DesignError, match="not in the design"):
        net.target_gene_mask(d, {"drugC@c1": ["g1"]})
    with pytest.raises(DesignError, match="is a modelled gene"):
        net.target_gene_mask(d, {"g0": ["g1"]})
    with pytest.raises(DesignError, match="list of genes"):
        net.target_gene_mask(d, {"drugA@c1": "g1"})
    with pytest.raises(DesignError, match="direct_mask has shape"):
        site_dims(lambda data, y=None: linear_steady_state.model(data, y=y, direct_mask=np.ones((4, 3))),
                  d.model_data())
    with pytest.raises(DesignError, match="covers 9 targets"):
        site_dims(lambda data, y=None: linear_steady_state.model(data, y=y, direct_mask=np.ones((9, 5))),
                  d.model_data())


def test_a_mask_is_taken_by_its_targets_and_genes_names():
    """A mask built on one design and fitted on another (its genes in another order; a target it does not know):
    entries are taken by name, or the unknown target is named; a plain array of the same shape is taken as it is
    (the negative control: other genes' entries)."""
    from semimech.infer.fit import resolved_options

    d = _design()
    mask = net.target_gene_mask(d, ONLY)
    lab = np.repeat(LABELS, 3)
    frame = pd.DataFrame(np.random.default_rng(0).normal(2.0, 0.3, (len(lab), len(GENES))), columns=GENES)
    flipped = sm.Design.from_frame(frame.assign(perturbation=lab), readouts=GENES[::-1],
                                   perturbation_key="perturbation", control="control")
    got = resolved_options(linear_steady_state.SPEC, {"direct_mask": mask}, "svi", design=flipped)["direct_mask"]
    np.testing.assert_array_equal(got, net.target_gene_mask(flipped, ONLY))
    plain = resolved_options(linear_steady_state.SPEC, {"direct_mask": np.asarray(mask)}, "svi", design=flipped)
    assert not np.array_equal(plain["direct_mask"], net.target_gene_mask(flipped, ONLY))
    other = sm.Design.from_frame(frame.assign(perturbation=np.char.replace(lab.astype(str), "drugB", "drugZ")),
                                 readouts=GENES, perturbation_key="perturbation", control="control")
    with pytest.raises(DesignError, match=r"direct_mask has no row for 1 of the design's 4 targets: \['drugZ@c1'\]"):
        sm.fit_svi(linear_steady_state.SPEC, other.pseudobulk(), rng_key=0, num_steps=1, direct_mask=mask)
