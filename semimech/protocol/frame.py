"""Read per-sample protocols from table columns, grouped for vectorised integration.

Each row of a sample table (one cell or one well) is one experiment on one clock:

- the perturbation happens at time ``perturbation_time`` (0 unless ``perturbation_time_key``);
- the media change, if ``media_key`` is given, happens at ``media_time`` (0 unless
  ``media_time_key``, or derived from ``order_key`` and ``lag``);
- the measurement happens at ``df[time_key]``. With the default perturbation time 0 this is the
  **time since perturbation**.

The row becomes ``first event >> Evolve(gap) >> second event >> Evolve(until measurement) >>
Measure()``, with the events sorted by time (ties: the declared order, else media first; an
``Evolve(0)`` between simultaneous events is an exact identity). With ``start_time`` the initial
state is placed at that clock time and a leading ``Evolve`` runs up to the first event (for
differentiating systems, where waiting is not a no-op). Controls are rows whose perturbation label
maps to the identity edit, so they share structure, and are vectorised, with perturbed rows.

Rows with identical protocols are solved once: :class:`Protocols` holds the unique protocols,
grouped by operator structure, and ``row_protocol`` maps every row to its unique protocol.
Batches are left to the measurement model (they do not change the dynamics). Turning the
encoding into experiments and running them: :mod:`semimech.protocol.groups`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from semimech.errors import DesignError

__all__ = ["ORDERS", "ProtocolGroup", "Protocols", "protocols_from_frame"]

ORDERS = ("perturb_then_media", "media_then_perturb", "simultaneous")


class ProtocolGroup(NamedTuple):
    """Unique protocols sharing one operator structure (a block that ``jax.vmap`` can run).

    Attributes
    ----------
    structure
        Operator kinds in time order, e.g. ``("Media", "Evolve", "Perturb", "Evolve", "Measure")``.
    perturbation_index
        ``Int[ndarray, "k"]`` into ``Protocols.perturbation_labels``.
    media_index
        ``Int[ndarray, "k"]`` into ``Protocols.media_labels``, or None without media.
    durations
        ``Float[ndarray, "k evolves"]``, the Evolve durations in structure order (clock units).
    """

    structure: tuple[str, ...]
    perturbation_index: np.ndarray
    media_index: np.ndarray | None
    durations: np.ndarray


class Protocols(NamedTuple):
    """Compact encoding of a table's protocols (see :func:`protocols_from_frame`).

    Attributes
    ----------
    groups
        The unique protocols, by structure.
    row_protocol
        ``Int[ndarray, "rows"]``: row i's protocol is number ``row_protocol[i]`` in the
        concatenation of the groups (the order of :func:`run_protocols`' output).
    perturbation_labels
        Perturbation labels (control first when ``control`` was given).
    media_labels
        Media labels (sorted), or None.
    obs_names
        The table's index, as strings.
    """

    groups: tuple[ProtocolGroup, ...]
    row_protocol: np.ndarray
    perturbation_labels: tuple[str, ...]
    media_labels: tuple[str, ...] | None
    obs_names: tuple[str, ...]


def _column(df: pd.DataFrame, key: str, what: str) -> pd.Series:
    if key not in df.columns:
        raise DesignError(f"{what} column {key!r} is not in the table; columns are {list(df.columns)}.")
    return df[key]


def _rows(df, mask, limit=5) -> str:
    names = [str(i) for i in df.index[np.asarray(mask)][:limit]]
    more = int(np.sum(mask)) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _times(df, key: str, what: str) -> np.ndarray:
    col = _column(df, key, what)
    t = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(t)
    if bad.any():
        raise DesignError(
            f"{what} column {key!r} has missing or non-numeric values in rows {_rows(df, bad)}; "
            "give every sample a finite time (in the vector field's time units)."
        )
    return t


def _codes(values: pd.Series, *, first=None) -> tuple[np.ndarray, tuple[str, ...]]:
    if values.isna().any():
        raise DesignError(f"column {values.name!r} has missing labels; label every row.")
    labels = sorted({str(v) for v in values})
    if first is not None:
        if str(first) not in labels:
            raise DesignError(f"control label {first!r} not found in column {values.name!r}; labels are {labels[:10]}.")
        labels.remove(str(first))
        labels.insert(0, str(first))
    lookup = {lab: i for i, lab in enumerate(labels)}
    return np.array([lookup[str(v)] for v in values], dtype=np.int32), tuple(labels)


def protocols_from_frame(
    df: pd.DataFrame,
    *,
    time_key: str,
    perturbation_key: str,
    media_key: str | None = None,
    perturbation_time_key: str | None = None,
    media_time_key: str | None = None,
    order_key: str | None = None,
    lag: float | str | None = None,
    start_time: float | None = None,
    control: str | None = None,
) -> Protocols:
    """Turn per-sample columns into grouped, deduplicated protocols.

    Parameters
    ----------
    df
        One row per sample (cell or well); not modified.
    time_key
        Measurement time; with no ``perturbation_time_key`` it is the time since perturbation.
        Must be >= 0.
    perturbation_key
        Perturbation label (the control label included: it should map to the identity edit).
    media_key
        Medium / stimulus label applied at the media time; None for no media change.
    perturbation_time_key
        Column of perturbation onset times on the measurement clock (default: all 0).
    media_time_key
        Column of media-change times on the same clock (negative = before the perturbation).
    order_key
        Column of ``"perturb_then_media"``, ``"media_then_perturb"`` or ``"simultaneous"``.
        With ``lag`` it places the media change ``lag`` after / before / at the perturbation;
        with ``media_time_key`` it is checked against the times.
    lag
        Time between the two events for ``order_key``: a number or a column name.
    start_time
        Clock time of the initial state; adds a leading ``Evolve`` up to the first event.
    control
        Control perturbation label, put first in ``perturbation_labels``.

    Raises
    ------
    DesignError
        Missing columns or labels; non-finite or negative measurement times; a perturbation or media
        change after the measurement; an event before ``start_time``; an order contradicting the
        times; an unknown order label.
    """
    if not isinstance(df, pd.DataFrame):
        raise DesignError(f"protocols_from_frame needs a pandas DataFrame, got {type(df).__name__}.")
    if len(df) == 0:
        raise DesignError("protocols_from_frame got an empty table.")
    t_meas = _times(df, time_key, "Measurement time")
    if (t_meas < 0).any():
        raise DesignError(
            f"Negative measurement times in {time_key!r} (rows {_rows(df, t_meas < 0)}); times are measured "
            "from the perturbation (or from perturbation_time_key's clock) and must be >= 0. Samples "
            "taken before any perturbation are controls: label them with the control perturbation."
        )
    pert_idx, pert_labels = _codes(_column(df, perturbation_key, "Perturbation"), first=control)
    t_pert = np.zeros(len(df)) if perturbation_time_key is None else _times(df, perturbation_time_key, "Perturbation time")
    late = t_pert > t_meas
    if late.any():
        raise DesignError(
            f"Perturbation scheduled after the measurement in rows {_rows(df, late)}: "
            f"{perturbation_time_key!r} > {time_key!r}. A sample measured before its perturbation is a "
            "control; fix the times or relabel those rows."
        )

    media_idx = media_labels = t_media = None
    if media_key is None:
        if media_time_key is not None or order_key is not None:
            raise DesignError("media_time_key / order_key describe a media change; pass media_key= as well.")
    else:
        media_idx, media_labels = _codes(_column(df, media_key, "Media"))
        t_media = _media_times(df, t_pert, media_time_key=media_time_key, order_key=order_key, lag=lag)
        late = t_media > t_meas
        if late.any():
            raise DesignError(
                f"Media change scheduled after the measurement in rows {_rows(df, late)}; a change after "
                "the sample was taken cannot affect it: fix the times or drop the media column for them."
            )

    # Event order per row: 0 = media first (also on ties, unless declared otherwise), 1 = perturbation first.
    if t_media is None:
        pert_first = np.ones(len(df), dtype=bool)
    else:
        pert_first = t_pert < t_media
        if order_key is not None:
            ties = t_pert == t_media
            declared = df[order_key].astype(str).str.lower().to_numpy()
            pert_first = pert_first | (ties & (declared == "perturb_then_media"))

    if start_time is not None:
        first_time = t_pert if t_media is None else np.minimum(t_pert, t_media)
        early = first_time < start_time
        if early.any():
            raise DesignError(
                f"Events before start_time={start_time} in rows {_rows(df, early)}; start_time is the clock "
                "time of the initial state, so it must not be later than any perturbation or media change."
            )

    durations = _durations(t_meas, t_pert, t_media, pert_first, start_time)
    # Deduplicate: a protocol is (event order, perturbation, media, durations). np.unique sorts rows
    # lexicographically, so the media-first protocols come before the perturbation-first ones.
    keys = np.column_stack(
        [pert_first.astype(float), pert_idx.astype(float)]
        + ([media_idx.astype(float)] if media_idx is not None else [])
        + [durations]
    )
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    groups = []
    for pf in (False, True):
        block = unique[unique[:, 0] == float(pf)]
        if len(block) == 0:
            continue
        groups.append(
            ProtocolGroup(
                structure=_structure(has_media=media_key is not None, pert_first=pf, lead=start_time is not None),
                perturbation_index=block[:, 1].astype(np.int32),
                media_index=block[:, 2].astype(np.int32) if media_idx is not None else None,
                durations=block[:, -durations.shape[1] :].astype(float),
            )
        )
    return Protocols(
        groups=tuple(groups),
        row_protocol=np.asarray(inverse).reshape(-1).astype(np.int32),
        perturbation_labels=pert_labels,
        media_labels=media_labels,
        obs_names=tuple(str(i) for i in df.index),
    )


def _media_times(df, t_pert, *, media_time_key, order_key, lag) -> np.ndarray:
    declared = None
    if order_key is not None:
        declared = _column(df, order_key, "Order").astype(str).str.lower().to_numpy()
        unknown = ~np.isin(declared, ORDERS)
        if unknown.any():
            raise DesignError(
                f"Unknown order labels {sorted(set(declared[unknown]))[:5]} in {order_key!r}; use one of {ORDERS}."
            )
    if media_time_key is not None:
        t_media = _times(df, media_time_key, "Media time")
        if declared is not None:
            wrong = (
                ((declared == "perturb_then_media") & ~(t_pert < t_media))
                | ((declared == "media_then_perturb") & ~(t_media < t_pert))
                | ((declared == "simultaneous") & (t_media != t_pert))
            )
            if wrong.any():
                raise DesignError(
                    f"Event times out of order in rows {_rows(df, wrong)}: {order_key!r} declares an order that "
                    f"{media_time_key!r} and the perturbation times contradict; fix one of them."
                )
        return t_media
    if declared is None:
        return np.zeros(len(df))
    if lag is None:
        raise DesignError(
            f"order_key={order_key!r} needs the time between the two events: pass lag= (a number or a column "
            "name), or give the media times with media_time_key=."
        )
    gap = np.full(len(df), float(lag)) if not isinstance(lag, str) else _times(df, lag, "Lag")
    if (gap < 0).any():
        raise DesignError(f"Negative lag in rows {_rows(df, gap < 0)}; the order column gives the direction, lag the size.")
    sign = np.select([declared == "perturb_then_media", declared == "media_then_perturb"], [1.0, -1.0], 0.0)
    return t_pert + sign * gap


def _structure(*, has_media: bool, pert_first: bool, lead: bool) -> tuple[str, ...]:
    events = ["Perturb"] if not has_media else (["Perturb", "Media"] if pert_first else ["Media", "Perturb"])
    ops = ["Evolve"] if lead else []
    for ev in events:
        ops += [ev, "Evolve"]
    return tuple(ops + ["Measure"])


def _durations(t_meas, t_pert, t_media, pert_first, start_time) -> np.ndarray:
    if t_media is None:
        times = [t_pert]
    else:
        times = [np.where(pert_first, t_pert, t_media), np.where(pert_first, t_media, t_pert)]
    cols = [times[0] - start_time] if start_time is not None else []
    for a, b in zip(times, times[1:] + [t_meas]):
        cols.append(b - a)
    return np.column_stack(cols)
