"""The README quickstart (doctest) and the CLI demo end to end."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


def test_cli_demo_smoke(tmp_path, capsys):
    from semimech.cli import main

    assert main(["demo", "--smoke", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "held out 5 doubles" in out and "baseline:no_change" in out and "coverage_90" in out
    for name in ("fit/posterior.nc", "predictions.csv", "metrics.csv", "predicted_vs_observed.png", "summary.json"):
        assert (tmp_path / name).exists(), name
    pred = pd.read_csv(tmp_path / "predictions.csv")
    assert set(pred["perturbation"]) == {"KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2",
                                         "MAPK1+TGFBR2"}
    assert {"mean", "sd", "q05", "q50", "q95", "observed"} <= set(pred.columns)
    def refuse(constant):
        raise AssertionError(f"summary.json holds {constant}: not valid JSON for most parsers")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    rows = {r["model"]: r for r in summary["summary"]}
    assert rows["baseline:no_change"]["coverage_90"] is None  # undefined for a point prediction: null
    # the model must at least beat "no change" on held-out doubles, even in a smoke run
    assert rows["additive"]["l2"] < rows["baseline:no_change"]["l2"]
