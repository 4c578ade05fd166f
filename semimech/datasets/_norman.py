"""The shipped Norman et al. 2019 K562 CRISPRa subset (PerturBench devel set)."""

from __future__ import annotations

from importlib import resources

import anndata as ad

_PACKAGE = "semimech.datasets"
_FILENAME = "norman19_devel.h5ad"

NORMAN19_COMBINABLE_DOUBLES: tuple[str, ...] = (
    "KLF1+MAP2K6",
    "KLF1+TGFBR2",
    "MAP2K3+MAP2K6",
    "MAP2K3+SLC38A2",
    "MAPK1+TGFBR2",
)
"""Doubles in :func:`norman19_devel` whose two single activations are both in the data."""


def norman19_devel() -> ad.AnnData:
    """Norman et al. 2019 K562 CRISPRa cells: control, 18 singles, 15 doubles, 500 genes.

    A small real dataset shipped with semimech (about 0.5 MB): the Norman 2019 part of
    the PerturBench development set, 3,375 cells x 500 highly variable genes. Each call
    reads the packaged file anew and returns a fresh AnnData, so modifying the result
    never changes what the next call returns.

    Returns
    -------
    AnnData with

    - ``X``: **log1p-normalised expression** (log1p of library-size-normalised counts,
      exactly as distributed by PerturBench; sparse CSR, float64). These are *not*
      counts: model them with a Gaussian likelihood, not a negative binomial.
    - ``obs["perturbation"]``: ``"control"`` (100 cells), 18 single-gene activations and
      15 two-gene activations joined by ``"+"`` (e.g. ``"KLF1+MAP2K6"``), ~100 cells each.
      ``obs["condition"]`` is the same label.
    - ``obs["ncounts"]``, ``obs["ngenes"]``: total UMI count and detected genes per cell
      before normalisation.
    - ``obs["cell_type"]`` (``"k562"``), ``obs["perturbation_type"]`` (``"CRISPRa"``),
      ``obs["dose"]`` (``"1"`` or ``"1+1"``).
    - ``var_names``: gene symbols.

    Notes
    -----
    Doubles whose two singles are both present, the natural held-out-combination test
    (:data:`NORMAN19_COMBINABLE_DOUBLES`): KLF1+MAP2K6, KLF1+TGFBR2, MAP2K3+MAP2K6,
    MAP2K3+SLC38A2, MAPK1+TGFBR2. The other 10 doubles have at least one single missing.

    Source: https://github.com/altoslabs/perturbench, ``src/perturbench/data/resources/
    devel.h5ad`` at commit d357dfae3b50968e800e9f5f273ff145080ae67c, rows with
    ``dataset == "norman19"``; derived by ``benchmarks/datasets/make_norman19_devel.py`` (values of X
    unchanged). License: BSD 3-Clause, Copyright (c) 2024 Altos Labs; the license text
    and full provenance ship as ``LICENSE.perturbench.txt`` and ``NORMAN19_DEVEL.md`` in
    this package folder.

    References
    ----------
    .. [1] Norman TM, Horlbeck MA, Replogle JM, et al. "Exploring genetic interaction
       manifolds constructed from rich single-cell phenotypes." Science 365:786-793 (2019).
    .. [2] Wu Y, Wershof E, Schmon SM, et al. "PerturBench: Benchmarking machine learning
       models for cellular perturbation analysis." arXiv:2408.10609 (2024).

    Examples
    --------
    >>> from semimech.datasets import norman19_devel
    >>> adata = norman19_devel()
    >>> adata.shape
    (3375, 500)
    """
    resource = resources.files(_PACKAGE).joinpath(_FILENAME)
    with resources.as_file(resource) as path:
        return ad.read_h5ad(path)
