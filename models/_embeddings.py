"""Side information for effect populations: an embedding of each target (names resolved to arrays).

:func:`target_embedding` turns a user table, the PCA of the training pseudobulk (the gene
embedding of Ahlmann-Eltze, Huber & Anders 2025, Nat Methods 22:1657, K = 10) or a prior
network (a spectral embedding of its graph, so that neighbouring nodes get similar rows) into
the model options ``embedding`` (targets x dims) and ``gene_embedding`` (genes x dims) that
:func:`semimech.models._effects.target_effects` regresses effects on. Models see only arrays; the
arrays :func:`target_embedding` returns name their rows (:class:`NamedRows`), so a fit takes each
target's row by name (an embedding built on another design, with the same number of targets in
another order, put rows on the wrong targets without a word).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from semimech.errors import DesignError
from semimech.models._named import NamedRows

MISSING = ("error", "population")


def target_embedding(design, source="pca", *, network=None, n_components: int = 10, missing: str = "error",
                     standardize: bool = True) -> dict:
    """Embed each target of ``design`` for the effect population's regression (side information).

    Parameters
    ----------
    design
        The training design (its targets, genes and, for ``"pca"``, readouts).
    source
        ``"pca"`` (default): the first ``n_components`` principal-component scores of the genes in
        the training pseudobulk (genes x conditions, each condition centred; log1p of the
        per-cell means for counts) — a target that is a modelled gene takes its gene's row.
        ``"network"``: a spectral embedding of ``network`` (the ``n_components`` leading
        non-trivial eigenvectors of its normalised graph Laplacian, edges undirected).
        A table: a DataFrame indexed by target (or gene) name with one numeric column per
        dimension, or a mapping ``{name: vector}``.
    network
        For ``source="network"``: an edges DataFrame with ``source`` and ``target`` columns (as
        :func:`semimech.datasets.read_sif` returns) or a path to a ``.sif`` file.
    n_components
        Dimensions of the PCA or spectral embedding.
    missing
        ``"error"`` (default): every target must have an embedding; the error names those that
        do not. ``"population"``: targets without one are answered from the population alone.
    standardize
        Centre and scale each dimension over the embedded targets perturbed in ``design``.

    Returns
    -------
    dict
        ``{"embedding": (targets, dims), "gene_embedding": (genes, dims)}`` float32 arrays (a row
        of NaN: no embedding), to pass as model options: ``fit_svi(spec, design, **emb, ...)``. Their
        rows are named (:class:`NamedRows`, ``.row_names``: ``design.targets`` / ``design.genes``),
        so a fit of another design with these targets and genes, in any order, takes each one's row.
        ``gene_embedding`` embeds targets a prediction design adds (modelled genes never listed
        as targets in training).
    """
    if missing not in MISSING:
        raise DesignError(f"missing must be one of {MISSING}, got {missing!r}.")
    if isinstance(source, str) and source == "pca":
        table = _pca_table(design, n_components)
    elif isinstance(source, str) and source == "network":
        if network is None:
            raise DesignError("source='network' needs network= (an edges DataFrame with source/target columns or a "
                              ".sif path).")
        table = _network_table(network, n_components)
    elif isinstance(source, str):
        raise DesignError(f"source must be 'pca', 'network', a DataFrame or a mapping of vectors, got {source!r}.")
    else:
        table = _user_table(source)
    dims = next(iter(table.values())).shape[0]
    emb = np.full((len(design.targets), dims), np.nan, dtype=np.float64)
    for i, t in enumerate(design.targets):
        if t in table:
            emb[i] = table[t]
    absent = [t for i, t in enumerate(design.targets) if not np.isfinite(emb[i]).all()]
    if absent and missing == "error":
        raise DesignError(
            f"the embedding has no row for {len(absent)} of {len(design.targets)} targets: {absent[:10]}"
            f"{'...' if len(absent) > 10 else ''}. Add rows for them, or pass missing='population' to answer "
            "them from the population alone (Prediction.sources will say so).")
    genes = np.full((design.n_genes, dims), np.nan, dtype=np.float64)
    for j, g in enumerate(design.genes):
        if g in table:
            genes[j] = table[g]
    if standardize:
        emb, genes = _standardize(design, emb, genes)
    return {"embedding": NamedRows(emb.astype(np.float32), design.targets),
            "gene_embedding": NamedRows(genes.astype(np.float32), design.genes)}


def _user_table(source) -> dict[str, np.ndarray]:
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        if source.index.has_duplicates:
            dup = sorted(set(map(str, source.index[source.index.duplicated()])))
            raise DesignError(f"the embedding table names {dup[:10]} more than once; give one row per target.")
        try:
            values = source.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise DesignError("the embedding table must hold only numeric columns (one per dimension).") from None
        items = list(zip(map(str, source.index), values))
    elif isinstance(source, Mapping):
        items = [(str(k), np.asarray(v, dtype=np.float64).ravel()) for k, v in source.items()]
    else:
        raise DesignError(f"source must be 'pca', 'network', a DataFrame or a mapping of vectors, got "
                          f"{type(source).__name__}.")
    if not items or items[0][1].size == 0:
        raise DesignError("the embedding table is empty: give at least one target with at least one dimension.")
    dims = items[0][1].size
    bad = [k for k, v in items if v.size != dims]
    if bad:
        raise DesignError(f"embedding dimension mismatch: {items[0][0]!r} has {dims} dimensions but {bad[:10]} have "
                          f"{sorted({v.size for k, v in items if v.size != dims})}; every row needs the same length.")
    nan = [k for k, v in items if not np.isfinite(v).all()]
    if nan:
        raise DesignError(f"the embedding has NaN or infinite values for {nan[:10]}. Fix or drop those rows (drop: "
                          "pass missing='population' to answer dropped targets from the population).")
    return dict(items)


def _pca_table(design, n_components: int) -> dict[str, np.ndarray]:
    """Ahlmann-Eltze et al. (2025) gene embedding: PCA scores of genes over training conditions."""
    from semimech.evaluate import perturbation_means

    if design.y is None:
        raise DesignError("source='pca' needs a design with readouts (the training design).")
    if n_components < 1:
        raise DesignError(f"n_components must be >= 1, got {n_components}.")
    _, means = perturbation_means(design)
    X = np.log1p(means) if design.is_counts else means
    Xg = X.T - X.T.mean(axis=0, keepdims=True)  # genes x conditions, each condition centred
    U, S, _ = np.linalg.svd(Xg, full_matrices=False)
    k = int(min(n_components, np.sum(S > (S[0] if S.size else 0) * 1e-10)))
    if k == 0:
        raise DesignError("the training pseudobulk has rank 0 (all conditions alike); source='pca' needs variation.")
    G = U[:, :k] * S[:k]
    return {g: G[j] for j, g in enumerate(design.genes)}


def _network_table(network, n_components: int) -> dict[str, np.ndarray]:
    """Spectral embedding: leading non-trivial eigenvectors of the normalised Laplacian (undirected)."""
    import pandas as pd
    from scipy.linalg import eigh

    if isinstance(network, (str, os.PathLike)):
        from semimech.datasets import read_sif

        network = read_sif(network)
    if not isinstance(network, pd.DataFrame) or not {"source", "target"} <= set(network.columns):
        raise DesignError("network must be a DataFrame with columns source and target (or a .sif path).")
    src, dst = network["source"].astype(str).to_numpy(), network["target"].astype(str).to_numpy()
    nodes = sorted((set(src) | set(dst)))
    if len(nodes) < 3:
        raise DesignError(f"the network has {len(nodes)} nodes; a spectral embedding needs at least 3.")
    col = {n: i for i, n in enumerate(nodes)}
    A = np.zeros((len(nodes), len(nodes)))
    for s, t in zip(src, dst):
        if s != t:
            A[col[s], col[t]] = A[col[t], col[s]] = 1.0
    deg = A.sum(1)
    d = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    L = np.eye(len(nodes)) - d[:, None] * A * d[None, :]
    k = int(min(n_components, len(nodes) - 1))
    _, vec = eigh(L, subset_by_index=[1, k])
    return {n: vec[i] for i, n in enumerate(nodes) if deg[i] > 0}


def _standardize(design, emb: np.ndarray, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale each dimension over embedded targets perturbed in training (all embedded if < 2)."""
    seen = {t for p in design.observed_perturbations() for t in design.targets_of(p)} if design.y is not None else set()
    ok = np.isfinite(emb).all(1)
    ref = ok & np.array([t in seen for t in design.targets])
    if ref.sum() < 2:
        ref = ok
    if ref.sum() < 2:
        return emb, genes
    mu = emb[ref].mean(0)
    sd = emb[ref].std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return (emb - mu) / sd, (genes - mu) / sd
