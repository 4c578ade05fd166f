"""Run JAX's CPU work on a few cores: the lever for small programs on a shared or small machine.

XLA's CPU runtime spreads the operations of one program over a pool of worker threads sized by
the cores the process may use. semimech's programs are many small operations (an SVI step of a
steady-state model on ~100 genes is ~1.6 ms of work); on a machine whose cores are busy with other
processes, handing each of them between threads costs far more than the work. Measured on the
Norman training design (``linear_steady_state``, 2,000 SVI steps, seed 0, 2 cores at load 8-9,
``benchmarks/RESULTS_compare.md``): 40 ms of CPU per step with the default pool, 1.6 ms pinned to
one core — the same losses to the last digit. ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` does
not change it (41 ms); only the cores the process may use do.

:func:`use_cpus` restricts this process to ``n`` cores. It must run before JAX starts its CPU
backend (the first array, fit or ``jax.devices()``): threads that already exist keep their cores.
From a shell, ``taskset -c 0 python script.py`` does the same.
"""

from __future__ import annotations

import os

from semimech.errors import InferenceError


def use_cpus(n: int = 1) -> frozenset[int]:
    """Restrict this process (and the threads it starts later) to ``n`` of its allowed cores.

    Parameters
    ----------
    n
        Number of cores, at least 1 (the first ``n`` of those the process may use now; all of
        them if it may use fewer).

    Returns
    -------
    The cores the process may use afterwards.

    Raises
    ------
    InferenceError
        If JAX's CPU backend is already running (call this first, before any JAX computation),
        or the platform cannot set CPU affinity (use ``taskset``/``start /affinity`` instead).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InferenceError(f"use_cpus: n must be a positive integer (number of cores); got {n!r}.")
    if not hasattr(os, "sched_setaffinity"):
        raise InferenceError("use_cpus: this platform cannot restrict a process's cores from Python; start it "
                             "under the system's tool instead (e.g. `taskset -c 0 python script.py` on Linux).")
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise InferenceError("use_cpus: JAX's backend is already running, so its worker threads keep the cores "
                             "they have. Call semimech.infer.use_cpus(...) before the first fit or JAX computation "
                             "(right after the imports), or start Python under `taskset -c 0`.")
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:n])
    return frozenset(os.sched_getaffinity(0))


__all__ = ["use_cpus"]
