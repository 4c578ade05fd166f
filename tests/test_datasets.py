"""Tests of semimech.datasets: the shipped Norman 2019 copy and the shared-data readers."""

from __future__ import annotations

import importlib.util
import shutil
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from semimech.datasets import (
    NORMAN19_COMBINABLE_DOUBLES,
    SACHS2005_CONDITION_PARTS,
    SACHS2005_PROTEINS,
    SACHS2005_TARGETS,
    DatasetFormatError,
    DatasetNotFoundError,
    norman19_devel,
    read_midas,
    read_papalexi2021,
    read_sachs2005,
    read_sachs2005_graph,
    read_sif,
    shared_data_dir,
)
from semimech.errors import SemimechError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared(shared_data) -> Path:
    """The shared data folder (tests/conftest.py: skips when it is unreachable)."""
    return shared_data


@pytest.fixture(scope="module")
def norman() -> ad.AnnData:
    return norman19_devel()


# ---------------------------------------------------------------- norman19_devel


def _labels(adata: ad.AnnData) -> tuple[list[str], list[str], list[str]]:
    labels = sorted(adata.obs["perturbation"].astype(str).unique())
    control = [x for x in labels if x == "control"]
    singles = [x for x in labels if x != "control" and "+" not in x]
    doubles = [x for x in labels if "+" in x]
    return control, singles, doubles


def test_norman_shape_and_annotation(norman):
    assert norman.shape == (3375, 500)
    assert norman.obs_names.is_unique and norman.var_names.is_unique
    assert list(norman.obs.columns) == [
        "perturbation", "condition", "ncounts", "ngenes", "cell_type", "perturbation_type", "dose"
    ]  # fmt: skip
    assert (norman.obs["perturbation"].astype(str) == norman.obs["condition"].astype(str)).all()
    assert set(norman.obs["cell_type"]) == {"k562"}
    assert set(norman.obs["perturbation_type"]) == {"CRISPRa"}
    assert len(norman.uns) == 0 and len(norman.obsm) == 0 and len(norman.layers) == 0


def test_norman_perturbation_groups(norman):
    control, singles, doubles = _labels(norman)
    # the file has control + 18 singles + 15 doubles (upstream notes say 19 + 14: a miscount)
    assert control == ["control"]
    assert len(singles) == 18
    assert len(doubles) == 15
    counts = norman.obs["perturbation"].astype(str).value_counts()
    assert counts["control"] == 100
    assert counts["PLK4"] == 95 and counts["FOXL2+HOXB9"] == 80
    assert counts.drop(["PLK4", "FOXL2+HOXB9"]).eq(100).all()
    dose = norman.obs["dose"].astype(str)
    is_double = norman.obs["perturbation"].astype(str).str.contains("+", regex=False)
    assert (dose[is_double] == "1+1").all() and (dose[~is_double] == "1").all()


def test_norman_combinable_doubles_are_exactly_those_with_both_singles(norman):
    _, singles, doubles = _labels(norman)
    combinable = tuple(d for d in doubles if all(p in singles for p in d.split("+")))
    assert combinable == NORMAN19_COMBINABLE_DOUBLES
    assert len(NORMAN19_COMBINABLE_DOUBLES) == 5


def test_norman_matches_reference_numbers_of_shared_readme(norman):
    # ../shared/data/README.md, measured independently: held-out doubles, mean L2 over
    # 500 genes of "no change" 1.374 and of "additive of single means" 0.446
    labels = norman.obs["perturbation"].astype(str).to_numpy()

    def mean(label):
        return np.asarray(norman.X[labels == label].mean(axis=0)).ravel()

    ctrl = mean("control")
    no_change, additive = [], []
    for double in NORMAN19_COMBINABLE_DOUBLES:
        a, b = double.split("+")
        no_change.append(np.linalg.norm(mean(double) - ctrl))
        additive.append(np.linalg.norm(mean(double) - (mean(a) + mean(b) - ctrl)))
    assert np.mean(no_change) == pytest.approx(1.374, abs=1e-3)
    assert np.mean(additive) == pytest.approx(0.446, abs=1e-3)


def test_norman_x_is_log_normalised_not_counts(norman):
    X = norman.X
    assert X.format == "csr" and X.dtype == np.float64 and X.has_sorted_indices
    assert np.all(np.isfinite(X.data)) and X.data.min() > 0
    assert np.mean(X.data != np.round(X.data)) > 0.99  # not integers
    assert X.data.max() < 10  # log scale


def test_norman_fresh_object_each_call():
    first = norman19_devel()
    before = first.X[:5].toarray()
    first.X.data[:] = -1.0
    first.obs["perturbation"] = "changed"
    first.obs["extra"] = 1
    first.uns["mine"] = True
    second = norman19_devel()
    assert second is not first
    np.testing.assert_array_equal(second.X[:5].toarray(), before)
    assert "extra" not in second.obs and "mine" not in second.uns
    assert second.obs["perturbation"].astype(str).eq("control").sum() == 100


def test_norman_x_equals_source_rows(norman, shared):
    src = ad.read_h5ad(shared / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad")
    src = src[src.obs["dataset"] == "norman19"]
    assert list(src.obs_names) == list(norman.obs_names)
    assert list(src.var_names) == list(norman.var_names)
    assert (src.X != norman.X).nnz == 0  # bit-exact values
    for col in norman.obs.columns:
        np.testing.assert_array_equal(
            src.obs[col].astype(str).to_numpy(), norman.obs[col].astype(str).to_numpy()
        )


def _load_script(name="make_norman19_devel"):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_datasets_reproduces_shipped_file(shared, tmp_path, capsys):
    script = _load_script()
    source = shared / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
    assert script.main(["--source", str(source), "--out-dir", str(tmp_path)]) == 0
    remade = ad.read_h5ad(tmp_path / "norman19_devel.h5ad")
    assert script.content_digest(remade) == script.content_digest(norman19_devel())
    assert (tmp_path / "LICENSE.perturbench.txt").read_text().startswith("BSD 3-Clause License")
    assert script.main(["--source", str(tmp_path / "absent.h5ad"), "--out-dir", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err


def test_make_hepg2_subset_reproduces_shipped_files(shared, tmp_path):
    script = _load_script("make_hepg2_subset")
    out = tmp_path / "new_folder"  # the script makes its output folder
    assert script.main(["--source", str(shared / "cellnopt_liver_phospho"), "--out-dir", str(out)]) == 0
    folder = resources.files("semimech.datasets")
    for name in ("hepg2_cancerres2011.csv", "hepg2_cancerres2011_pkn.sif", "LICENSE.cellnopt.txt"):
        assert (out / name).read_bytes() == folder.joinpath(name).read_bytes(), name


def test_shipped_files_are_small_and_licensed():
    folder = resources.files("semimech.datasets")
    assert len(folder.joinpath("norman19_devel.h5ad").read_bytes()) < 2_000_000
    license_text = folder.joinpath("LICENSE.perturbench.txt").read_text()
    assert "Copyright (c) 2024, Altos Labs" in license_text
    provenance = folder.joinpath("NORMAN19_DEVEL.md").read_text()
    assert "d357dfae3b50968e800e9f5f273ff145080ae67c" in provenance
    assert "Norman" in provenance and "PerturBench" in provenance
    assert "Altos Labs" in (norman19_devel.__doc__ or "")


# ---------------------------------------------------------------- shared_data_dir


def test_shared_data_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("SEMIMECH_NO_SHARED_DATA", raising=False)
    monkeypatch.setenv("SEMIMECH_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()
    monkeypatch.setenv("SEMIMECH_SHARED_DATA", str(tmp_path / "absent"))
    with pytest.raises(DatasetNotFoundError, match="SEMIMECH_SHARED_DATA"):
        shared_data_dir()


def test_shared_data_dir_absent_everywhere_says_where_the_data_come_from(tmp_path, monkeypatch):
    from semimech.datasets import SOURCES, _paths

    monkeypatch.delenv("SEMIMECH_SHARED_DATA", raising=False)
    monkeypatch.delenv("SEMIMECH_NO_SHARED_DATA", raising=False)
    monkeypatch.setattr(_paths, "_candidates", lambda: [("nowhere", tmp_path / "absent")])
    with pytest.raises(DatasetNotFoundError, match="set SEMIMECH_SHARED_DATA to that folder") as info:
        shared_data_dir()
    message = str(info.value)
    assert "third-party datasets that semimech does not ship" in message
    for folder in SOURCES:  # each dataset's origin is named
        assert f"{folder}/: " in message
    assert "Sachs et al., Science 308:523 (2005)" in message and "PerturBench" in message


def test_no_shared_data_switch_hides_a_valid_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMIMECH_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("SEMIMECH_NO_SHARED_DATA", "1")
    with pytest.raises(DatasetNotFoundError, match="SEMIMECH_NO_SHARED_DATA='1'"):
        shared_data_dir()
    with pytest.raises(DatasetNotFoundError, match="switched off"):
        read_sachs2005()  # the readers' default path goes through the same check
    monkeypatch.setenv("SEMIMECH_NO_SHARED_DATA", "0")  # "0" means off, like unset
    assert shared_data_dir() == tmp_path.resolve()


def test_candidates_never_point_inside_an_installed_package(tmp_path, monkeypatch):
    from semimech.datasets import _paths

    monkeypatch.delenv("SEMIMECH_SHARED_DATA", raising=False)
    # an installed copy: .../lib/python3.11/site-packages/semimech/datasets/_paths.py
    fake = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "semimech" / "datasets" / "_paths.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(_paths, "__file__", str(fake))
    labels = [(label, str(path)) for label, path in _paths._candidates()]
    assert len(labels) == 1 and "working directory" in labels[0][0], labels
    # a source checkout (pyproject.toml beside the package): its sibling ../shared/data is tried too
    checkout = tmp_path / "repo"
    (checkout / "semimech" / "datasets").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(_paths, "__file__", str(checkout / "semimech" / "datasets" / "_paths.py"))
    paths = [path for _, path in _paths._candidates()]
    assert paths[-1] == tmp_path / "shared" / "data"


@pytest.mark.parametrize(
    "reader", [read_sachs2005, read_sachs2005_graph, read_papalexi2021, read_midas, read_sif]
)
def test_missing_path_errors(reader, tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        reader(tmp_path / "absent.file")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, SemimechError)
    assert "absent.file" in str(info.value) and "Pass" in str(info.value)


def test_folder_without_the_file_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="sachs2005_labeled.csv"):
        read_sachs2005(tmp_path)


# ---------------------------------------------------------------- Sachs 2005


def test_sachs2005_sizes_and_values(shared):
    adata = read_sachs2005()
    assert adata.shape == (7466, 11)
    assert tuple(adata.var_names) == SACHS2005_PROTEINS
    counts = adata.obs["condition"].value_counts(sort=False)
    assert counts.to_dict() == {
        "cd3_cd28": 853, "cd3_cd28+icam2": 902, "cd3_cd28+aktinhib": 911, "cd3_cd28+g0076": 723,
        "cd3_cd28+psitect": 810, "cd3_cd28+u0126": 799, "cd3_cd28+ly": 848, "pma": 913,
        "b2camp": 707,
    }  # fmt: skip
    raw = pd.read_csv(shared / "sachs2005" / "sachs.2005.continuous.txt", sep="\t")
    np.testing.assert_array_equal(adata.X, raw.to_numpy(float))


def test_sachs2005_from_verbatim_cmu_files_matches_labeled(shared, tmp_path):
    for name in ("sachs.2005.continuous.txt",
                 "sachs.2005.continuous.discrete.experimental.mixed.maximum.2.txt"):  # fmt: skip
        shutil.copy(shared / "sachs2005" / name, tmp_path / name)
    from_cmu = read_sachs2005(tmp_path)
    labeled = read_sachs2005(shared / "sachs2005" / "sachs2005_labeled.csv")
    np.testing.assert_array_equal(from_cmu.X, labeled.X)
    assert list(from_cmu.obs["condition"]) == list(labeled.obs["condition"])


def test_sachs2005_targets_refer_to_data(shared):
    adata = read_sachs2005()
    parts = {p for c in adata.obs["condition"].cat.categories for p in c.split("+")}
    assert parts == set(SACHS2005_CONDITION_PARTS)
    assert set(SACHS2005_TARGETS) <= parts and "cd3_cd28" not in SACHS2005_TARGETS
    assert all(t.protein in SACHS2005_PROTEINS and t.sign in (-1, 1) for t in SACHS2005_TARGETS.values())
    assert SACHS2005_TARGETS["u0126"] == ("mek", -1, SACHS2005_TARGETS["u0126"].reagent)
    assert SACHS2005_TARGETS["pma"].sign == 1
    with pytest.raises(TypeError):
        SACHS2005_TARGETS["new"] = SACHS2005_TARGETS["pma"]  # read-only


def test_sachs2005_graph(shared):
    edges = read_sachs2005_graph()
    assert list(edges.columns) == ["source", "target"] and len(edges) == 20
    assert set(edges["source"]) | set(edges["target"]) <= set(SACHS2005_PROTEINS)
    assert ("raf", "mek") in set(map(tuple, edges.to_numpy()))
    assert not edges.duplicated().any()


def test_sachs2005_graph_rejects_undirected(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text("Graph Nodes:\na;b\n\nGraph Edges:\n1. a --- b\n")
    with pytest.raises(DatasetFormatError, match="not directed"):
        read_sachs2005_graph(f)


# ---------------------------------------------------------------- CellNOpt MIDAS / SIF


def _wide_values(file: Path) -> np.ndarray:
    raw = pd.read_csv(file, skipinitialspace=True, na_values=["NaN"])
    return raw.filter(like="DV:").to_numpy(float)


def test_midas_hepg2_cancerres2011(shared):
    file = shared / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv"
    tidy = read_midas(file)
    assert tidy["row"].nunique() == 480 and tidy["readout"].nunique() == 18
    assert len(tidy) == 480 * 18
    per_row = tidy.drop_duplicates("row")
    assert per_row["cell_line"].value_counts().to_dict() == dict.fromkeys(
        ["HepG2", "PriHu", "Hep3B", "Huh7", "Focus"], 96
    )
    t30 = per_row[per_row["time"] == 30]
    assert t30.groupby("cell_line").size().eq(80).all()
    assert t30["stimuli"].nunique() == 10 and t30["inhibitors"].nunique() == 8
    assert "IKKi+MEK12i+PI3Ki" in set(t30["inhibitors"]) and "none" in set(t30["inhibitors"])
    assert per_row.loc[per_row["time"] == 0, "stimuli"].eq("none").all()
    assert per_row["sample_id"].iloc[0] == "BOOLY_2HepG2_DME_NOINH_c01rA"
    first = tidy[(tidy["row"] == 0) & (tidy["readout"] == "AKT (75)")]
    assert first["value"].item() == 1092
    wide = tidy.pivot(index="row", columns="readout", values="value")
    readouts = [c[3:] for c in pd.read_csv(file, nrows=0).columns if c.startswith("DV:")]
    np.testing.assert_array_equal(wide[readouts].to_numpy(), _wide_values(file))


def test_midas_liver_dream_missing_values(shared):
    file = shared / "cellnopt_liver_phospho" / "LiverDREAM" / "MD-LiverDREAM.csv"
    full = read_midas(file, keep_missing=True)
    assert len(full) == 50 * 7 and full["value"].isna().sum() == 20
    tidy = read_midas(file)
    assert len(tidy) == 330 and tidy["value"].notna().all()
    assert set(tidy["cell_line"]) == {"HepG2"}
    assert set(tidy["inhibitors"]) == {"none", "ikki", "mek12i", "pi3ki", "p38i"}
    assert set(tidy["stimuli"]) == {"none", "igf1", "il1a", "tgfa", "tnfa"}
    wide = full.pivot(index="row", columns="readout", values="value")
    readouts = [c[3:] for c in pd.read_csv(file, nrows=0).columns if c.startswith("DV:")]
    np.testing.assert_array_equal(wide[readouts].to_numpy(), _wide_values(file))


def test_midas_egfr_exp1(shared):
    tidy = read_midas(shared / "cellnopt_liver_phospho" / "EGFR-ErbB_PCB2009" / "data" / "RawData-Exp1.csv")
    assert tidy["row"].nunique() == 84 and tidy["readout"].nunique() == 11
    assert set(tidy["cell_line"]) == {"HepG2", "PriHu"}
    assert set(tidy["stimuli"]) == {"none", "TGFa"}
    assert set(tidy["time"]) == {0.0, 30.0, 180.0}
    assert tidy["sample_id"].isna().all()


def test_midas_conventions_on_a_small_file(tmp_path):
    f = tmp_path / "md.csv"
    f.write_text(
        "TR:A:CellLine,TR:EGF,TR:EGF/TNFa:Stimuli,TR:NOINHIB,TR:Rafi,DA:x,DA:y,DV:x,DV:y\n"
        "1,,,1,,0,0,0.5,NaN\n"
        "1,1,,,1,10,10,0.25,1\n"
        ",,1,,1,10,10, 2 ,3\n"
    )
    tidy = read_midas(f)
    assert list(tidy["stimuli"]) == ["none", "EGF", "EGF", "EGF+TNFa", "EGF+TNFa"]
    assert list(tidy["inhibitors"]) == ["none", "Rafi", "Rafi", "Rafi", "Rafi"]
    assert tidy["cell_line"].isna().tolist() == [False, False, False, True, True]
    assert list(tidy["value"]) == [0.5, 0.25, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("TR:A:CellLine,TR:B:CellLine,DA:x,DV:x\n1,1,0,1\n", "several cell lines"),
        ("TR:EGF,DA:x,DV:x\n2,0,1\n", "1 \\(present\\)"),
        ("TR:EGF,DA:x,DV:x\n1,0,high\n", "not a number"),
        ("TR:EGF,DA:y,DV:x\n1,0,1\n", "no 'DA:ALL'"),
        ("TR:EGF,TR:x:Dose,DA:x,DV:x\n1,1,0,1\n", "unknown treatment type"),
        ("TR:EGF\n1\n", "no 'DV:'"),
    ],
)
def test_midas_bad_input(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(DatasetFormatError, match=match):
        read_midas(f)


def test_sif_files(shared):
    for f in sorted((shared / "cellnopt_liver_phospho").glob("*/*.sif")):
        net = read_sif(f)
        lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
        assert len(net) == len(lines), f.name
        assert set(net["sign"]) <= {-1, 1}
    liver = read_sif(shared / "cellnopt_liver_phospho" / "LiverDREAM" / "PKN-LiverDREAM.sif")
    assert ("raf1", 1, "mek12") in set(map(tuple, liver.to_numpy()))


def test_sif_conventions_and_errors(tmp_path):
    f = tmp_path / "n.sif"
    f.write_text("a\t1\tb c\n# comment\n\nb -1 d \n")
    net = read_sif(f)
    assert list(map(tuple, net.to_numpy())) == [("a", 1, "b"), ("a", 1, "c"), ("b", -1, "d")]
    f.write_text("a 2 b\n")
    with pytest.raises(DatasetFormatError, match="sign"):
        read_sif(f)
    f.write_text("a 1\n")
    with pytest.raises(DatasetFormatError, match="source sign target"):
        read_sif(f)


# ---------------------------------------------------------------- Papalexi 2021


def test_papalexi2021(shared):
    adata = read_papalexi2021()
    assert adata.shape == (20729, 299)
    guides = adata.uns["grna_targets"]
    assert isinstance(guides, pd.DataFrame) and guides.shape == (110, 1)
    assert adata.obsm["grna_counts"].shape == (20729, 110)
    assert guides["target"].nunique() == 27 and "non-targeting" in set(guides["target"])
    assert "grna_ids" not in adata.uns and "grna_target" not in adata.uns
    data = adata.X.data
    assert np.all(data == np.round(data)) and data.min() >= 0  # counts
    # the per-cell argmax guide maps to the per-cell target through the table
    top = adata.obs["grna_top"].astype(str)
    assert (guides.loc[top, "target"].to_numpy() == adata.obs["target"].astype(str).to_numpy()).all()
