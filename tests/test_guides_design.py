"""GuideDesign: reading guide counts and the guide table, validation, no mutation."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from semimech.data.guides import GuideDesign
from semimech.errors import DesignError


def _adata(counts, guides=("Ag1", "Ag2", "Bg1", "NT1"), targets=("A", "A", "B", "non-targeting"), batch=None):
    n = np.asarray(counts).shape[0]
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n)])
    if batch is not None:
        obs["rep"] = batch
    a = ad.AnnData(X=np.ones((n, 2), np.float32), obs=obs, var=pd.DataFrame(index=["g0", "g1"]))
    a.obsm["grna_counts"] = sp.csr_matrix(np.asarray(counts, np.float32))
    a.uns["grna_targets"] = pd.DataFrame({"target": list(targets)}, index=pd.Index(list(guides), name="grna"))
    return a


COUNTS = [[50, 0, 1, 0], [0, 2, 80, 0], [0, 0, 0, 30], [40, 0, 0, 35], [3, 60, 0, 0], [0, 0, 0, 12]]


def test_reads_counts_table_and_batches_without_mutation():
    a = _adata(COUNTS, batch=["r1", "r1", "r1", "r2", "r2", "r2"])
    before = (a.obsm["grna_counts"].toarray().copy(), a.uns["grna_targets"].copy(), a.obs.copy(), dict(a.uns))
    g = GuideDesign.from_anndata(a, guide_table="grna_targets", batch_key="rep")
    assert g.guides == ("Ag1", "Ag2", "Bg1", "NT1")
    assert g.targets == ("A", "B")  # targets need not be genes of the data
    np.testing.assert_array_equal(g.guide_target_index, [0, 0, 1, -1])
    np.testing.assert_array_equal(g.is_control_guide, [False, False, False, True])
    np.testing.assert_array_equal(g.counts.toarray(), COUNTS)
    assert g.batches == ("r1", "r2") and list(g.batch_index) == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(g.is_control_cell(), [False, False, True, False, False, True])
    np.testing.assert_array_equal(g.candidate_targets(2), [[0, 1], [1, 0], [-1, -1], [0, -1], [0, -1], [-1, -1]])
    assert set(g.coords) == {"cells", "guides", "targets", "batches"}
    np.testing.assert_array_equal(a.obsm["grna_counts"].toarray(), before[0])
    pd.testing.assert_frame_equal(a.uns["grna_targets"], before[1])
    pd.testing.assert_frame_equal(a.obs, before[2])
    assert set(a.uns) == set(before[3])
    with pytest.raises(ValueError):
        g.guide_target_index[0] = 3  # frozen arrays
    with pytest.raises(ValueError):
        g.counts.data[0] = 1.0


def test_dataframe_counts_are_matched_by_name_and_table_by_column():
    a = _adata(COUNTS)
    cols = ["NT1", "Bg1", "Ag2", "Ag1"]
    a.obsm["grna_counts"] = pd.DataFrame(np.asarray(COUNTS)[:, [3, 2, 1, 0]], index=a.obs_names, columns=cols)
    table = pd.DataFrame({"id": ["Ag1", "Ag2", "Bg1", "NT1"], "gene": ["A", "A", "B", "NT"]})
    g = GuideDesign.from_anndata(a, guide_table=table, guide_key="id", target_key="gene", non_targeting=("NT",))
    np.testing.assert_array_equal(g.counts.toarray(), COUNTS)


def test_bad_inputs_name_the_problem():
    a = _adata(COUNTS)
    with pytest.raises(DesignError, match="no guide table"):
        GuideDesign.from_anndata(a)
    with pytest.raises(DesignError, match="obsm has no 'sgrna'"):
        GuideDesign.from_anndata(a, guide_counts_key="sgrna", guide_table="grna_targets")
    with pytest.raises(DesignError, match="target_key 'gene'"):
        GuideDesign.from_anndata(a, guide_table="grna_targets", target_key="gene")
    short = a.uns["grna_targets"].iloc[:3]
    with pytest.raises(DesignError, match="3 guides"):
        GuideDesign.from_anndata(a, guide_table=short)
    b = _adata(COUNTS)
    b.obsm["grna_counts"] = pd.DataFrame(np.asarray(COUNTS)[:, :3], index=b.obs_names, columns=["Ag1", "Ag2", "Bg1"])
    with pytest.raises(DesignError, match=r"\['NT1'\] of the guide table are not columns"):
        GuideDesign.from_anndata(b, guide_table="grna_targets")
    for bad, word in ((0.5, "non-integer"), (-1.0, "negative")):
        c = _adata(COUNTS)
        m = np.asarray(COUNTS, float)
        m[0, 0] = bad
        c.obsm["grna_counts"] = sp.csr_matrix(m)
        with pytest.raises(DesignError, match=word):
            GuideDesign.from_anndata(c, guide_table="grna_targets")
    dup = pd.DataFrame({"target": ["A", "A", "B", "non-targeting"]}, index=["Ag1", "Ag1", "Bg1", "NT1"])
    with pytest.raises(DesignError, match="more than once"):
        GuideDesign.from_anndata(a, guide_table=dup)


def test_batch_without_control_cells_warns_with_consequence():
    a = _adata(COUNTS, batch=["r1", "r1", "r2", "r2", "r2", "r2"])  # r1: cells 0, 1 carry targeting guides only
    with pytest.warns(UserWarning, match=r"\['r1'\].*batch-effect variance"):
        GuideDesign.from_anndata(a, guide_table="grna_targets", batch_key="rep")
    b = _adata(COUNTS, targets=("A", "A", "B", "C"))
    with pytest.warns(UserWarning, match="no non-targeting guides"):
        GuideDesign.from_anndata(b, guide_table="grna_targets")


def test_repr_and_copy_are_cheap():
    g = GuideDesign.from_anndata(_adata(COUNTS), guide_table="grna_targets")
    assert "6 cells x 4 guides" in repr(g)
    assert copy.copy(g).guides == g.guides
