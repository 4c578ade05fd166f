"""Reader for the Sachs et al. 2005 flow-cytometry data (offline copy, not shipped)."""

from __future__ import annotations

import os
import re
from types import MappingProxyType
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd

from semimech.datasets._paths import DatasetFormatError, resolve

SACHS2005_PROTEINS: tuple[str, ...] = (
    "raf", "mek", "plc", "pip2", "pip3", "erk", "akt", "pka", "pkc", "p38", "jnk",
)  # fmt: skip
"""The 11 measured phospho-proteins / lipids, in file order (``var_names``)."""

SACHS2005_CONDITION_PARTS: tuple[str, ...] = (
    "cd3_cd28", "icam2", "aktinhib", "g0076", "psitect", "u0126", "ly", "pma", "b2camp",
)  # fmt: skip
"""The 9 reagents whose ``"+"``-joined names make up ``obs["condition"]``."""


class InterventionTarget(NamedTuple):
    """The measured node a reagent acts on: ``sign`` -1 inhibits, +1 activates."""

    protein: str
    sign: int
    reagent: str


SACHS2005_TARGETS = MappingProxyType(
    {
        "aktinhib": InterventionTarget("akt", -1, "AKT inhibitor"),
        "g0076": InterventionTarget("pkc", -1, "G06976 (PKC inhibitor)"),
        "psitect": InterventionTarget("pip2", -1, "psitectorigenin (PIP2 inhibitor)"),
        "u0126": InterventionTarget("mek", -1, "U0126 (MEK inhibitor)"),
        "ly": InterventionTarget("pip3", -1, "LY294002 (PI3K inhibitor; lowers PIP3)"),
        "pma": InterventionTarget("pkc", +1, "PMA (PKC activator)"),
        "b2camp": InterventionTarget("pka", +1, "beta2cAMP (PKA activator)"),
    }
)
"""Usual intervention-target reading of Sachs 2005 (read-only mapping).

Keys are parts of ``obs["condition"]``; values name the measured node acted on and the
sign of the action on its *activity*. ``cd3_cd28`` (the baseline T-cell receptor
stimulation) and ``icam2`` (an extra receptor stimulus) act upstream of every measured
node and have no entry. ``u0126`` inhibits MEK's activity: measured p-MEK may rise while
ERK falls. ``pma`` and ``b2camp`` conditions are given without CD3/CD28.
"""

_LABELED = "sachs2005_labeled.csv"
_CONTINUOUS = "sachs.2005.continuous.txt"
_MIXED = "sachs.2005.continuous.discrete.experimental.mixed.maximum.2.txt"
_GRAPH = "sachs.2005.ground.truth.graph.txt"
_EDGE = re.compile(r"^\s*\d+\.\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def _conditions_from_indicators(ind: pd.DataFrame) -> pd.Series:
    names = np.asarray(SACHS2005_CONDITION_PARTS)
    on = ind.loc[:, list(SACHS2005_CONDITION_PARTS)].to_numpy() != 0
    return pd.Series(["+".join(names[row]) for row in on], index=ind.index)


def _read_table(path: str | os.PathLike[str] | None) -> pd.DataFrame:
    try:
        file = resolve(path, folder="sachs2005", filename=_LABELED, what="Sachs 2005")
    except FileNotFoundError:
        # a folder with only the two verbatim CMU files also works
        if path is None or not os.path.isdir(path):
            raise
        cont = os.path.join(path, _CONTINUOUS)
        mixed = os.path.join(path, _MIXED)
        if not (os.path.isfile(cont) and os.path.isfile(mixed)):
            raise
        values = pd.read_csv(cont, sep="\t")
        ind = pd.read_csv(mixed, sep="\t")
        if len(values) != len(ind) or not set(SACHS2005_CONDITION_PARTS) <= set(ind.columns):
            raise DatasetFormatError(
                f"Sachs 2005: {cont} and {mixed} do not line up (rows or indicator columns)."
            ) from None
        table = values.copy()
        table.insert(0, "condition", _conditions_from_indicators(ind))
        return table
    table = pd.read_csv(file)
    if "condition" not in table:
        raise DatasetFormatError(f"Sachs 2005: {file} has no 'condition' column.")
    return table


def read_sachs2005(path: str | os.PathLike[str] | None = None) -> ad.AnnData:
    """Read Sachs et al. 2005: 7,466 T cells x 11 phospho-proteins in 9 conditions.

    Parameters
    ----------
    path
        ``sachs2005_labeled.csv``, or a folder holding it (or holding the two verbatim
        CMU files ``sachs.2005.continuous.txt`` and ``sachs.2005.continuous.discrete.
        experimental.mixed.maximum.2.txt``). Default: ``shared_data_dir() / "sachs2005"``.

    Returns
    -------
    AnnData with ``X`` = raw flow-cytometry intensities (float64, dense; take logs
    yourself), ``var_names`` = :data:`SACHS2005_PROTEINS`, and ``obs["condition"]``
    (categorical in file order): ``"cd3_cd28"`` (baseline stimulation),
    ``"cd3_cd28+icam2"``, ``"cd3_cd28+aktinhib"``, ``"cd3_cd28+g0076"``,
    ``"cd3_cd28+psitect"``, ``"cd3_cd28+u0126"``, ``"cd3_cd28+ly"``, ``"pma"``,
    ``"b2camp"``. Map condition parts to targets with :data:`SACHS2005_TARGETS`.

    Raises
    ------
    DatasetNotFoundError
        If the file is missing.
    DatasetFormatError
        If the file lacks the condition column or any of the 11 proteins.

    Notes
    -----
    Data: Sachs K, Perez O, Pe'er D, Lauffenburger DA, Nolan GP. "Causal protein-signaling
    networks derived from multiparameter single-cell data." Science 308:523-529 (2005).
    Copy from https://github.com/cmu-phil/example-causal-datasets (CC0), ``real/sachs``.
    """
    table = _read_table(path)
    missing = [p for p in SACHS2005_PROTEINS if p not in table]
    if missing:
        raise DatasetFormatError(f"Sachs 2005 table lacks protein columns {missing}.")
    X = table.loc[:, list(SACHS2005_PROTEINS)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(X)):
        raise DatasetFormatError("Sachs 2005 table has non-finite values.")
    cond = table["condition"].astype(str)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(cond, categories=list(pd.unique(cond)))},
        index=pd.Index([f"cell{i}" for i in range(len(table))], name="cell"),
    )
    var = pd.DataFrame(index=pd.Index(list(SACHS2005_PROTEINS), name="protein"))
    return ad.AnnData(X=X, obs=obs, var=var)


def read_sachs2005_graph(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read the 20-edge consensus graph of Sachs 2005 (CMU Tetrad format).

    Parameters
    ----------
    path
        ``sachs.2005.ground.truth.graph.txt`` or its folder. Default:
        ``shared_data_dir() / "sachs2005"``.

    Returns
    -------
    DataFrame with columns ``source``, ``target`` (protein names as in
    :data:`SACHS2005_PROTEINS`), one row per directed edge, in file order.

    Raises
    ------
    DatasetNotFoundError
        If the file is missing.
    DatasetFormatError
        If an edge is not directed (``-->``) or no edges are found.
    """
    file = resolve(path, folder="sachs2005", filename=_GRAPH, what="Sachs 2005 graph")
    edges = []
    in_edges = False
    for lineno, line in enumerate(file.read_text().splitlines(), start=1):
        if line.strip().lower().startswith("graph edges"):
            in_edges = True
            continue
        if not in_edges or not line.strip():
            continue
        m = _EDGE.match(line)
        if m is None:
            raise DatasetFormatError(f"{file}:{lineno}: cannot parse edge line {line!r}.")
        src, arrow, dst = m.groups()
        if arrow != "-->":
            raise DatasetFormatError(
                f"{file}:{lineno}: edge type {arrow!r} is not directed ('-->'); "
                "only directed graphs are supported."
            )
        edges.append((src, dst))
    if not edges:
        raise DatasetFormatError(f"{file}: no 'Graph Edges:' section with edges found.")
    return pd.DataFrame(edges, columns=["source", "target"])
