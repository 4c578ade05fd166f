"""Treatment-structured (factor) designs: reading, identity of conditions, MIDAS, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import DesignError


def _frame():
    """Stimulus x inhibitor x cell line: two ways of writing levels, aliases, untreated rows."""
    rows = [
        ("none", [], "L1"), ("EGF", [], "L1"), ("none", ["MEKi"], "L1"), ("EGF", ["MEKi", "PI3Ki"], "L1"),
        ("EGF+TNFa", ["PI3Ki"], "L1"), ("TNFa+EGF", ("PI3Ki",), "L1"),  # an alias of the row before
        (None, None, "L2"), ("TNFa", ["MEKi"], "L2"), ("EGF", ["PI3Ki", "MEKi"], "L2"),
    ]
    rng = np.random.default_rng(0)
    return pd.DataFrame({"stim": [r[0] for r in rows], "inh": [r[1] for r in rows], "line": [r[2] for r in rows],
                         "g0": rng.normal(size=len(rows)), "g1": rng.normal(size=len(rows))},
                        index=[f"s{i}" for i in range(len(rows))])


def _design(frame=None, **kw):
    frame = _frame() if frame is None else frame
    return sm.Design.from_frame(frame, readouts=["g0", "g1"], factors={"stimulus": "stim", "inhibitor": "inh"},
                                context_key="line", **kw)


def test_conditions_are_sets_of_levels_in_a_context():
    frame = _frame()
    before = frame.copy(deep=True)
    d = _design(frame)
    pd.testing.assert_frame_equal(frame, before)  # never mutated
    assert d.contexts == ("L1", "L2") and d.factor_names == ("stimulus", "inhibitor")
    assert d.targets == ("EGF", "MEKi", "PI3Ki", "TNFa")
    assert d.target_factors == ("stimulus", "inhibitor", "inhibitor", "stimulus")
    # untreated conditions first, one per context; control is the first
    assert d.perturbations[:2] == ("control@L1", "control@L2") and d.control == "control@L1"
    # aliases (order of stimuli, list vs tuple) are one condition
    assert d.perturbation_index[4] == d.perturbation_index[5]
    assert d.perturbations[d.perturbation_index[4]] == "EGF+TNFa+PI3Ki@L1"
    # same levels in two contexts are two conditions
    assert d.perturbations[d.perturbation_index[3]] == "EGF+MEKi+PI3Ki@L1"
    assert d.perturbations[d.perturbation_index[8]] == "EGF+MEKi+PI3Ki@L2"
    assert len(d.perturbations) == 8
    table = d.condition_table()
    assert table.loc["EGF+TNFa+PI3Ki@L1", "stimulus"] == ("EGF", "TNFa")
    assert table.loc["EGF+TNFa+PI3Ki@L1", "context"] == "L1"
    assert d.targets_of("EGF+TNFa+PI3Ki@L1") == ("EGF", "PI3Ki", "TNFa")


def test_several_columns_per_factor_and_label_column_combined():
    f = _frame()
    f = f.assign(inh1=[x[0] if x else None for x in f["inh"]], inh2=[x[1] if x and len(x) > 1 else "" for x in f["inh"]])
    a = _design(f)
    b = sm.Design.from_frame(f, readouts=["g0", "g1"], factors={"stimulus": "stim", "inhibitor": ["inh1", "inh2"]},
                             context_key="line")
    assert a.perturbations == b.perturbations and np.array_equal(a.perturbation_index, b.perturbation_index)
    assert np.array_equal(a.target_matrix, b.target_matrix)
    # a label column (genetic perturbations) is the factor "perturbation"
    g = f.assign(ko=["control", "KLF1", "control", "KLF1+SET", "control", "control", "control", "SET", "control"])
    c = sm.Design.from_frame(g, readouts=["g0", "g1"], perturbation_key="ko", control="control",
                             factors={"stimulus": "stim", "inhibitor": "inh"}, context_key="line")
    assert c.factor_names == ("perturbation", "stimulus", "inhibitor")
    assert dict(zip(c.targets, c.target_factors))["KLF1"] == "perturbation"
    assert c.perturbations[c.perturbation_index[3]] == "KLF1+SET+EGF+MEKi+PI3Ki@L1"


def test_model_data_contract():
    d = _design()
    md = d.model_data()
    assert md["factor_names"] == ("stimulus", "inhibitor") and md["n_factors"] == 2
    np.testing.assert_array_equal(md["target_factor"], [0, 1, 1, 0])
    assert md["n_contexts"] == 2
    np.testing.assert_array_equal(md["context_control"], [0, 1])
    assert md["perturbation_context"].shape == (len(d.perturbations),)
    assert md["n_factor_pairs"] == 3
    pairs = {frozenset((d.targets[i], d.targets[j])) for i, j in md["pair_index"]}
    assert frozenset(("EGF", "TNFa")) in pairs and frozenset(("MEKi", "PI3Ki")) in pairs
    assert frozenset(("EGF", "MEKi")) in pairs and frozenset(("TNFa", "MEKi")) in pairs
    # pair factor-pair codes: stimulus|stimulus = 0, stimulus|inhibitor = 1, inhibitor|inhibitor = 2
    code = {frozenset((d.targets[i], d.targets[j])): c for (i, j), c in zip(md["pair_index"], md["pair_factor_pair"])}
    assert code[frozenset(("EGF", "TNFa"))] == 0 and code[frozenset(("EGF", "MEKi"))] == 1
    assert code[frozenset(("MEKi", "PI3Ki"))] == 2
    assert d.coords["factor_pairs"] == ("stimulus|stimulus", "stimulus|inhibitor", "inhibitor|inhibitor")
    # label designs keep their encodings and get the defaults
    lab = sm.Design.from_frame(_frame().assign(p=["control", "A", "B", "A+B"] * 2 + ["control"]), readouts=["g0"],
                               perturbation_key="p", control="control")
    m = lab.model_data()
    assert lab.target_factors is None and lab.contexts is None and m["n_contexts"] == 1
    assert m["factor_names"] == ("perturbation",) and list(m["context_control"]) == [0]


def test_prediction_designs_from_tables_labels_and_dicts():
    d = _design()
    table = pd.DataFrame({"stim": ["EGF+TNFa", "TNFa", "none"], "inh": [["MEKi"], None, "PI3Ki"],
                          "line": ["L2", "L1", "L1"]})
    p = d.with_conditions(table)
    assert p.perturbations == ("EGF+TNFa+MEKi@L2", "TNFa@L1", "PI3Ki@L1")  # order of the table
    q = d.with_conditions([{"stimulus": ["TNFa", "EGF"], "inhibitor": "MEKi", "context": "L2"},
                           {"stimulus": "TNFa", "context": "L1"}, {"inhibitor": "PI3Ki", "context": "L1"}])
    assert q.perturbations == p.perturbations and np.array_equal(q.target_matrix, p.target_matrix)
    r = d.with_perturbations(["MEKi+TNFa+EGF@L2"])
    assert r.condition_keys()[0] == p.condition_keys()[0]
    # duplicates in a table are predicted once
    assert d.with_conditions(pd.concat([table, table])).perturbations == p.perturbations


@pytest.mark.parametrize("frame_edit, kwargs, match", [
    # a level of a factor column that is also a perturbation label of the label column
    (lambda f: f.assign(ko=["control"] * 8 + ["MEKi"]), dict(perturbation_key="ko", control="control"),
     "'MEKi'.*also a perturbation label"),
    # two contexts in one row
    (lambda f: f.assign(line=["L1"] * 8 + [["L1", "L2"]]), {}, "row 's8'.*2 contexts"),
    (lambda f: f.assign(line=["L1"] * 7 + [None, "L2"]), {}, "row 's7'.*0 contexts"),
    # two levels of a single-valued factor
    (lambda f: f, dict(single_valued=["inhibitor"]), "row 's3'.*single-valued.*'MEKi', 'PI3Ki'"),
    # a list-valued level that hides a combination
    (lambda f: f.assign(inh=[[]] * 8 + [["MEKi+PI3Ki"]]), {}, "row 's8'.*'MEKi\\+PI3Ki' contains the separator"),
    # the same level in two factors
    (lambda f: f.assign(stim=["none"] * 8 + ["MEKi"]), {}, "level 'MEKi' appears in factor"),
])
def test_bad_factor_input_names_the_row_or_level(frame_edit, kwargs, match):
    f = frame_edit(_frame())
    args = dict(readouts=["g0", "g1"], factors={"stimulus": "stim", "inhibitor": "inh"}, context_key="line")
    with pytest.raises(DesignError, match=match):
        sm.Design.from_frame(f, **{**args, **kwargs})


@pytest.mark.parametrize("table, match", [
    (pd.DataFrame({"stim": ["EGF"], "inh": ["AKTi"], "line": ["L1"]}), "row '0'.*unknown level 'AKTi' of factor 'inhibitor'"),
    (pd.DataFrame({"stim": ["MEKi"], "inh": ["none"], "line": ["L1"]}), "'MEKi' is a 'inhibitor' level in training"),
    (pd.DataFrame({"stim": ["EGF"], "line": ["L1"]}), "no column for factor 'inhibitor'"),
    (pd.DataFrame({"stim": ["EGF"], "inh": ["none"]}), "no context column"),
])
def test_bad_prediction_tables(table, match):
    with pytest.raises(DesignError, match=match):
        _design().with_conditions(table)


def test_an_unseen_context_is_appended_and_needs_a_population_of_contexts():
    d = _design()
    p = d.with_perturbations(["EGF@L9", "control@L2", "MEKi@L9"])
    assert p.contexts == ("L1", "L2", "L9") and p.perturbation_context.tolist() == [2, 1, 2]
    assert p.perturbations == ("EGF@L9", "control@L2", "MEKi@L9")
    t = d.with_conditions(pd.DataFrame({"stim": ["EGF", "none"], "inh": ["none", "MEKi"], "line": ["L8", "L1"]}))
    assert t.contexts == ("L1", "L2", "L8") and t.perturbations == ("EGF@L8", "MEKi@L1")
    one = _design(_frame().query("line == 'L1'"))  # negative control: one training context, no population
    with pytest.raises(DesignError, match="context 'L9' was never seen in training, and the training design has one"):
        one.with_perturbations(["EGF@L9"])


def test_bad_prediction_labels():
    d = _design()
    with pytest.raises(DesignError, match="names no context"):
        d.with_perturbations(["EGF"])
    with pytest.raises(DesignError, match="unknown level 'AKTi'"):
        d.with_perturbations(["EGF+AKTi@L1"])
    with pytest.raises(DesignError, match="neither factors"):
        d.with_conditions([{"stimulus": "EGF", "drug": "x", "context": "L1"}])


def _write_midas(path):
    """A small MIDAS file: 2 cell lines x {none, EGF, EGF+TNFa} x {none, MEKi, MEKi+PI3Ki} at 0 and 30 min."""
    rows = []
    rng = np.random.default_rng(3)
    for line in ("A549", "HepG2"):
        for stim in ((), ("EGF",), ("EGF", "TNFa")):
            for inh in ((), ("MEKi",), ("MEKi", "PI3Ki")):
                for t in (0, 30):
                    r = {"TR:A549:CellLine": int(line == "A549"), "TR:HepG2:CellLine": int(line == "HepG2")}
                    r.update({f"TR:{s}": int(s in stim) for s in ("EGF", "TNFa")})
                    r.update({f"TR:{i}": int(i in inh) for i in ("MEKi", "PI3Ki")})
                    r.update({"DA:ALL": t, "DV:AKT": rng.uniform(100, 900), "DV:ERK": rng.uniform(100, 900)})
                    rows.append(r)
    pd.DataFrame(rows).to_csv(path, index=False)


def _midas_conditions(table):
    return table.drop_duplicates("row").set_index("row")[["cell_line", "stimuli", "inhibitors"]]


def _roundtrip(table, time):
    """read_midas rows -> Design -> back to MIDAS strings, per sample; and the values."""
    from semimech.datasets import read_midas  # noqa: F401  (the reader whose output is checked)

    d = sm.Design.from_midas(table, time=time)
    ct = d.condition_table()
    back = ct.iloc[d.perturbation_index]
    join = lambda levels: "+".join(sorted(levels, key=str.lower)) if levels else "none"  # noqa: E731
    got = pd.DataFrame({"cell_line": list(back["context"]), "stimuli": [join(x) for x in back["stimulus"]],
                        "inhibitors": [join(x) for x in back["inhibitor"]]}, index=[int(o[3:]) for o in d.obs_names])
    sub = table[table["time"] == time]
    want = _midas_conditions(sub).astype(object)
    pd.testing.assert_frame_equal(got.sort_index(), want.loc[sorted(got.index)], check_names=False)
    # values: the design's readouts are the table's values, sample by sample
    for readout in d.genes:
        v = sub[sub["readout"] == readout].set_index("row")["value"]
        np.testing.assert_allclose(d.dense_y()[:, d.genes.index(readout)], v.loc[got.index].to_numpy())
    return d


def test_midas_roundtrip_synthetic(tmp_path):
    from semimech.datasets import read_midas

    _write_midas(tmp_path / "md.csv")
    table = read_midas(tmp_path / "md.csv")
    d = _roundtrip(table, 30)
    assert d.contexts == ("A549", "HepG2") and set(d.factor_names) == {"stimulus", "inhibitor"}
    assert len(d.perturbations) == 18 and d.n_obs == 18
    with pytest.raises(DesignError, match="several time points"):
        sm.Design.from_midas(table)


def test_midas_baseline_time_gives_the_samples_before_the_stimulus(tmp_path):
    """CellNOpt's files (ToyMMB, LiverDREAM) measure the unstimulated state only at t = 0: without
    baseline_time such a table has no untreated row at the later time and cannot make a design."""
    from semimech.datasets import read_midas

    _write_midas(tmp_path / "md.csv")
    table = read_midas(tmp_path / "md.csv")
    table = table[~((table["time"] == 30) & (table["stimuli"] == "none"))]  # no unstimulated sample at t = 30
    before = table.copy()
    with pytest.raises(DesignError, match="no row is untreated"):
        sm.Design.from_midas(table, time=30)
    d = sm.Design.from_midas(table, time=30, baseline_time=0)
    pd.testing.assert_frame_equal(table, before)  # the user's table is not modified
    assert d.n_obs == 2 * 2 * 3 + 2 * 3 * 3  # the t = 30 samples, then every t = 0 sample
    ct = d.condition_table().iloc[d.perturbation_index]
    rows = [int(o[3:]) for o in d.obs_names]
    t0 = table.drop_duplicates("row").set_index("row").loc[rows, "time"].to_numpy() == 0
    assert not any(len(x) for x in ct["stimulus"][t0])  # a t = 0 sample has no stimulus level ...
    inh0 = table[table["time"] == 0].drop_duplicates("row").set_index("row").loc[np.asarray(rows)[t0], "inhibitors"]
    join = lambda levels: "+".join(sorted(levels, key=str.lower)) if levels else "none"  # noqa: E731
    assert [join(x) for x in ct["inhibitor"][t0]] == list(inh0)  # ... and keeps its inhibitors
    assert all(len(x) for x in ct["stimulus"][~t0])
    for readout in d.genes:  # values as they are, sample by sample
        v = table[table["readout"] == readout].set_index("row")["value"]
        np.testing.assert_allclose(d.dense_y()[:, d.genes.index(readout)], v.loc[rows].to_numpy())
    # the one later time is the time modelled; a baseline time that is that time, or absent, is named
    assert sm.Design.from_midas(table, baseline_time=0).obs_names == d.obs_names
    with pytest.raises(DesignError, match="baseline_time=30 is the time modelled"):
        sm.Design.from_midas(table, time=30, baseline_time=30)
    with pytest.raises(DesignError, match=r"baseline_time=5 is not in the MIDAS table \(times: \[0.0, 30.0\]\)"):
        sm.Design.from_midas(table, time=30, baseline_time=5)


def test_midas_roundtrip_hepg2():
    from semimech.datasets import DatasetNotFoundError, read_midas, shared_data_dir

    try:
        path = shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv"
        table = read_midas(path)
    except DatasetNotFoundError as err:
        pytest.skip(f"shared data not available: {err}")
    d = _roundtrip(table, 30)
    # 5 cell lines x 10 stimulus sets x the full 2^3 inhibitor factorial; "IL1a+INS" is two stimulus levels
    assert len(d.contexts) == 5 and len(d.perturbations) == 400
    assert {"IL1a", "INS"} <= {t for t, f in zip(d.targets, d.target_factors) if f == "stimulus"}
    assert sorted(t for t, f in zip(d.targets, d.target_factors) if f == "inhibitor") == ["IKKi", "MEK12i", "PI3Ki"]
    assert all(c >= 0 for c in d.model_data()["context_control"])


def test_midas_time_points_as_contexts(tmp_path):
    """``time="contexts"``: every time point of one cell line's samples is kept, as the context (for a model fitted
    to all time points at once, e.g. signalling_network with times="contexts"); its samples keep their stimuli (a
    time model starts every condition from the pretreatment state at t = 0)."""
    from semimech.datasets import read_midas

    _write_midas(tmp_path / "md.csv")
    table = read_midas(tmp_path / "md.csv")
    with pytest.raises(DesignError, match=r"names 2 cell lines \['A549', 'HepG2'\]; select one first, e\.g\. "
                                          r"table\[table\['cell_line'\] == 'A549'\]"):
        sm.Design.from_midas(table, time="contexts")
    one = table[table["cell_line"] == "HepG2"]
    before = one.copy()
    d = sm.Design.from_midas(one, time="contexts")
    pd.testing.assert_frame_equal(one, before)
    assert d.contexts == ("0", "30") and d.n_obs == 2 * 9
    rows = [int(o[3:]) for o in d.obs_names]
    at = one.drop_duplicates("row").set_index("row").loc[rows]
    ctx = np.asarray(d.contexts)[np.asarray(d.perturbation_context)[d.perturbation_index]]
    assert list(ctx) == [f"{t:g}" for t in at["time"]]               # each sample's context is its time
    ct = d.condition_table().iloc[d.perturbation_index]
    join = lambda levels: "+".join(sorted(levels, key=str.lower)) if levels else "none"  # noqa: E731
    assert [join(x) for x in ct["stimulus"]] == list(at["stimuli"])  # t = 0 samples keep their stimuli
    for readout in d.genes:
        v = one[one["readout"] == readout].set_index("row")["value"]
        np.testing.assert_allclose(d.dense_y()[:, d.genes.index(readout)], v.loc[rows].to_numpy())
    with pytest.raises(DesignError, match="with time='contexts' every time point, t = 0 included"):
        sm.Design.from_midas(one, time="contexts", baseline_time=0)
    with pytest.raises(DesignError, match=r"time must be one of the table's time points \[0.0, 30.0\] or 'contexts'"):
        sm.Design.from_midas(one, time="context")
    with pytest.raises(DesignError, match="or time='contexts' to keep them all"):
        sm.Design.from_midas(one)
