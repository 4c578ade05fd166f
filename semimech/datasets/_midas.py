"""Readers for CellNOpt MIDAS tables and SIF prior-knowledge networks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from semimech.datasets._paths import DatasetFormatError, DatasetNotFoundError

MIDAS_COLUMNS: tuple[str, ...] = (
    "cell_line", "stimuli", "inhibitors", "time", "readout", "value", "row", "sample_id",
)  # fmt: skip
"""Columns of :func:`read_midas` output, in order."""

NONE_LABEL = "none"
_NA_STRINGS = ["", "NA", "NaN", "nan", "NAN"]
_NONE_MARKERS = {
    "NOCYTO", "NOLIG", "NOLIGAND", "NOSTIM", "NOSTIMULI", "NOSTIMULUS",
    "NOINHIB", "NOINH", "NOINHIBITOR", "NOINHIBITORS",
}  # fmt: skip
_KINDS = {
    "cellline": "cell_line", "celltype": "cell_line", "cell": "cell_line",
    "stimuli": "stimulus", "stimulus": "stimulus",
    "inhibitors": "inhibitor", "inhibitor": "inhibitor",
}  # fmt: skip


def _check_file(path: str | os.PathLike[str], what: str, hint: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetNotFoundError(f"{what}: {p} is not a file. Pass the path of {hint}.")
    return p


def _numeric(values: pd.Series, column: str, file: Path) -> np.ndarray:
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.any():
        raise DatasetFormatError(
            f"{file}: column {column!r} holds {values[bad].iloc[0]!r}, not a number "
            f"(blank, NA or NaN mark a missing value)."
        )
    return numeric.to_numpy(float)


def _classify_tr(column: str) -> tuple[str, str]:
    """Return (kind, name) of a ``TR:`` column: kind in cell_line/stimulus/inhibitor/none."""
    parts = column.split(":")
    name = parts[1].strip()
    if len(parts) >= 3:
        kind = _KINDS.get(parts[2].strip().lower().replace(" ", "").replace("_", ""))
        if kind is None:
            raise DatasetFormatError(
                f"MIDAS column {column!r}: unknown treatment type {parts[2]!r}; expected "
                "CellLine, Cell type, Stimuli or Inhibitors."
            )
    else:
        # CellNOpt convention: an untyped treatment ending in 'i' is an inhibitor
        kind = "inhibitor" if name.endswith("i") else "stimulus"
    if kind != "cell_line" and name.upper().replace("-", "").replace("_", "") in _NONE_MARKERS:
        kind = "none"
    return kind, name


def _indicator(values: pd.Series, column: str) -> np.ndarray | None:
    """0/1 indicator of a TR column (blank = 0), or None if it holds text (an ID column)."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().sum() > values.isna().sum():
        return None
    numeric = numeric.fillna(0.0)
    bad = ~numeric.isin([0.0, 1.0])
    if bad.any():
        raise DatasetFormatError(
            f"MIDAS column {column!r} holds {numeric[bad].iloc[0]!r}; treatment columns "
            "must be 1 (present) or 0/blank (absent)."
        )
    return numeric.to_numpy() == 1.0


def _join(names: list[str], on: np.ndarray) -> np.ndarray:
    """'+'-join, per row, the component names switched on (sorted, '/' splits combos)."""
    out = []
    for row in on:
        parts = {p.strip() for n, flag in zip(names, row) if flag for p in n.split("/")}
        out.append("+".join(sorted(parts, key=str.lower)) if parts else NONE_LABEL)
    return np.asarray(out, dtype=object)


def read_midas(path: str | os.PathLike[str], *, keep_missing: bool = False) -> pd.DataFrame:
    """Read a CellNOpt MIDAS csv into a tidy table, one row per sample x readout.

    Parameters
    ----------
    path
        A MIDAS ``.csv`` file, e.g. ``cellnopt_liver_phospho/HepG2CancerRes2011/
        MD-HepG2CancerRes2011.csv`` under :func:`shared_data_dir`.
    keep_missing
        Keep readouts whose value is blank (NaN); by default they are dropped.

    Returns
    -------
    DataFrame with columns :data:`MIDAS_COLUMNS`:

    - ``cell_line``: from ``TR:<name>:CellLine`` (or ``:Cell type``) columns; NA if none.
    - ``stimuli`` / ``inhibitors``: the treatments present, ``"+"``-joined in sorted
      order (a combined column such as ``TR:EGF/TGFa:Stimuli`` is split on ``"/"``);
      ``"none"`` when there are none. Untyped ``TR:<name>`` columns follow the CellNOpt
      rule: names ending in ``i`` are inhibitors, others stimuli. Explicit "nothing"
      markers (``NOCYTO``, ``NOINHIB``, ``NO-LIG``, ``NO-INHIB``) are not treatments.
    - ``time``: from ``DA:<readout>`` (or ``DA:ALL``), minutes.
    - ``readout``: the name after ``DV:``, verbatim (e.g. ``"AKT (75)"``).
    - ``value``: ``DV:<readout>`` (raw or 0-1 normalised, as in the file).
    - ``row``: 0-based row of the sample in the file (identifies replicates).
    - ``sample_id``: text of ``ID:`` columns, or of a ``TR:`` column holding text rather
      than 0/1 (the HepG2CancerRes2011 files keep well IDs in ``TR:primary:CellLine``);
      NA if none.

    Raises
    ------
    DatasetNotFoundError
        If ``path`` is not a file.
    DatasetFormatError
        If there are no ``DV:`` columns, a ``DV:`` readout lacks its ``DA:`` time, a
        sample has several cell lines, or a treatment cell is not 0/1/blank.
    """
    file = _check_file(path, "MIDAS", "a MIDAS .csv file")
    table = pd.read_csv(file, dtype=str, keep_default_na=False, na_filter=False)
    table = table.apply(lambda col: col.str.strip()).replace(_NA_STRINGS, np.nan)
    n = len(table)
    cols = [c.strip() for c in table.columns]
    table.columns = cols
    dv = [c for c in cols if c.startswith("DV:")]
    if not dv:
        raise DatasetFormatError(f"{file}: no 'DV:' (measured value) columns; is it MIDAS?")

    groups: dict[str, tuple[list[str], list[np.ndarray]]] = {
        k: ([], []) for k in ("cell_line", "stimulus", "inhibitor")
    }
    id_cols = [c for c in cols if c.startswith("ID:")]
    for c in (c for c in cols if c.startswith("TR:")):
        flag = _indicator(table[c], c)
        if flag is None:
            id_cols.append(c)
            continue
        kind, name = _classify_tr(c)
        if kind != "none":
            groups[kind][0].append(name)
            groups[kind][1].append(flag)

    def stacked(kind: str) -> tuple[list[str], np.ndarray]:
        names, flags = groups[kind]
        return names, (np.stack(flags, axis=1) if flags else np.zeros((n, 0), bool))

    cl_names, cl_on = stacked("cell_line")
    if (cl_on.sum(axis=1) > 1).any():
        bad = int(np.flatnonzero(cl_on.sum(axis=1) > 1)[0])
        raise DatasetFormatError(f"{file}: row {bad} names several cell lines.")
    cell_line = np.array(
        [cl_names[int(np.argmax(r))] if r.any() else None for r in cl_on], dtype=object
    )
    stimuli = _join(*stacked("stimulus"))
    inhibitors = _join(*stacked("inhibitor"))
    sample_id = (
        table[id_cols].astype("string").fillna("").agg(":".join, axis=1).to_numpy(object)
        if id_cols
        else np.full(n, None, dtype=object)
    )

    pieces = []
    for c in dv:
        readout = c[3:].strip()
        da = f"DA:{readout}" if f"DA:{readout}" in cols else "DA:ALL"
        if da not in cols:
            raise DatasetFormatError(f"{file}: readout {readout!r} has no '{da}' time column.")
        pieces.append(
            pd.DataFrame(
                {
                    "cell_line": cell_line,
                    "stimuli": stimuli,
                    "inhibitors": inhibitors,
                    "time": _numeric(table[da], da, file),
                    "readout": readout,
                    "value": _numeric(table[c], c, file),
                    "row": np.arange(n),
                    "sample_id": sample_id,
                }
            )
        )
    tidy = pd.concat(pieces, ignore_index=True).sort_values(["row"], kind="stable")
    if not keep_missing:
        tidy = tidy[tidy["value"].notna()]
    tidy = tidy.reset_index(drop=True)
    for c in ("cell_line", "stimuli", "inhibitors", "readout", "sample_id"):
        tidy[c] = tidy[c].astype("string")
    return tidy.loc[:, list(MIDAS_COLUMNS)]


def read_sif(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a SIF network (``source  sign  target [target ...]`` per line).

    Parameters
    ----------
    path
        A ``.sif`` file (tab- or space-separated), e.g. ``cellnopt_liver_phospho/
        LiverDREAM/PKN-LiverDREAM.sif``.

    Returns
    -------
    DataFrame with columns ``source`` (str), ``sign`` (int, +1 activation / -1
    inhibition) and ``target`` (str), one row per edge in file order; a line listing
    several targets gives one row each.

    Raises
    ------
    DatasetNotFoundError
        If ``path`` is not a file.
    DatasetFormatError
        If a line has fewer than three fields or its sign is not 1 or -1.
    """
    file = _check_file(path, "SIF", "a .sif network file")
    rows = []
    for lineno, line in enumerate(file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 3:
            raise DatasetFormatError(
                f"{file}:{lineno}: expected 'source sign target', got {line.strip()!r}."
            )
        if fields[1] not in ("1", "-1", "+1"):
            raise DatasetFormatError(
                f"{file}:{lineno}: sign {fields[1]!r} is not 1 or -1."
            )
        rows.extend((fields[0], int(fields[1]), t) for t in fields[2:])
    frame = pd.DataFrame(rows, columns=["source", "sign", "target"])
    return frame.astype({"source": "string", "sign": "int64", "target": "string"})
