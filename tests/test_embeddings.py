"""Side information: target embeddings (tables, PCA, networks), bad input, and their use by the model."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import DesignError, PopulationOnlyWarning
from semimech.models import additive, target_embedding
from semimech.models._effects import embedding_rows


def _screen(*, n_targets=14, n_genes=5, cells=30, seed=0, slope=1.0):
    """Gaussian cells (sd 1); target t's effect = m + slope * e_t * w, e_t its 1-D embedding."""
    rng = np.random.default_rng(seed)
    e = np.linspace(-1.5, 1.5, n_targets)
    rng.shuffle(e)
    m = rng.uniform(0.3, 0.6, n_genes)
    w = rng.choice([-1.0, 1.0], n_genes)
    effects = m + slope * e[:, None] * w[None, :] + 0.1 * rng.normal(size=(n_targets, n_genes))
    targets = [f"T{i:02d}" for i in range(n_targets)]
    labels = np.repeat(["control"] + targets, [2 * cells] + [cells] * n_targets)
    mean = np.vstack([np.zeros((2 * cells, n_genes))] + [np.tile(x, (cells, 1)) for x in effects])
    genes = [f"g{j}" for j in range(n_genes)]
    frame = pd.DataFrame(mean + rng.normal(size=mean.shape), columns=genes).assign(label=labels)
    design = sm.Design.from_frame(frame, readouts=genes, perturbation_key="label", control="control")
    table = pd.DataFrame({"dim0": e, "dim1": rng.normal(size=n_targets)}, index=targets)
    return design, table, dict(zip(targets, effects))


@pytest.fixture(scope="module")
def screen():
    return _screen()


# ------------------------------------------------------------------ bad input

def test_a_target_missing_from_the_table_is_named(screen):
    design, table, _ = screen
    with pytest.raises(DesignError, match=r"no row for 1 of 14 targets: \['T03'\].*missing='population'"):
        target_embedding(design, table.drop(index="T03"))
    emb = target_embedding(design, table.drop(index="T03"), missing="population")
    assert np.isnan(emb["embedding"][3]).all() and np.isfinite(np.delete(emb["embedding"], 3, 0)).all()


def test_nan_in_the_table_is_an_error_naming_the_rows(screen):
    design, table, _ = screen
    bad = table.copy()
    bad.loc["T05", "dim1"] = np.nan
    with pytest.raises(DesignError, match=r"NaN or infinite values for \['T05'\]"):
        target_embedding(design, bad)


def test_dimension_mismatch_in_a_mapping_is_an_error():
    design, _, _ = _screen(n_targets=3, n_genes=2, cells=3)
    with pytest.raises(DesignError, match=r"dimension mismatch: 'T00' has 2 dimensions but \['T02'\]"):
        target_embedding(design, {"T00": [1.0, 2.0], "T01": [0.0, 1.0], "T02": [1.0, 2.0, 3.0]})


def test_non_numeric_duplicated_or_unknown_sources_are_errors(screen):
    design, table, _ = screen
    with pytest.raises(DesignError, match="numeric"):
        target_embedding(design, table.assign(dim2="x"))
    with pytest.raises(DesignError, match="more than once"):
        target_embedding(design, pd.concat([table, table.iloc[:1]]))
    with pytest.raises(DesignError, match="source must be"):
        target_embedding(design, "umap")
    with pytest.raises(DesignError, match="missing must be"):
        target_embedding(design, table, missing="zero")
    with pytest.raises(DesignError, match="needs network="):
        target_embedding(design, "network")


def test_model_options_of_the_wrong_shape_are_errors(screen):
    design, table, _ = screen
    emb = target_embedding(design, table)
    data = design.model_data()
    with pytest.raises(DesignError, match="covers 15 targets but the design has 14"):
        embedding_rows(data, np.vstack([emb["embedding"], emb["embedding"][:1]]))
    part = emb["embedding"].copy()
    part[2, 0] = np.nan
    with pytest.raises(DesignError, match=r"rows \[2\] are partly NaN"):
        embedding_rows(data, part)
    pdata = design.with_perturbations(["g1"]).model_data()  # a modelled gene appended as a new target
    with pytest.raises(DesignError, match=r"gene_embedding has shape \(5, 3\)"):
        embedding_rows(pdata, emb["embedding"], np.zeros((5, 3)))
    with pytest.raises(DesignError, match="embedding must be a"):
        sm.fit_svi(additive.SPEC, design.pseudobulk(), rng_key=0, num_steps=1, embedding=np.zeros(14))
    # built on another design (here its first 10 targets): a fit takes one row per target of its own design;
    # fewer rows used to fit silently, the rows landing on whichever targets come first
    with pytest.raises(DesignError, match="embedding has 10 rows but the design fitted has 14 targets"):
        sm.fit_svi(additive.SPEC, design.pseudobulk(), rng_key=0, num_steps=1, embedding=emb["embedding"][:10])
    with pytest.raises(DesignError, match="gene_embedding has 4 rows but the design fitted has 5 genes"):
        sm.fit_svi(additive.SPEC, design.pseudobulk(), rng_key=0, num_steps=1, embedding=emb["embedding"],
                   gene_embedding=emb["gene_embedding"][:4])


def test_embeddings_are_standardised_and_genes_get_rows(screen):
    design, table, _ = screen
    emb = target_embedding(design, pd.concat([table, pd.DataFrame({"dim0": [5.0], "dim1": [0.0]}, index=["g2"])]))
    np.testing.assert_allclose(emb["embedding"].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(emb["embedding"].std(0), 1.0, atol=1e-5)
    assert np.isfinite(emb["gene_embedding"][2]).all() and np.isnan(emb["gene_embedding"][0]).all()


def test_pca_embedding_follows_ahlmann_eltze(norman_design):
    emb = target_embedding(norman_design, "pca", missing="population", standardize=False)
    gene_rows = emb["gene_embedding"]
    assert gene_rows.shape == (norman_design.n_genes, 10) and np.isfinite(gene_rows).all()
    # targets that are readout genes take their gene's row; the others have none
    tgi = norman_design.model_data()["target_gene_index"]
    for i, g in enumerate(tgi):
        if g >= 0:
            np.testing.assert_allclose(emb["embedding"][i], gene_rows[g])
        else:
            assert np.isnan(emb["embedding"][i]).all()
    with pytest.raises(DesignError, match="no row for"):
        target_embedding(norman_design, "pca")


def test_network_embedding_puts_neighbours_together():
    design, _, _ = _screen(n_targets=6, n_genes=2, cells=3)
    # two cliques joined by one edge: T00-T02 and T03-T05
    edges = pd.DataFrame({"source": ["T00", "T00", "T01", "T03", "T03", "T04", "T02"],
                          "target": ["T01", "T02", "T02", "T04", "T05", "T05", "T03"]})
    emb = target_embedding(design, "network", network=edges, n_components=1)["embedding"][:, 0]
    assert np.sign(emb[:3]).tolist() == [np.sign(emb[0])] * 3 and np.sign(emb[3:]).tolist() == [-np.sign(emb[0])] * 3


# ------------------------------------------------------------------ the model uses it

def _held_out_fit(design, opts, held):
    rows = np.isin(np.asarray(design.perturbations)[design.perturbation_index], held)
    train = sm.evaluate.split_rows(design, rows)[0]
    fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=0, num_steps=800, num_samples=200,
                     progress_bar=False, effect_programs=0, **opts)
    return train, fit


def test_an_embedded_unseen_target_is_answered_from_side_information(screen):
    design, table, truth = screen
    held = ["T00", "T01", "T02", "T03"]
    train, fit = _held_out_fit(design, target_embedding(design, table), held)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PopulationOnlyWarning)
        pred = sm.predict(fit, ["control"] + held, rng_key=1)
    assert list(pred.sources.source) == ["data"] + ["side information"] * 4
    draws = pred.draws["mean"][:, 1:] - pred.draws["mean"][:, :1]
    true = np.array([truth[t] for t in held])
    err = np.abs(draws.mean(0) - true).mean()
    # known answer: the embedding explains the effects; the population mean alone cannot
    pop = sm.evaluate.train_mean(train, held).values - sm.evaluate.control_mean(train)
    assert err < 0.5 * np.abs(pop - true).mean()
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    assert np.mean((true >= lo) & (true <= hi)) >= 0.7
    # negative control: shuffled embeddings carry no information, so they cannot do as well
    shuffled = table.copy()
    shuffled.index = np.random.default_rng(5).permutation(table.index)
    _, fit_s = _held_out_fit(design, target_embedding(design, shuffled), held)
    draws_s = sm.predict(fit_s, ["control"] + held, rng_key=1).draws["mean"]
    err_s = np.abs((draws_s[:, 1:] - draws_s[:, :1]).mean(0) - true).mean()
    assert err_s > 2 * err


def test_a_fit_takes_each_target_and_genes_row_by_name_not_by_position(screen):
    """An embedding is built on one design and fitted on another (its genes in another order, some of its
    targets, other targets): rows are taken by name; same-shaped rows of other targets used to fit without a
    word."""
    from semimech.infer.fit import resolved_options

    design, table, _ = screen
    genes = list(design.genes)
    frame = pd.DataFrame(np.asarray(design.dense_y()), columns=genes).assign(
        label=np.asarray(design.perturbations)[np.asarray(design.perturbation_index)])
    rng = np.random.default_rng(1)
    table = pd.concat([table, pd.DataFrame(rng.normal(size=(len(genes), 2)), index=genes, columns=table.columns)])
    emb = target_embedding(design, table)

    def prepared(other, **options):
        return resolved_options(additive.SPEC, options, "svi", design=other)

    # genes in another order: each gene keeps its own row (known answer: the embedding built on that design)
    flipped = sm.Design.from_frame(frame, readouts=genes[::-1], perturbation_key="label", control="control")
    own = target_embedding(flipped, table)
    got = prepared(flipped, **emb)
    np.testing.assert_allclose(got["gene_embedding"], own["gene_embedding"], rtol=1e-6)
    np.testing.assert_allclose(got["embedding"], own["embedding"], rtol=1e-6)
    # negative control: the same rows without their names are taken by position, and are other genes' rows
    plain = prepared(flipped, embedding=np.asarray(emb["embedding"]), gene_embedding=np.asarray(emb["gene_embedding"]))
    assert not np.allclose(plain["gene_embedding"], own["gene_embedding"])
    # ten of its targets: their rows
    some = sm.Design.from_frame(frame[frame.label.isin(["control"] + [f"T{i:02d}" for i in range(3, 13)])],
                                readouts=genes, perturbation_key="label", control="control")
    np.testing.assert_array_equal(prepared(some, **emb)["embedding"], np.asarray(emb["embedding"])[3:13])
    # as many targets, one of them another: named, where the rows used to shift onto it
    other = sm.Design.from_frame(frame.assign(label=frame.label.replace("T13", "T99")), readouts=genes,
                                 perturbation_key="label", control="control")
    with pytest.raises(DesignError, match=r"embedding has no row for 1 of the design's 14 targets: \['T99'\]"):
        sm.fit_svi(additive.SPEC, other.pseudobulk(), rng_key=0, num_steps=1, **emb)
    # the names survive a pickle (a saved fit's options); a slice has none (its rows are no longer the named ones)
    import pickle

    back = pickle.loads(pickle.dumps(emb["embedding"]))
    assert back.row_names == design.targets and emb["embedding"][:10].row_names is None
