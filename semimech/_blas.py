"""One BLAS thread while semimech's compiled programs run.

On CPU, jax's ``lu_factor`` / ``solve`` / ``cholesky`` call LAPACK through the OpenBLAS that scipy
ships, and OpenBLAS spreads every call over its own threads. The matrices of semimech's models are
small (tens to a few hundred genes) and XLA already runs them from its own worker threads, so the
hand-offs cost more than the work: measured on Norman's linear steady state, 40 ms against 2.5 ms of
CPU per SVI step on busy cores, and a 5-fold cross-validation 367 against 57 CPU-s with the same
numbers to the digit (``benchmarks/RESULTS_compare.md``). Threaded OpenBLAS called from several threads
at once is also the known cause of hangs (OpenMathLib/OpenBLAS#660).

So the fitting, prediction and cross-validation entry points run with the BLAS pools limited to
``SEMIMECH_BLAS_THREADS`` threads (default 1) and restore the caller's setting on return. Set
``SEMIMECH_BLAS_THREADS=0`` to leave BLAS threads alone.
"""

from __future__ import annotations

import contextlib
import os

from threadpoolctl import threadpool_limits

from semimech.errors import SemimechError

ENV = "SEMIMECH_BLAS_THREADS"


def blas_threads() -> int | None:
    """The BLAS thread limit for semimech's work: an int, or None to leave BLAS alone."""
    raw = os.environ.get(ENV, "1").strip()
    try:
        n = int(raw)
    except ValueError:
        raise SemimechError(f"{ENV}={raw!r} is not a whole number; set it to the number of BLAS threads "
                          "(default 1), or 0 to leave BLAS threads alone") from None
    if n < 0:
        raise SemimechError(f"{ENV}={n} is negative; use 0 to leave BLAS threads alone, or a positive count")
    return n or None


@contextlib.contextmanager
def limited_blas():
    """Context manager and decorator: BLAS pools limited to :func:`blas_threads` inside.

    Nested uses are cheap and restore in order; the limit covers every thread (OpenBLAS's setting is
    process-wide), including XLA's workers that call LAPACK.
    """
    n = blas_threads()
    if n is None:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield
