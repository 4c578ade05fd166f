"""Locating the offline copies of third-party datasets, and the errors raised when absent."""

from __future__ import annotations

import os
from pathlib import Path

from semimech.errors import SemimechError

ENV_VAR = "SEMIMECH_SHARED_DATA"


class DatasetNotFoundError(SemimechError, FileNotFoundError):
    """A dataset file or folder is not where it was looked for."""


class DatasetFormatError(SemimechError):
    """A dataset file exists but does not have the expected layout."""


NO_SHARED_ENV_VAR = "SEMIMECH_NO_SHARED_DATA"

#: Where the third-party datasets read by :mod:`semimech.datasets` come from (folder -> origin).
#: None of them is shipped with semimech (licences, size); hold your own copy and point
#: ``SEMIMECH_SHARED_DATA`` at the folder that contains these sub-folders.
SOURCES = {
    "sachs2005": "Sachs et al., Science 308:523 (2005); github.com/cmu-phil/example-causal-datasets real/sachs (CC0)",
    "cellnopt_liver_phospho": "CellNOpt MIDAS/SIF files, github.com/cellnopt/cellnopt cno/datasets (BSD-2); "
                              "Saez-Rodriguez et al. MSB 2009, Cancer Res 2011",
    "papalexi2021_sceptre_subset": "Papalexi et al., Nat Genet 53:322 (2021), as the sceptre R package's "
                                   "data/lowmoi_example_data.rda at commit 823bcda (GPL-3)",
    "perturbench_devel_norman19_mcfaline23": "PerturBench devel.h5ad, github.com/altoslabs/perturbench (BSD-3); "
                                             "Norman et al. 2019, McFaline-Figueroa et al. 2024",
}


def _source_checkout_root() -> Path | None:
    """The repository holding this package when it is imported from a source checkout, else None.

    An installed (non-editable) copy lives in ``site-packages``: its parents are the virtual
    environment's ``lib/pythonX.Y``, never a place to look for data.
    """
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "semimech" / "datasets").is_dir() else None


def _candidates() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        found.append((f"${ENV_VAR}", Path(env).expanduser()))
    found.append(("../shared/data from the working directory", Path.cwd().parent / "shared" / "data"))
    repo_root = _source_checkout_root()
    if repo_root is not None:
        found.append(("../shared/data next to the source checkout", repo_root.parent / "shared" / "data"))
    return found


def _where_from() -> str:
    return ("These are third-party datasets that semimech does not ship (see semimech.datasets.SOURCES): "
            + "; ".join(f"{folder}/: {origin}" for folder, origin in SOURCES.items())
            + f". Download the ones you need from their sources, keep them in one folder with these "
              f"sub-folder names, and set {ENV_VAR} to that folder (or pass an explicit path to the reader).")


def shared_data_dir() -> Path:
    """Return the folder that holds your offline copies of the third-party datasets.

    semimech ships one small dataset (:func:`~semimech.datasets.norman19_devel`); the readers
    of the others (:data:`SOURCES` says where each comes from) look, in order, in: the
    environment variable ``SEMIMECH_SHARED_DATA``; ``../shared/data`` relative to the current
    working directory; ``../shared/data`` next to the source checkout that holds this package
    (only when semimech is imported from a checkout, e.g. an editable install).
    ``SEMIMECH_NO_SHARED_DATA=1`` makes the folder unreachable (what a user without the data
    sees; the test suite runs once this way).

    Returns
    -------
    Absolute path of the first candidate that is an existing folder.

    Raises
    ------
    DatasetNotFoundError
        If ``SEMIMECH_NO_SHARED_DATA=1``, if ``SEMIMECH_SHARED_DATA`` is set but is not a
        folder, or if no candidate exists; the message says where the data come from.
    """
    if os.environ.get(NO_SHARED_ENV_VAR, "") not in ("", "0"):
        raise DatasetNotFoundError(
            f"The shared data folder is switched off ({NO_SHARED_ENV_VAR}={os.environ[NO_SHARED_ENV_VAR]!r}); "
            f"unset {NO_SHARED_ENV_VAR} to use it. " + _where_from()
        )
    env = os.environ.get(ENV_VAR)
    if env and not Path(env).expanduser().is_dir():
        raise DatasetNotFoundError(
            f"{ENV_VAR}={env!r} is not a folder. Point it at the folder that holds "
            "'sachs2005/', 'cellnopt_liver_phospho/', ... or unset it."
        )
    tried = []
    for label, path in _candidates():
        if path.is_dir():
            return path.resolve()
        tried.append(f"{path} ({label})")
    raise DatasetNotFoundError("Shared data folder not found; tried: " + "; ".join(tried) + ". " + _where_from())


def resolve(path: str | os.PathLike[str] | None, *, folder: str, filename: str, what: str) -> Path:
    """Resolve a user path (None, a folder or a file) to an existing data file.

    ``None`` means ``shared_data_dir() / folder / filename``; a folder means
    ``folder_given / filename`` (or ``folder_given / folder / filename``).
    """
    if path is None:
        path = shared_data_dir() / folder
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / filename, p / folder / filename):
            if candidate.is_file():
                return candidate
        raise DatasetNotFoundError(
            f"{what}: folder {p} has no {filename!r}. Pass the path of the file itself, "
            f"or the folder that contains it."
        )
    if not p.is_file():
        raise DatasetNotFoundError(
            f"{what}: {p} does not exist. Pass the path of {filename!r} (or its folder), "
            f"or set {ENV_VAR} to the shared data folder and pass nothing."
        )
    return p
