"""Dense LU solves and eigenvalues that hand jaxlib's CPU LAPACK kernels one matrix per call.

jaxlib 0.10's CPU LAPACK kernels (``getrf``, ``trsm``, ``geev``, ...) split a batch of matrices over
XLA's intra-op thread pool (``jax::ParallelBatchMap``) and block the worker that runs them until
the pieces are done. When XLA runs as many batched LAPACK kernels at once as the pool has workers
(two on a 2-core machine), every worker waits for pieces that no free worker can run, and the
process hangs forever, using no CPU (``benchmarks/RESULTS_compare.md``: linear_steady_state's
cross-validation on HepG2; ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` does not help, pinning
the process to one core does, jaxlib 0.11.1 drops the parallel path from open-source builds). A
single matrix per call has nothing to split, so nothing waits.

So on CPU these helpers solve a batch -- leading axes, or a ``vmap`` from outside (a posterior's
draws, the conditions of a design) -- one matrix at a time in a loop
(:func:`jax.custom_batching.sequential_vmap`); each call returns what the corresponding
``jax.scipy.linalg`` / ``jnp.linalg`` function returns. Elsewhere (GPU) they are those functions.
The backend is read when a program is traced (``jax.default_backend()``).

Derivatives: :func:`lu_factor` and :func:`eigvals` give none (the package factorises matrices
built from ``stop_gradient``-ed parameters, and takes derivatives by the implicit function theorem
through solves with those factors); :func:`lu_solve` is differentiable in ``b`` (the factors are
constants) and :func:`dense_solve` in ``a`` and ``b``, in forward and reverse mode
(:func:`jax.lax.custom_linear_solve`, as ``jnp.linalg.solve`` does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax.custom_batching import sequential_vmap

from semimech.errors import SemimechError

#: Solve one matrix per LAPACK call on CPU. A switch for benchmarks that compare the two paths in one
#: process (clear jax's caches after changing it); not an option for users.
SEQUENTIAL_ON_CPU = True


def sequential() -> bool:
    """Whether programs traced now solve one matrix per LAPACK call (on CPU, see the module docstring)."""
    return SEQUENTIAL_ON_CPU and jax.default_backend() == "cpu"


_lu_factor_one = sequential_vmap(lambda a: jsl.lu_factor(a))
_eigvals_one = sequential_vmap(lambda a: jnp.linalg.eigvals(a))


def _lu_solve_kernel(trans: int):
    def kernel(lu, piv, b):
        return jsl.lu_solve((lu, piv), b, trans=trans)

    return sequential_vmap(kernel)


_lu_solve_one = {t: _lu_solve_kernel(t) for t in (0, 1)}


def _over_leading(f, core_ndim: int, *arrays):
    """``f`` of arrays whose last ``core_ndim`` axes are one problem, vmapped over the leading axes."""
    for _ in range(arrays[0].ndim - core_ndim):
        f = jax.vmap(f)
    return f(*arrays)


def lu_factor(a):
    """``jax.scipy.linalg.lu_factor(a)`` (``(lu, piv)``), one matrix per LAPACK call on CPU; no derivative."""
    a = jnp.asarray(a)
    if not sequential():
        return jsl.lu_factor(a)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise SemimechError(f"lu_factor: needs square matrices (..., n, n); got shape {a.shape}.")
    return _over_leading(_lu_factor_one, 2, jax.lax.stop_gradient(a))


def eigvals(a):
    """``jnp.linalg.eigvals(a)``, one matrix per LAPACK call on CPU; no derivative."""
    a = jnp.asarray(a)
    if not sequential():
        return jnp.linalg.eigvals(a)
    return _over_leading(_eigvals_one, 2, jax.lax.stop_gradient(a))


def _lu_matrix(lu, piv):
    """The matrix ``A`` whose factors are ``(lu, piv)`` (``A[perm] = L U``)."""
    n = lu.shape[-1]
    L = jnp.tril(lu, -1) + jnp.eye(n, dtype=lu.dtype)
    perm = jax.lax.linalg.lu_pivots_to_permutation(piv, n)
    return jnp.zeros_like(lu).at[perm].set(L @ jnp.triu(lu))


def _solve_one(lu, piv, b, matvec, trans: int):
    """``A^{-1} b`` (``A^{-T} b`` for ``trans=1``) for one matrix; ``matvec(x) = A x`` (``A^T x``)."""
    return jax.lax.custom_linear_solve(
        matvec, b,
        solve=lambda _, r: _lu_solve_one[trans](lu, piv, r),
        transpose_solve=lambda _, r: _lu_solve_one[1 - trans](lu, piv, r))


def _check_rhs(name, a_shape, b):
    n = a_shape[-1]
    if b.ndim not in (len(a_shape) - 1, len(a_shape)) or b.shape[:len(a_shape) - 2] != a_shape[:-2] \
            or b.shape[len(a_shape) - 2] != n:
        raise SemimechError(f"{name}: for matrices of shape {a_shape} the right-hand side must have shape "
                            f"{a_shape[:-1]} or {a_shape[:-1]} + (k,); got {b.shape}.")


def lu_solve(factors, b, trans: int = 0):
    """``jax.scipy.linalg.lu_solve(factors, b, trans=trans)``, one matrix per LAPACK call on CPU.

    ``factors`` from :func:`lu_factor` (constants: no derivative flows into them); ``b`` has the
    factors' leading axes, then ``n`` or ``(n, k)``. Differentiable in ``b``. ``trans`` is 0 or 1.
    """
    if trans not in (0, 1):
        raise SemimechError(f"lu_solve: trans must be 0 (A x = b) or 1 (A^T x = b); got {trans!r}.")
    lu, piv = factors
    b = jnp.asarray(b)
    if not sequential():
        return jsl.lu_solve((lu, piv), b, trans=trans)
    lu = jax.lax.stop_gradient(jnp.asarray(lu))
    _check_rhs("lu_solve", lu.shape, b)

    def one(lu, piv, b):
        A = _lu_matrix(lu, piv)
        return _solve_one(lu, piv, b, (lambda x: A.T @ x) if trans else (lambda x: A @ x), trans)

    return _over_leading(one, 2, lu, piv, b)


def dense_solve(a, b):
    """``jnp.linalg.solve(a, b)`` for ``b`` of shape ``a.shape[:-1]`` or ``a.shape[:-1] + (k,)``.

    One matrix per LAPACK call on CPU; differentiable in ``a`` and ``b`` (the LU of ``a`` is reused
    for the derivatives, as in ``jnp.linalg.solve``).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise SemimechError(f"dense_solve: needs square matrices (..., n, n); got shape {a.shape}.")
    _check_rhs("dense_solve", a.shape, b)
    if not sequential():
        return jnp.linalg.solve(a, b) if b.ndim == a.ndim else jnp.linalg.solve(a, b[..., None])[..., 0]

    def one(a, b):
        lu, piv = _lu_factor_one(jax.lax.stop_gradient(a))
        return _solve_one(lu, piv, b, lambda x: a @ x, 0)

    return _over_leading(one, 2, a, b)
