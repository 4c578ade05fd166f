"""The readouts as the model sees them: sparse counts wherever the likelihood allows.

For ``likelihood="negbin"`` the readouts go to the model as
:class:`~semimech.measurement.likelihoods.SparseCounts` (one block of padded coordinates):
the negative binomial then evaluates ``lgamma`` on the non-zero counts only and never builds
the dense rows x genes matrix of counts (see
:class:`~semimech.measurement.likelihoods.SparseNegativeBinomial2`). A model qualifies when
it observes ``y`` through :func:`semimech.measurement.observe_conditions` /
:func:`~semimech.measurement.observe`; that is checked once per model and options by an
abstract trace, and any other model gets the dense matrix as before.

The number of stored entries is rounded up (at most 1/8 more), so designs of the same shape
with slightly different numbers of non-zeros (cross-validation folds) share compiled programs.
"""

from __future__ import annotations

import jax
import numpy as np
import scipy.sparse as sp

from semimech.measurement.likelihoods import SparseCounts, SparseNegativeBinomial2

_ACCEPTS: dict = {}


def capacity(nnz: int) -> int:
    """``nnz`` rounded up to a multiple of 2**(floor(log2 nnz) - 3) (at least 256)."""
    if nnz <= 256:
        return 256
    q = 2 ** max(int(np.floor(np.log2(nnz))) - 3, 8)
    return int(-(-nnz // q) * q)


def sparse_counts(y) -> SparseCounts:
    """A dense array or scipy sparse matrix of counts as one block of padded coordinates (float32/int32)."""
    m = sp.csr_matrix(y) if not sp.issparse(y) else y.tocsr()
    if np.any(m.data == 0):  # stored zeros: drop them from a copy (the design's matrix is never changed)
        m = m.copy()
        m.eliminate_zeros()
    nnz, cap = m.nnz, capacity(m.nnz)
    vals = np.zeros((1, cap), np.float32)
    rows = np.zeros((1, cap), np.int32)
    cols = np.zeros((1, cap), np.int32)
    mask = np.zeros((1, cap), np.float32)
    vals[0, :nnz] = m.data
    cols[0, :nnz] = m.indices
    rows[0, :nnz] = np.repeat(np.arange(m.shape[0], dtype=np.int32), np.diff(m.indptr))
    mask[0, :nnz] = 1.0
    return SparseCounts(vals, rows, cols, mask, shape=tuple(m.shape))


def accepts_sparse(model, data: dict, y: SparseCounts, *, key=None) -> bool:
    """Whether ``model`` observes ``y`` through the sparse negative binomial (abstract trace, memoised by ``key``
    and whether ``data`` has a row mask: a mask that reaches the site other than through
    :meth:`SparseNegativeBinomial2.mask`, e.g. a ``MaskedDistribution``, takes no :class:`SparseCounts`, so a
    model may take them unmasked and not masked)."""
    if key is not None:
        key = (key, data.get("row_mask") is not None)
    if key is not None and key in _ACCEPTS:
        return _ACCEPTS[key]
    from semimech.infer._sites import trace

    found = {}

    def run():
        tr = trace(model, data, y)
        found.update({n: type(s["fn"]) for n, s in tr.items() if s["type"] == "sample" and s.get("is_observed")})
        return 0

    try:
        jax.eval_shape(run)
        ok = bool(found) and found.get("y") is SparseNegativeBinomial2
    except Exception:  # a model that cannot take SparseCounts gets the dense matrix
        ok = False
    if key is not None:
        _ACCEPTS[key] = ok
    return ok


def observed(model, design, data: dict, likelihood: str, *, key=None):
    """``(y, sparse)``: the readouts for ``model`` — :class:`SparseCounts` for the negative binomial
    when the model takes them, else the dense float32 matrix."""
    if likelihood == "negbin":
        ys = sparse_counts(design.y)
        if accepts_sparse(model, data, ys, key=key):
            return ys, True
    return design.dense_y(np.float32), False


__all__ = ["accepts_sparse", "capacity", "observed", "sparse_counts"]
