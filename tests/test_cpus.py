"""semimech.infer.use_cpus: the process runs on the cores asked for, and refuses once JAX's backend is running.

Each check runs in a fresh interpreter (the backend of the test process may already be running, and
pinning it would slow the rest of the run). A few seconds each (JAX import).
"""

import os
import subprocess
import sys

import pytest

from semimech.errors import InferenceError
from semimech.infer import use_cpus

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")

PINNED = """
import os, threading
from semimech.infer import use_cpus
before = set(os.listdir('/proc/self/task'))  # e.g. BLAS threads started by the numpy import keep their cores
got = use_cpus(1)
import jax, jax.numpy as jnp
x = jax.jit(lambda a: (a @ a.T).sum())(jnp.ones((64, 64)))
tasks = [int(t) for t in set(os.listdir('/proc/self/task')) - before]
per_thread = {len(os.sched_getaffinity(t)) for t in tasks}
print(len(got), float(x), sorted(per_thread), len(tasks))
"""

LATE = """
import jax
jax.devices()
from semimech.infer import use_cpus
from semimech.errors import InferenceError
import os
before = os.sched_getaffinity(0)
try:
    use_cpus(1)
    print("no error")
except InferenceError as err:
    print("refused", "before the first" in str(err), os.sched_getaffinity(0) == before)
"""


def _run(script):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_use_cpus_pins_the_process_and_the_threads_jax_starts_later():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core only: pinning to one cannot be told apart from not pinning")
    out = _run(PINNED)
    assert out[0] == "1" and float(out[1]) == 64.0 * 64 * 64
    assert out[2] == "[1]", f"every thread started after the call (JAX's workers) on one core: {out}"
    assert int(out[3]) >= 1


def test_use_cpus_refuses_once_the_backend_runs_and_changes_nothing():
    # negative control: after jax.devices() the worker threads exist; pinning now would pin only the caller
    assert _run(LATE) == ["refused", "True", "True"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_use_cpus_rejects_a_bad_count(bad):
    with pytest.raises(InferenceError, match="positive integer"):
        use_cpus(bad)
