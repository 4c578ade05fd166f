"""Design validation, encodings, derived designs, and that user data is never mutated."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import semimech as sm
from semimech.errors import DesignError


def _snapshot(adata):
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    return X, adata.obs.copy(deep=True), adata.var.copy(deep=True), copy.deepcopy(dict(adata.uns)), list(adata.obsm)


def _same(a, b):
    assert np.array_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    pd.testing.assert_frame_equal(a[2], b[2])
    assert a[3].keys() == b[3].keys() and a[4] == b[4]


def test_encodings_from_real_data(norman_design):
    d = norman_design
    assert d.perturbations[0] == "control" and d.control == "control"
    assert d.n_obs == 3375 and d.n_genes == 500 and not d.is_counts
    # every double's row in target_matrix has two ones, singles one, control none
    rows = {p: d.target_matrix[i].sum() for i, p in enumerate(d.perturbations)}
    assert rows["control"] == 0 and rows["KLF1"] == 1 and rows["KLF1+MAP2K6"] == 2
    assert set(d.coords) == {"cells", "genes", "perturbations", "targets"}  # label designs: no factor coords
    assert d.targets_of("KLF1+MAP2K6") == ("KLF1", "MAP2K6")


def test_counts_design_with_batches(small_counts_adata):
    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control",
                               batch_key="batch")
    assert d.is_counts and d.batches == ("b1", "b2")
    assert np.isclose(d.size_factors.mean(), 1.0)
    assert d.model_data()["n_batches"] == 2
    new = d.with_perturbations(["control", d.perturbations[1]], batch="b2")
    assert new.batches == ("b1", "b2") and new.batch_index.tolist() == [1, 1]
    with pytest.raises(DesignError, match="batch 'b3' is not a batch of this design"):
        d.with_perturbations(["control"], batch="b3")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(perturbation_key="nope", control="control"), "perturbation_key 'nope'"),
        (dict(perturbation_key="perturbation", control="NT"), "control label 'NT' does not occur"),
        (dict(perturbation_key="perturbation", control="control", batch_key="lane"), "batch_key 'lane'"),
        (dict(perturbation_key="perturbation", control="control", layer="counts"), "layer 'counts'"),
        (dict(perturbation_key="perturbation", control="control", genes=["g0", "zz"]), "genes not in"),
    ],
)
def test_bad_annotation_is_named(small_counts_adata, kwargs, match):
    with pytest.raises(DesignError, match=match):
        sm.Design.from_anndata(small_counts_adata, **kwargs)


def test_bad_values_are_named(small_counts_adata):
    a = small_counts_adata.copy()
    a.X = a.X.copy()
    a.X[0, 0] = np.nan
    with pytest.raises(DesignError, match="NaN or infinite"):
        sm.Design.from_anndata(a, perturbation_key="perturbation", control="control")
    b = small_counts_adata.copy()
    b.X = b.X + 0.5
    with pytest.raises(DesignError, match="non-integer"):
        sm.Design.from_anndata(b, perturbation_key="perturbation", control="control", counts=True)
    c = small_counts_adata.copy()
    c.X = c.X.copy()
    c.X[1, 1] = -3
    with pytest.raises(DesignError, match="negative"):
        sm.Design.from_anndata(c, perturbation_key="perturbation", control="control", counts=True)
    with pytest.raises(DesignError, match="empty design"):
        sm.Design.from_anndata(small_counts_adata[:0], perturbation_key="perturbation", control="control")
    d = small_counts_adata.copy()
    d.obs["perturbation"] = d.obs["perturbation"].astype(object)
    d.obs.iloc[3, 0] = None
    with pytest.raises(DesignError, match="missing perturbation label"):
        sm.Design.from_anndata(d, perturbation_key="perturbation", control="control")


def test_negbin_refuses_non_counts(norman_design):
    from semimech.models import additive

    with pytest.raises(DesignError, match="needs non-negative integer counts"):
        sm.fit_svi(additive.SPEC, norman_design, rng_key=0, num_steps=1, likelihood="negbin")


def test_user_anndata_unchanged_by_every_call(norman, norman_fit):
    before = _snapshot(norman)
    d = sm.Design.from_anndata(norman, perturbation_key="perturbation", control="control")
    d.pseudobulk()
    d.select_perturbations(["KLF1"])
    d.with_perturbations(["KLF1+TGFBR2"])
    sm.predict(norman_fit, ["KLF1+TGFBR2"], rng_key=0)
    _same(before, _snapshot(norman))
    # and the design does not share writable memory with the user's matrix
    assert not d.y.data.flags.writeable or d.y.data is not norman.X.data


def test_design_is_frozen(norman_design):
    with pytest.raises(Exception):
        norman_design.control = "x"
    with pytest.raises(ValueError):
        norman_design.perturbation_index[0] = 3


def test_with_perturbations_validates_and_extends(norman_design):
    p = norman_design.with_perturbations(["MAP2K6+KLF1", "control"])
    assert p.y is None and p.targets == norman_design.targets
    assert p.target_matrix[0].sum() == 2
    # a modelled gene never perturbed is appended as a new target (mechanistic models may predict it)
    gene = next(g for g in norman_design.genes if g not in norman_design.targets)
    q = norman_design.with_perturbations([gene])
    assert q.targets[-1] == gene
    with pytest.raises(DesignError, match="unknown target 'NOTAGENE'"):
        norman_design.with_perturbations(["KLF1+NOTAGENE"])


def test_duplicate_target_sets_rejected():
    frame = pd.DataFrame({"p": ["ctrl", "A+B", "B+A"], "g": [1.0, 2.0, 3.0]})
    with pytest.raises(DesignError, match="same set of targets"):
        sm.Design.from_frame(frame, readouts=["g"], perturbation_key="p", control="ctrl")


def test_from_frame_and_subset_keep_encodings():
    frame = pd.DataFrame({"cond": ["c", "c", "A", "B", "A+B"], "x": [1.0, 1.2, 2.0, 0.5, 1.4],
                          "y": [0.0, 0.1, 0.3, 0.2, 0.4]})
    d = sm.Design.from_frame(frame, readouts=["x", "y"], perturbation_key="cond", control="c")
    sub = d.select_perturbations(["A"])
    assert sub.perturbations == d.perturbations and sub.targets == d.targets
    assert sub.observed_perturbations() == ("c", "A")
    assert frame["x"].tolist() == [1.0, 1.2, 2.0, 0.5, 1.4]


def test_subset_takes_a_full_length_mask_or_positions_and_names_anything_else():
    """Known answer: a mask with one entry per row and integer positions (repeats allowed) select those rows.
    Negative controls: a mask of another length (it used to select the first rows silently), positions out of
    range or negative, floats, a 2-D array and an empty selection are clear errors."""
    frame = pd.DataFrame({"cond": ["c", "c", "A", "B", "A+B"], "x": [1.0, 1.2, 2.0, 0.5, 1.4]})
    d = sm.Design.from_frame(frame, readouts=["x"], perturbation_key="cond", control="c")
    mask = np.array([True, False, True, False, True])
    assert d.subset(mask).obs_names == tuple(np.asarray(d.obs_names)[mask])
    np.testing.assert_array_equal(d.subset(mask).dense_y()[:, 0], [1.0, 2.0, 1.4])
    np.testing.assert_array_equal(d.subset([4, 0, 0]).dense_y()[:, 0], [1.4, 1.0, 1.0])
    with pytest.raises(DesignError, match=r"one entry per row \(5\); got shape \(3,\)"):
        d.subset(np.ones(3, bool))
    with pytest.raises(DesignError, match=r"positions must be in 0..4; got \[5\]"):
        d.subset([0, 5])
    with pytest.raises(DesignError, match=r"positions must be in 0..4; got \[-1\]"):
        d.subset([-1])
    for bad in (np.array([0.0, 1.0]), np.zeros((1, 2), int), ["0"]):
        with pytest.raises(DesignError, match="boolean mask .* or a 1-D array of integer positions"):
            d.subset(bad)
    for empty in ([], np.zeros(5, bool)):
        with pytest.raises(DesignError, match="selects no rows"):
            d.subset(empty)


def test_one_readout_or_gene_named_by_a_string_is_that_column_not_its_letters(small_counts_adata):
    """``readouts="x"`` / ``genes="g1"`` mean one column (they used to be read letter by letter: "readout columns not
    in the frame: ['g', '1']"); the negative control: a name that is not a column is still a clear error."""
    frame = pd.DataFrame({"cond": ["c", "c", "A", "B"], "x": [1.0, 1.2, 2.0, 0.5], "y": [0.0, 0.1, 0.3, 0.2]})
    one = sm.Design.from_frame(frame, readouts="x", perturbation_key="cond", control="c")
    assert one.genes == ("x",)
    np.testing.assert_array_equal(one.dense_y(), sm.Design.from_frame(frame, readouts=["x"], perturbation_key="cond",
                                                                       control="c").dense_y())
    a = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control", genes="g1")
    assert a.genes == ("g1",) and a.n_genes == 1
    with pytest.raises(DesignError, match=r"readout columns not in the frame: \['xy'\]"):
        sm.Design.from_frame(frame, readouts="xy", perturbation_key="cond", control="c")
    with pytest.raises(DesignError, match=r"genes not in adata.var_names: \['g99'\]"):
        sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control", genes="g99")


def test_a_time_course_subset_checks_its_mask_too():
    from semimech.timecourse import time_course_design

    y = np.arange(8, dtype=float).reshape(4, 2)
    d = time_course_design(y, time=[0, 1, 0, 1], condition=["control", "control", "A", "A"],
                           covariates={"control": [0.0], "A": [1.0]}, control="control")
    sub = d.subset(np.array([False, True, False, True]))
    np.testing.assert_array_equal(sub.y, y[[1, 3]])
    np.testing.assert_array_equal(sub.time, [1, 1])
    with pytest.raises(DesignError, match=r"one entry per sample \(4\)"):
        d.subset(np.ones(2, bool))
    with pytest.raises(DesignError, match=r"sample positions must be in 0..3"):
        d.subset([4])


def test_batch_without_controls_warns(small_counts_adata):
    a = small_counts_adata.copy()
    a.obs["batch"] = np.where(a.obs["perturbation"] == "control", "b1", a.obs["batch"])
    with pytest.warns(UserWarning, match=r"contain no control cells.*Put controls in every batch"):
        sm.Design.from_anndata(a, perturbation_key="perturbation", control="control", batch_key="batch")


def test_pseudobulk_sums_counts_and_keeps_size(small_counts_adata):
    d = sm.Design.from_anndata(small_counts_adata, perturbation_key="perturbation", control="control",
                               batch_key="batch")
    pb = d.pseudobulk()
    assert pb.n_obs == 8 and pb.n_cells.sum() == 60
    assert np.isclose(pb.dense_y().sum(), d.dense_y().sum())
    assert np.isclose(pb.size_factors.sum(), d.size_factors.sum())


def test_gaussian_pseudobulk_is_exact(norman_design):
    """Cell-level and pseudobulk log densities differ by a constant (sufficient statistics)."""
    import functools

    import jax
    from numpyro.infer.util import log_density

    from semimech.models import additive

    sub = norman_design.select_perturbations(["KLF1", "MAP2K6", "KLF1+MAP2K6"])
    pb = sub.pseudobulk()
    model = functools.partial(additive.model, likelihood="normal", effects="horseshoe")
    G, T, P = sub.n_genes, len(sub.targets), len(sub.perturbations)
    rng = np.random.default_rng(1)
    diffs = []
    with jax.enable_x64(True):
        for _ in range(3):
            params = {"baseline": rng.normal(0, 1, G), "noise_sd": rng.uniform(0.3, 1.0, G),
                      "effect_scale": 0.3, "effect_local": rng.uniform(0.5, 2, (T, G)),
                      "effect_z": rng.normal(size=(T, G)), "interaction_scale": 0.2,
                      "interaction_sd": rng.uniform(0.1, 1, G), "pair_z": rng.normal(size=(1, G)),
                      "pair_local_z": rng.normal(size=(1, G))}
            a, _ = log_density(model, (sub.model_data(),), {"y": np.asarray(sub.dense_y())}, params)
            b, _ = log_density(model, (pb.model_data(),), {"y": np.asarray(pb.dense_y())}, params)
            diffs.append(float(a - b))
    assert np.ptp(diffs) < 1e-6 * abs(diffs[0]) + 1e-6
    # negative control: without the within-group term the difference is not constant
    data = dict(pb.model_data())
    data["y_ss"] = None
    with jax.enable_x64(True):
        c = [float(log_density(model, (sub.model_data(),), {"y": np.asarray(sub.dense_y())}, p)[0]
                   - log_density(model, (data,), {"y": np.asarray(pb.dense_y())}, p)[0])
             for p in [{"noise_sd": np.full(G, s), "baseline": np.zeros(G), "effect_scale": 0.3,
                        "effect_local": np.ones((T, G)), "effect_z": np.zeros((T, G)),
                        "interaction_scale": 0.2, "interaction_sd": np.ones(G), "pair_z": np.zeros((1, G)),
                        "pair_local_z": np.zeros((1, G))}
                       for s in (0.3, 0.9)]]
    assert abs(c[0] - c[1]) > 1.0


@pytest.mark.parametrize("kind", ["csr_float32", "csr_int64", "dense_int64", "dense_float64"])
def test_counts_are_stored_as_int32_without_a_float64_copy(kind):
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, (40, 6)) * (rng.random((40, 6)) < 0.5)
    counts[:, 1] += 1  # no empty row
    counts[0, 0] = 2**24  # a large count, exact in float32 and int32
    labels = np.repeat(["control", "g0", "g1", "g0+g1"], 10)
    dtype = np.float32 if "float32" in kind else np.float64 if "float64" in kind else np.int64
    X = sp.csr_matrix(counts.astype(dtype)) if kind.startswith("csr") else counts.astype(dtype)
    frozen = X.copy()
    adata = ad_from(X, labels)
    d = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    assert d.is_counts and d.y.dtype == np.int32 and sp.issparse(d.y) == kind.startswith("csr")
    np.testing.assert_array_equal(d.dense_y(), counts)  # exact, and dense_y is float64 as documented
    assert d.dense_y().dtype == np.float64 and d.dense_y(np.float32).dtype == np.float32
    if kind.startswith("csr"):  # the user's matrix is not the design's and is unchanged
        assert d.y.data is not X.data and (X != frozen).nnz == 0 and X.dtype == dtype
    else:
        assert not np.shares_memory(d.y, X) and np.array_equal(X, frozen)
    # pseudobulk sums are exact (int64 accumulation of int32 counts would not overflow either)
    pb = d.pseudobulk()
    np.testing.assert_array_equal(pb.y[0], counts[:10].sum(0))
    # negative control: continuous data are not counts and stay float64
    cont = sm.Design.from_anndata(ad_from(np.asarray(counts, float) + 0.5, labels), perturbation_key="perturbation",
                                  control="control")
    assert not cont.is_counts and cont.y.dtype == np.float64


def test_counts_false_keeps_whole_numbers_float64():
    labels = np.repeat(["control", "g0"], 5)
    d = sm.Design.from_anndata(ad_from(np.arange(20, dtype=np.int64).reshape(10, 2), labels),
                               perturbation_key="perturbation", control="control", counts=False)
    assert not d.is_counts and d.y.dtype == np.float64


def ad_from(X, labels):
    import anndata as ad

    n, g = X.shape
    return ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
