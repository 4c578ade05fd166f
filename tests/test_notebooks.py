"""Every notebook (jupytext percent-format ``notebooks/*.py``) runs top to bottom in smoke mode.

Each runs as its own subprocess with ``SEMIMECH_SMOKE=1`` (a few optimisation steps), from a
temporary working directory with ``TMPDIR`` pointing there, so anything a notebook writes lands
in the temporary directory and never in the repository.

Marked ``slow``: together the notebooks take several minutes on 2 cores (mostly JIT
compilation of each model), beyond the default suite's budget. Run with ``pytest -m slow
tests/test_notebooks.py``.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))
TIMEOUT_S = 600


def test_notebooks_are_found_and_are_jupytext_percent_files():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS
    for path in NOTEBOOKS:
        text = path.read_text()
        assert "# %%" in text, f"{path.name} is not a jupytext percent-format notebook (no '# %%' cells)"
        assert "SEMIMECH_SMOKE" in text, f"{path.name} ignores the smoke flag SEMIMECH_SMOKE"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    env = dict(os.environ, SEMIMECH_SMOKE="1", TMPDIR=str(tmp_path), MPLBACKEND="Agg")
    shared = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    if "SEMIMECH_SHARED_DATA" not in env and shared.is_dir():  # notebooks run outside the repository
        env["SEMIMECH_SHARED_DATA"] = str(shared)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"{path.name} failed after {elapsed:.0f}s:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print(f"{path.name}: {elapsed:.1f}s")
