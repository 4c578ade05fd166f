"""Reader for the Papalexi et al. 2021 subset (offline copy; GPL-3, never shipped)."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd

from semimech.datasets._paths import DatasetFormatError, resolve

_FILENAME = "papalexi2021_lowmoi_subset.h5ad"


def read_papalexi2021(path: str | os.PathLike[str] | None = None) -> ad.AnnData:
    """Read the Papalexi 2021 THP-1 CRISPR-knockout subset (20,729 cells x 299 genes).

    Parameters
    ----------
    path
        ``papalexi2021_lowmoi_subset.h5ad`` or its folder. Default:
        ``shared_data_dir() / "papalexi2021_sceptre_subset"``.

    Returns
    -------
    AnnData as stored, with the guide table converted:

    - ``X``: UMI counts (sparse CSR; float32 holding integers), genes = ``var_names``.
    - ``obsm["grna_counts"]``: per-cell gRNA UMI counts (sparse, cells x 110 gRNAs).
    - ``uns["grna_targets"]``: DataFrame indexed by gRNA id (``"grna"``), one row per
      column of ``obsm["grna_counts"]`` in the same order, column ``target`` (gene
      symbol or ``"non-targeting"``). Replaces the stored ``uns["grna_ids"]`` /
      ``uns["grna_target"]`` arrays.
    - ``obs``: ``bio_rep`` (rep_1/2/3), ``grna_top`` / ``target`` (argmax gRNA and its
      target — a simple assignment, not the authors'), ``grna_top_umi``,
      ``grna_total_umi``, ``n_grnas_detected``, ``frac_top``.

    Raises
    ------
    DatasetNotFoundError
        If the file is missing.
    DatasetFormatError
        If the guide table does not match ``obsm["grna_counts"]``.

    Notes
    -----
    Data: Papalexi E et al. "Characterizing the molecular regulation of inhibitory
    immune checkpoints with multimodal single-cell screens." Nat Genet 53:322-331 (2021),
    via the sceptre R package example data (GPL-3). Not redistributed with semimech.
    """
    file = resolve(
        path, folder="papalexi2021_sceptre_subset", filename=_FILENAME, what="Papalexi 2021"
    )
    adata = ad.read_h5ad(file)
    uns = dict(adata.uns)
    try:
        ids = np.asarray(uns.pop("grna_ids"), dtype=str)
        targets = np.asarray(uns.pop("grna_target"), dtype=str)
        counts = adata.obsm["grna_counts"]
    except KeyError as err:
        raise DatasetFormatError(
            f"{file}: missing {err}; expected uns['grna_ids'], uns['grna_target'] and "
            "obsm['grna_counts'] as written for the shared data copy."
        ) from None
    if not (len(ids) == len(targets) == counts.shape[1]):
        raise DatasetFormatError(
            f"{file}: {len(ids)} gRNA ids, {len(targets)} targets, but "
            f"{counts.shape[1]} columns in obsm['grna_counts']."
        )
    uns["grna_targets"] = pd.DataFrame(
        {"target": pd.array(targets, dtype="string")}, index=pd.Index(ids, name="grna")
    )
    adata.uns = uns
    return adata
