"""Real perturbation datasets: one small shipped copy, and readers for offline copies.

Shipped with the package (with citation and license):

- :func:`norman19_devel` — Norman et al. 2019 K562 CRISPRa, 3,375 cells x 500 genes,
  log1p-normalised (BSD-3, via PerturBench). See ``NORMAN19_DEVEL.md`` in this folder.
- :func:`hepg2_cancerres2011`, :func:`hepg2_cancerres2011_pkn` — Saez-Rodriguez et al. 2011 liver
  cell lines, stimulus x inhibitor phospho data at 30 min and the PKN (BSD 2-clause, via CellNOpt);
  :data:`HEPG2_NETWORK` names its treatments' and readouts' nodes. See ``HEPG2_CANCERRES2011.md``.

Readers for copies you hold yourself (by default under :func:`shared_data_dir`):

- :func:`read_sachs2005`, :func:`read_sachs2005_graph`, :data:`SACHS2005_TARGETS`
- :func:`read_midas`, :func:`read_sif` (CellNOpt phospho-protein designs and networks)
- :func:`read_papalexi2021` (GPL-3 data; not redistributed)

Cite the original publications named in each docstring.
"""

from semimech.datasets._cellnopt import HEPG2_NETWORK, hepg2_cancerres2011, hepg2_cancerres2011_pkn
from semimech.datasets._midas import MIDAS_COLUMNS, read_midas, read_sif
from semimech.datasets._norman import NORMAN19_COMBINABLE_DOUBLES, norman19_devel
from semimech.datasets._papalexi import read_papalexi2021
from semimech.datasets._paths import SOURCES, DatasetFormatError, DatasetNotFoundError, shared_data_dir
from semimech.datasets._sachs import (
    SACHS2005_CONDITION_PARTS,
    SACHS2005_PROTEINS,
    SACHS2005_TARGETS,
    InterventionTarget,
    read_sachs2005,
    read_sachs2005_graph,
)

__all__ = [
    "MIDAS_COLUMNS",
    "NORMAN19_COMBINABLE_DOUBLES",
    "SOURCES",
    "SACHS2005_CONDITION_PARTS",
    "SACHS2005_PROTEINS",
    "SACHS2005_TARGETS",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "HEPG2_NETWORK",
    "InterventionTarget",
    "hepg2_cancerres2011",
    "hepg2_cancerres2011_pkn",
    "norman19_devel",
    "read_midas",
    "read_papalexi2021",
    "read_sachs2005",
    "read_sachs2005_graph",
    "read_sif",
    "shared_data_dir",
]
