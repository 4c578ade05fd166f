"""Make the HepG2CancerRes2011 subset shipped inside ``semimech.datasets``.

Derives ``semimech/datasets/hepg2_cancerres2011.csv`` (the t = 30 min samples of the CellNOpt
``HepG2CancerRes2011`` MIDAS table: cell line, stimuli, inhibitors, time and the 18 raw xMAP
readouts, one row per sample) and copies the PKN (``hepg2_cancerres2011_pkn.sif``) and the
upstream BSD 2-clause license (``LICENSE.cellnopt.txt``) from the offline copy at
``../shared/data/cellnopt_liver_phospho`` (cellnopt/cellnopt, commit 319c956e, BSD 2-clause).

Usage (from the repository root)::

    python benchmarks/datasets/make_hepg2_subset.py [--source ../shared/data/cellnopt_liver_phospho] [--out-dir semimech/datasets]

Deterministic: rows in file order, values as in the file (integers), readouts in file order;
the script prints a SHA-256 of the CSV so two runs can be compared.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "cellnopt_liver_phospho"
DEFAULT_OUT_DIR = REPO_ROOT / "semimech" / "datasets"
EXPECTED_ROWS = 400


def derive(source: Path):
    """The wide t = 30 table (``cell_line, stimuli, inhibitors, time`` + readouts) from the MIDAS file."""
    from semimech.datasets import read_midas

    long = read_midas(source / "HepG2CancerRes2011" / "MD-HepG2CancerRes2011.csv").query("time == 30")
    reads = list(dict.fromkeys(long.readout))
    wide = long.pivot_table(index=["row", "cell_line", "stimuli", "inhibitors", "time"], columns="readout",
                            values="value", aggfunc="first").reset_index()
    wide = wide.sort_values("row").drop(columns="row")[["cell_line", "stimuli", "inhibitors", "time"] + reads]
    wide.columns.name = None
    if len(wide) != EXPECTED_ROWS or wide[reads].isna().any().any():
        raise SystemExit(f"unexpected table: {wide.shape}, {int(wide[reads].isna().sum().sum())} missing values")
    return wide


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    a = p.parse_args(argv)
    wide = derive(a.source)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    csv = a.out_dir / "hepg2_cancerres2011.csv"
    wide.to_csv(csv, index=False, float_format="%.6g")
    shutil.copyfile(a.source / "HepG2CancerRes2011" / "PKN-HepG2CancerRes2011.sif", a.out_dir / "hepg2_cancerres2011_pkn.sif")
    shutil.copyfile(a.source / "LICENSE.cellnopt.txt", a.out_dir / "LICENSE.cellnopt.txt")
    print(f"wrote {csv} ({wide.shape[0]} rows x {wide.shape[1] - 4} readouts), sha256 "
          f"{hashlib.sha256(csv.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
