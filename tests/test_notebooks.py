"""Every notebook (jupytext percent-format ``notebooks/*.py``) runs top to bottom in smoke mode.

Each runs as its own subprocess with ``SEMIMECH_SMOKE=1`` (a few optimisation steps), from a
temporary working directory with ``TMPDIR`` pointing there, so anything a notebook writes lands
in the temporary directory and never in the repository.

A notebook that reads the shared third-party data (users of the repository do not have it)
says so with the line ``# requires: shared third-party data``; it is then a ``needs_shared``
test and skips when the data are unreachable (``tests/conftest.py``).

Marked ``slow``: together the notebooks take several minutes on 2 cores (mostly JIT
compilation of each model), beyond the default suite's budget. Run with ``pytest -m slow
tests/test_notebooks.py``.
"""

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))
TIMEOUT_S = 600
REQUIRES_SHARED = "# requires: shared third-party data"
# what reads the shared data folder: a reader with no path, the folder itself, or a path to it
_READS_SHARED = re.compile(r"\b(read_(sachs2005|sachs2005_graph|papalexi2021|midas|sif)\(\s*\)|shared_data_dir\()"
                           r"|SEMIMECH_SHARED_DATA|\.\./shared|/work/shared")


def _needs_shared(path: pathlib.Path) -> bool:
    return REQUIRES_SHARED in path.read_text()


def test_notebooks_that_read_the_shared_data_declare_it():
    for path in NOTEBOOKS:
        reads = _READS_SHARED.search(path.read_text())
        assert not reads or _needs_shared(path), (
            f"{path.name} calls {reads.group(0)!r} but lacks the line {REQUIRES_SHARED!r}: users without "
            "the shared data would see the notebook test fail instead of skip")
    assert _READS_SHARED.search("adata = read_papalexi2021()") and not _READS_SHARED.search("read_midas(path)")
    assert _READS_SHARED.search('read_sif(shared_data_dir() / "x.sif")') and _READS_SHARED.search('"../shared/data/x"')


def test_notebooks_are_found_and_are_jupytext_percent_files():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS
    for path in NOTEBOOKS:
        text = path.read_text()
        assert "# %%" in text, f"{path.name} is not a jupytext percent-format notebook (no '# %%' cells)"
        assert "SEMIMECH_SMOKE" in text, f"{path.name} ignores the smoke flag SEMIMECH_SMOKE"


@pytest.mark.slow
@pytest.mark.parametrize("path", [pytest.param(p, marks=[pytest.mark.needs_shared] if _needs_shared(p) else [])
                                  for p in NOTEBOOKS], ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    env = dict(os.environ, SEMIMECH_SMOKE="1", TMPDIR=str(tmp_path), MPLBACKEND="Agg",
               SEMIMECH_FIGURES=str(tmp_path / "figures"))
    if _needs_shared(path):  # notebooks run outside the repository: tell them where the data are
        from semimech.datasets import shared_data_dir

        env.setdefault("SEMIMECH_SHARED_DATA", str(shared_data_dir()))  # reachable: the marker checked it
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"{path.name} failed after {elapsed:.0f}s:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print(f"{path.name}: {elapsed:.1f}s")
