"""Make the small real datasets shipped inside ``semimech.datasets``.

Derives ``semimech/datasets/norman19_devel.h5ad`` (the Norman et al. 2019 K562
CRISPRa part of the PerturBench development dataset) from the offline copy at
``../shared/data/perturbench_devel_norman19_mcfaline23/devel.h5ad`` and copies the
upstream BSD-3 license next to it.

Usage (from the repository root)::

    python benchmarks/datasets/make_norman19_devel.py [--source PATH/TO/devel.h5ad] [--out-dir semimech/datasets]

The derivation is deterministic: it selects rows, drops annotation, sorts the
sparse column indices and writes with fixed gzip settings. The values of ``X`` are
the upstream log1p-normalised values, bit for bit (float64, as stored upstream).
Running it twice gives identical content; the script prints a SHA-256 of the
content (X, obs, var) so two runs can be compared.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = (
    REPO_ROOT.parent / "shared" / "data" / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
)
DEFAULT_OUT_DIR = REPO_ROOT / "semimech" / "datasets"
OUT_NAME = "norman19_devel.h5ad"
LICENSE_NAME = "LICENSE.perturbench.txt"

OBS_COLUMNS = (
    "perturbation",
    "condition",
    "ncounts",
    "ngenes",
    "cell_type",
    "perturbation_type",
    "dose",
)
EXPECTED_SHAPE = (3375, 500)


def derive_norman19(source: ad.AnnData) -> ad.AnnData:
    """Return the Norman 2019 K562 cells of the PerturBench devel set, trimmed.

    Parameters
    ----------
    source
        The upstream ``devel.h5ad`` AnnData (not modified).

    Returns
    -------
    AnnData with X = upstream log1p-normalised values (CSR, indices sorted),
    obs restricted to ``OBS_COLUMNS`` (unused categories removed), var = gene
    symbols only, no uns/obsm/layers.
    """
    if "dataset" not in source.obs:
        raise SystemExit("source has no obs['dataset'] column; is it PerturBench devel.h5ad?")
    keep = np.asarray(source.obs["dataset"] == "norman19")
    missing = [c for c in OBS_COLUMNS if c not in source.obs]
    if missing:
        raise SystemExit(f"source obs lacks columns {missing}")

    X = source.X[keep]
    X = sp.csr_matrix(X, copy=True)
    X.sum_duplicates()
    X.sort_indices()

    obs = source.obs.loc[keep, list(OBS_COLUMNS)].copy()
    for col in obs.columns:
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = obs[col].cat.remove_unused_categories()
    var = pd.DataFrame(index=pd.Index(source.var_names.astype(str), name="gene_symbol"))

    out = ad.AnnData(X=X, obs=obs, var=var)
    if out.shape != EXPECTED_SHAPE:
        raise SystemExit(f"expected {EXPECTED_SHAPE} norman19 cells x genes, got {out.shape}")
    return out


def content_digest(adata: ad.AnnData) -> str:
    """SHA-256 over X (data, indices, indptr, dtype), obs and var, for reproducibility checks."""
    h = hashlib.sha256()
    X = adata.X
    for arr in (X.data, X.indices, X.indptr):
        h.update(str(arr.dtype).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(pd.util.hash_pandas_object(adata.obs, index=True).values.tobytes())
    h.update(str(adata.obs.dtypes.to_dict()).encode())
    h.update("\n".join(adata.var_names).encode())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="upstream devel.h5ad")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="output folder")
    args = parser.parse_args(argv)

    source_path: Path = args.source
    if not source_path.is_file():
        print(
            f"error: {source_path} not found. Pass --source PATH/TO/devel.h5ad "
            "(PerturBench src/perturbench/data/resources/devel.h5ad).",
            file=sys.stderr,
        )
        return 2
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    derived = derive_norman19(ad.read_h5ad(source_path))
    out_path = out_dir / OUT_NAME
    derived.write_h5ad(out_path, compression="gzip", compression_opts=9)

    license_src = source_path.parent / LICENSE_NAME
    if license_src.is_file():
        shutil.copyfile(license_src, out_dir / LICENSE_NAME)
    else:
        print(f"warning: {license_src} missing; license not copied", file=sys.stderr)

    print(f"wrote {out_path} ({out_path.stat().st_size:,} bytes), shape {derived.shape}")
    print(f"content sha256 {content_digest(derived)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
