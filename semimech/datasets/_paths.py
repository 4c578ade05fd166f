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


def _candidates() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        found.append((f"${ENV_VAR}", Path(env).expanduser()))
    found.append(("../shared/data from the working directory", Path.cwd().parent / "shared" / "data"))
    repo_root = Path(__file__).resolve().parents[2]
    found.append(("../shared/data next to the repository", repo_root.parent / "shared" / "data"))
    return found


def shared_data_dir() -> Path:
    """Return the folder that holds the offline copies of the shared datasets.

    Looked for, in order: the environment variable ``SEMIMECH_SHARED_DATA``;
    ``../shared/data`` relative to the current working directory; ``../shared/data``
    next to the repository that holds this package (editable installs).

    Returns
    -------
    Absolute path of the first candidate that is an existing folder.

    Raises
    ------
    DatasetNotFoundError
        If ``SEMIMECH_SHARED_DATA`` is set but is not a folder, or no candidate exists.
    """
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
    raise DatasetNotFoundError(
        "Shared data folder not found; tried: "
        + "; ".join(tried)
        + f". Set the environment variable {ENV_VAR} to the folder holding the datasets, "
        "or pass an explicit path to the reader."
    )


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
