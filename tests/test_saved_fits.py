"""Saved fits: damaged or edited files are errors naming the file; saving is atomic.

Uses a fit record with made-up draws (nothing is fitted): saving and loading do not care how
the draws were obtained, and the checks stay fast.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import semimech as sm
from semimech.errors import SavedFitError
from semimech.infer import _arviz
from semimech.models import additive


def _fit(seed=0):
    rng = np.random.default_rng(seed)
    d = sm.Design(y=rng.normal(size=(6, 3)), obs_names=tuple(f"c{i}" for i in range(6)), genes=("g0", "g1", "g2"),
                  perturbations=("control", "A"), perturbation_index=np.array([0, 0, 0, 1, 1, 1], np.int32),
                  targets=("A",), target_matrix=np.array([[0.0], [1.0]]), control="control", batches=None,
                  batch_index=None, size_factors=np.ones(6), is_counts=False, n_cells=np.ones(6), target_sep="+")
    samples = {"baseline": rng.normal(size=(1, 5, 3)).astype(np.float32),
               "effect": rng.normal(size=(1, 5, 1, 3)).astype(np.float32)}
    dims = {"baseline": ("genes",), "effect": ("targets", "genes")}
    idata = _arviz.to_datatree(samples, dims, d.coords)  # given: no log-likelihood is computed for made-up draws
    return sm.Fit(spec=additive.SPEC, design=d, samples=samples, dims=dims, method="svi",
                  options={"likelihood": "normal"}, losses=np.linspace(3.0, 1.0, 10), idata=idata)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "fit"
    _fit().save(path)
    return path


def test_a_saved_fit_loads_back(saved):
    back = sm.load(saved)
    np.testing.assert_array_equal(back.samples["effect"], _fit().samples["effect"])
    assert back.design.genes == ("g0", "g1", "g2")


@pytest.mark.parametrize("name", ["posterior.nc", "design.npz", "meta.json", "options.npz"])
def test_a_truncated_file_is_named(saved, name):
    f = saved / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(SavedFitError, match=f"this saved fit is damaged: .*{name}"):
        sm.load(saved)


def test_swapped_gene_names_in_meta_are_an_error(saved):
    f = saved / "meta.json"
    meta = json.loads(f.read_text())
    meta["design"]["genes"] = ["g1", "g0", "g2"]  # a hand edit that would silently relabel predictions
    f.write_text(json.dumps(meta, indent=1))
    with pytest.raises(SavedFitError, match="damaged: .*meta.json .*checksum"):
        sm.load(saved)
    # negative control: rewriting the unchanged content (other formatting) still loads
    meta["design"]["genes"] = ["g0", "g1", "g2"]
    f.write_text(json.dumps(meta))
    assert sm.load(saved).design.genes == ("g0", "g1", "g2")


def test_a_replaced_data_file_is_an_error(saved, tmp_path):
    other = tmp_path / "other"
    _fit(seed=1).save(other)
    os.replace(other / "posterior.nc", saved / "posterior.nc")
    with pytest.raises(SavedFitError, match="posterior.nc .*checksum mismatch"):
        sm.load(saved)


def test_an_interrupted_save_leaves_the_previous_fit(saved, monkeypatch):
    before = sm.load(saved).samples["effect"].copy()
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)  # after posterior.nc is written
    with pytest.raises(KeyboardInterrupt):
        _fit(seed=2).save(saved)
    monkeypatch.undo()
    assert calls
    np.testing.assert_array_equal(sm.load(saved).samples["effect"], before)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["fit"]  # no half-written folder left


def test_saving_over_a_fit_replaces_it_and_refuses_other_folders(saved, tmp_path):
    _fit(seed=3).save(saved)
    np.testing.assert_array_equal(sm.load(saved).samples["effect"], _fit(seed=3).samples["effect"])
    assert sorted(p.name for p in saved.parent.iterdir()) == ["fit"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SavedFitError, match="not a saved fit"):
        _fit().save(mine)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    with pytest.raises(SavedFitError, match="it is a file"):
        _fit().save(mine / "notes.txt")


def test_a_fit_saved_before_checksums_still_loads(saved):
    f = saved / "meta.json"
    meta = json.loads(f.read_text())
    meta["format"] = 1
    del meta["checksums"]
    f.write_text(json.dumps(meta))
    assert sm.load(saved).design.genes == ("g0", "g1", "g2")
