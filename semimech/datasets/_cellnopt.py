"""CellNOpt HepG2 data: the shipped subset, and how its treatments and readouts name PKN nodes.

Shipped with the package (made by ``benchmarks/datasets/make_hepg2_subset.py``; BSD 2-clause, see
``HEPG2_CANCERRES2011.md`` and ``LICENSE.cellnopt.txt`` in this folder): the t = 30 min rows of
``HepG2CancerRes2011`` (Saez-Rodriguez et al., Cancer Res 71:5400, 2011; Alexopoulos et al.,
Mol Cell Proteomics 9:1849, 2010) — 5 liver cell lines x 10 stimulus settings x the full 2^3
factorial of PI3K, MEK1/2 and IKK inhibitors, 18 xMAP phospho readouts, raw values — and its
prior-knowledge network.
"""

from __future__ import annotations

from importlib import resources
from types import MappingProxyType

import numpy as np
import pandas as pd

from semimech.datasets._midas import MIDAS_COLUMNS, read_sif

#: HepG2CancerRes2011: treatment -> PKN node, readout aliases, readouts falling with their node's
#: activity (the PKN's ``akt -| gsk3`` and ``ikk -| ikb`` describe activity; p-GSK3 S9 and p-IkB
#: are the inhibitory phosphorylations, which rise as AKT / IKK are active).
HEPG2_NETWORK = MappingProxyType({
    "stimuli": MappingProxyType({"IL1a": "il1a", "IL6": "il6", "INS": "ins", "TGFa": "tgfa", "TNFa": "tnfa"}),
    "inhibitors": MappingProxyType({"PI3Ki": "pi3k", "MEK12i": "mek", "IKKi": "ikk"}),
    "readout_aliases": MappingProxyType({"ERK12": "erk", "JNK12": "jnk", "MEK12": "mek"}),
    "readout_signs": MappingProxyType({"GSK3 (18)": -1, "Ikb (58)": -1}),
})

_CSV = "hepg2_cancerres2011.csv"
_SIF = "hepg2_cancerres2011_pkn.sif"


def hepg2_cancerres2011() -> pd.DataFrame:
    """The shipped HepG2CancerRes2011 subset (t = 30 min, raw values) as a tidy MIDAS table.

    Columns as :func:`semimech.datasets.read_midas` (``cell_line``, ``stimuli``, ``inhibitors``,
    ``time``, ``readout``, ``value``, ``row``, ``sample_id``); 400 samples x 18 readouts, one
    measurement per condition. Cite Saez-Rodriguez et al., Cancer Res 71:5400 (2011).
    """
    with resources.files("semimech.datasets").joinpath(_CSV).open("r") as fh:
        wide = pd.read_csv(fh)
    reads = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors", "time")]
    wide = wide.assign(row=np.arange(len(wide)), sample_id=pd.NA)
    tidy = wide.melt(id_vars=["cell_line", "stimuli", "inhibitors", "time", "row", "sample_id"], value_vars=reads,
                     var_name="readout", value_name="value")
    tidy = tidy.sort_values(["row"], kind="stable").reset_index(drop=True)
    tidy = tidy.astype({"value": float, "time": float})
    for c in ("cell_line", "stimuli", "inhibitors", "readout", "sample_id"):
        tidy[c] = tidy[c].astype("string")
    return tidy.loc[:, list(MIDAS_COLUMNS)]


def hepg2_cancerres2011_pkn() -> pd.DataFrame:
    """The HepG2CancerRes2011 prior-knowledge network (:func:`semimech.datasets.read_sif` output)."""
    with resources.as_file(resources.files("semimech.datasets").joinpath(_SIF)) as path:
        return read_sif(path)
