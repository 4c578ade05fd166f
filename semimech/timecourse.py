"""Time-course designs: samples observed at times after a perturbation (FRAMEWORK.md section 2).

A :class:`TimeCourseDesign` is the arrays-only record a time-course model sees: one row per
sample (a well, a pseudobulk or a cell), its condition, its measurement time, and per-condition
covariates (stimulus / medium indicators and perturbation indicators) that enter a learned
vector field ``f(x; u)``. Build one with :func:`time_course_design` (arrays) or
:func:`design_from_midas` (CellNOpt MIDAS tables, :func:`semimech.datasets.read_midas`).

The clock starts at ``0``: the perturbation (and, for a differentiating system, the cue) is
applied at ``onset`` (default ``0``), and every sample's ``time`` is its measurement time on
that clock. Validation happens here, once: negative or non-finite times, a perturbation
scheduled after a condition's measurement time, and a differentiating design whose perturbed
samples have no control measured at the same time (time-matched controls, FRAMEWORK.md
section 6) are :class:`~semimech.errors.DesignError`.

The steady-state loss needs *baseline* states and the covariates under which they are fixed
points: by default every control sample with the control's covariates (a non-differentiating
system: controls sit at a fixed point at all times); for a differentiating system only the
control samples at time 0 with the ``maintenance`` covariates (the pre-cue state, the only
fixed point the design shows).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from semimech.data._validate import row_positions
from semimech.errors import DesignError

__all__ = ["TimeCourseDesign", "check_time_grid", "design_from_midas", "solve_conditions", "time_course_design",
           "time_matched_effects"]


@dataclasses.dataclass(frozen=True, eq=False)
class TimeCourseDesign:
    """Samples at measurement times under per-condition covariates.

    Attributes
    ----------
    y
        ``Float[ndarray, "samples readouts"]`` or None (a prediction design); NaN marks a
        readout not measured in that sample (e.g. an inhibitor's own target).
    time
        ``Float[ndarray, "samples"]``, measurement time of each sample (h).
    condition_index
        ``Int[ndarray, "samples"]`` into ``conditions``.
    conditions
        Condition labels, the control first.
    covariates
        ``Float[ndarray, "conditions covariates"]``, the field's inputs ``u`` after onset.
    covariate_names, readouts
        Labels of the covariates and of the state variables (readouts).
    x0
        ``Float[ndarray, "conditions readouts"]``: known initial states (the mean of each
        condition's time-0 samples, else the control's), or None when none were measured.
    onset
        ``Float[ndarray, "conditions"]``, when the covariates switch on (h); before it the
        condition follows the control's covariates.
    differentiating
        Whether controls move with time (a cue at time 0): comparisons then need
        time-matched controls and the steady-state baseline is the pre-cue state only.
    baseline_x, baseline_covariates
        States assumed to be fixed points, and the covariates under which they are
        (``Float[ndarray, "baseline readouts"]``, ``Float[ndarray, "baseline covariates"]``).
    """

    y: np.ndarray | None
    time: np.ndarray
    condition_index: np.ndarray
    conditions: tuple[str, ...]
    covariates: np.ndarray
    covariate_names: tuple[str, ...]
    readouts: tuple[str, ...]
    x0: np.ndarray | None
    onset: np.ndarray
    differentiating: bool
    baseline_x: np.ndarray
    baseline_covariates: np.ndarray

    @property
    def times(self) -> np.ndarray:
        """Sorted unique measurement times (the integration save grid)."""
        return np.unique(self.time)

    @property
    def time_index(self) -> np.ndarray:
        """Each sample's position in :attr:`times`."""
        return np.searchsorted(self.times, self.time)

    @property
    def n_readouts(self) -> int:
        return len(self.readouts)

    def model_data(self) -> dict:
        """The arrays-only view a model sees (numpy, float32 where floating)."""
        f = lambda a: None if a is None else np.asarray(a, dtype=np.float32)  # noqa: E731
        return {
            "times": f(self.times),
            "time_index": np.asarray(self.time_index),
            "condition_index": np.asarray(self.condition_index),
            "covariates": f(self.covariates),
            "x0": f(self.x0),
            "onset": f(self.onset),
            "baseline_x": f(self.baseline_x),
            "baseline_covariates": f(self.baseline_covariates),
            "n_readouts": self.n_readouts,
            "n_obs": int(self.time.shape[0]),
            "mask": None if self.y is None else ~np.isnan(self.y),
        }

    def subset(self, rows) -> "TimeCourseDesign":
        """Samples selected by a boolean mask (one entry per sample) or integer positions; conditions,
        covariates and baselines are kept. A mask of another length or a position out of range is a
        :class:`~semimech.errors.DesignError`."""
        rows = row_positions(rows, int(self.time.shape[0]), what="sample")
        return dataclasses.replace(
            self, y=None if self.y is None else self.y[rows], time=self.time[rows],
            condition_index=self.condition_index[rows],
        )

    def conditions_mask(self, labels) -> np.ndarray:
        """Boolean sample mask of the conditions named in ``labels``."""
        unknown = sorted(set(labels) - set(self.conditions))
        if unknown:
            raise DesignError(f"unknown conditions {unknown[:5]}; known: {list(self.conditions)[:8]}...")
        codes = [self.conditions.index(c) for c in labels]
        return np.isin(self.condition_index, codes)


def check_time_grid(times, *, name: str = "times") -> np.ndarray:
    """A 1-d, finite, non-negative, strictly increasing time grid, or a :class:`DesignError`."""
    t = np.asarray(times, dtype=float)
    if t.ndim != 1 or t.size == 0:
        raise DesignError(f"{name} must be a non-empty 1-d array of times (h); got shape {t.shape}.")
    if not np.all(np.isfinite(t)):
        raise DesignError(f"{name} has non-finite entries; replace NaN/inf by measurement times.")
    if np.any(t < 0):
        raise DesignError(
            f"{name} has negative entries ({t[t < 0][:3].tolist()}); times are measured from the "
            "perturbation/cue at 0: shift your clock so that it starts at 0."
        )
    if np.any(np.diff(t) <= 0):
        raise DesignError(f"{name} must be strictly increasing; got {t.tolist()[:8]}. Sort them (np.unique).")
    return t


def _check_sample_times(time: np.ndarray) -> None:
    if time.ndim != 1 or not np.all(np.isfinite(time)):
        raise DesignError("time must be a 1-d array of finite measurement times (h), one per sample.")
    if np.any(time < 0):
        raise DesignError(
            f"time has negative entries ({np.unique(time[time < 0])[:3].tolist()}); times are measured "
            "from the perturbation/cue at 0: shift your clock so that it starts at 0."
        )


def _encode(condition, control):
    condition = np.asarray(condition).astype(str)
    labels = list(dict.fromkeys(condition.tolist()))
    if control not in labels:
        raise DesignError(f"control {control!r} is not among the conditions {labels[:8]}; name the unperturbed condition.")
    labels.remove(control)
    labels = (control, *labels)
    return labels, np.array([labels.index(c) for c in condition])


def _initial_states(y, time, cidx, n_cond, differentiating):
    if y is None:
        return None
    x0 = np.full((n_cond, y.shape[1]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: unmeasured, filled below
        for c in range(n_cond):
            rows = (cidx == c) & (time == 0)
            if rows.any():
                x0[c] = np.nanmean(y[rows], 0)
        if np.isnan(x0[0]).all():
            if differentiating:
                return None  # no pre-cue measurement: the initial state must be latent
            x0[0] = np.nanmean(y[cidx == 0], 0)  # non-differentiating: controls sit at the fixed point
    if np.isnan(x0[0]).any():
        return None
    x0 = np.where(np.isnan(x0), x0[0], x0)
    return x0


def time_course_design(
    y,
    *,
    time,
    condition,
    covariates,
    control: str,
    readouts=None,
    covariate_names=None,
    onset=None,
    differentiating: bool = False,
    maintenance=None,
) -> TimeCourseDesign:
    """Build and validate a :class:`TimeCourseDesign` from arrays.

    Parameters
    ----------
    y
        ``(samples, readouts)`` measurements (None for a prediction design).
    time
        Measurement time of each sample (h, >= 0, on the clock where the perturbation is at
        ``onset``).
    condition
        Condition label of each sample.
    covariates
        Mapping condition label -> covariate vector ``u`` (stimulus, medium, perturbation
        indicators); the control's vector is the reference.
    control
        The control condition's label.
    readouts, covariate_names
        Labels (default ``"x0", "x1", ...`` and ``"u0", ...``).
    onset
        Mapping condition -> perturbation time (h; default 0 for all). A perturbation after a
        measurement of its condition is an error.
    differentiating
        Controls move with time: requires a control sample at every time a perturbed
        condition is measured.
    maintenance
        Covariates under which the pre-cue state is a fixed point (default zeros), used as the
        steady-state baseline of a differentiating design.
    """
    time = np.asarray(time, dtype=float)
    _check_sample_times(time)
    labels, cidx = _encode(condition, control)
    if cidx.shape != time.shape:
        raise DesignError(f"condition has {cidx.shape[0]} entries but time has {time.shape[0]}; give one per sample.")
    missing = [c for c in labels if c not in covariates]
    if missing:
        raise DesignError(f"covariates has no vector for conditions {missing[:5]}; give one per condition.")
    vectors = {}
    for c in labels:
        try:
            vectors[c] = np.asarray(covariates[c], dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise DesignError(f"covariates[{c!r}] must be a vector of numbers, got {covariates[c]!r}.") from None
        if not np.all(np.isfinite(vectors[c])):
            raise DesignError(f"covariates[{c!r}] has non-finite entries ({vectors[c].tolist()}); a condition's "
                              "covariates must be finite numbers (0 for a cue that is absent).")
    sizes = {c: v.size for c, v in vectors.items()}
    if len(set(sizes.values())) > 1:
        raise DesignError(f"covariates differ in length across conditions ({sizes}); give every condition a vector "
                          "of the same covariates, in the same order.")
    U = np.stack([vectors[c] for c in labels])
    maint = np.zeros(U.shape[1]) if maintenance is None else np.asarray(maintenance, dtype=float).reshape(-1)
    if maintenance is not None and (maint.size != U.shape[1] or not np.all(np.isfinite(maint))):
        raise DesignError(f"maintenance must be {U.shape[1]} finite covariate value(s), one per covariate as in "
                          f"covariates; got {np.asarray(maintenance).tolist()}.")
    if y is not None:
        y = np.asarray(y, dtype=float)
        if y.ndim != 2 or y.shape[0] != time.shape[0]:
            raise DesignError(f"y must be (samples, readouts) with {time.shape[0]} rows; got {y.shape}.")
        if np.any(np.isinf(y)):
            raise DesignError("y has inf entries; drop those samples (NaN marks a readout not measured).")
        if np.all(np.isnan(y), axis=0).any():
            raise DesignError("y has a readout that is NaN (unmeasured) in every sample; drop that readout.")
    n = y.shape[1] if y is not None else len(readouts)
    onset_arr = np.zeros(len(labels))
    for c, t in (onset or {}).items():
        if c not in labels:
            raise DesignError(f"onset names an unknown condition {c!r}.")
        onset_arr[labels.index(c)] = float(t)
    if np.any(~np.isfinite(onset_arr)) or np.any(onset_arr < 0):
        raise DesignError("onset times must be finite and >= 0 (h on the design's clock).")
    late = time < onset_arr[cidx]
    if late.any():
        c = labels[int(cidx[np.argmax(late)])]
        raise DesignError(
            f"condition {c!r} is perturbed at {onset_arr[labels.index(c)]} h, after one of its "
            f"measurements at {time[late][0]} h: a sample cannot be measured before its perturbation. "
            "Fix the onset or the measurement time (time is on the clock where the onset is given)."
        )
    if differentiating:
        ctrl_times = set(time[cidx == 0].tolist())
        gaps = sorted(set(time[cidx != 0].tolist()) - ctrl_times)
        if gaps:
            raise DesignError(
                f"differentiating design: perturbed samples measured at {gaps[:5]} h have no control "
                "measured at the same time. Controls move in a differentiating system, so every "
                "measurement time needs time-matched controls (add them, or drop those samples)."
            )
    x0 = _initial_states(y, time, cidx, len(labels), differentiating)
    if y is None:
        base_x, base_u = np.zeros((0, n)), np.zeros((0, U.shape[1]))
    elif differentiating:
        rows = (cidx == 0) & (time == 0)
        rows &= ~np.isnan(y).any(1)
        base_x, base_u = y[rows], np.repeat(maint[None], rows.sum(), 0)
    else:
        rows = (cidx == 0) & ~np.isnan(y).any(1)
        base_x, base_u = y[rows], np.repeat(U[:1], rows.sum(), 0)
    return TimeCourseDesign(
        y=y, time=time, condition_index=cidx, conditions=tuple(labels), covariates=U,
        covariate_names=tuple(covariate_names or [f"u{k}" for k in range(U.shape[1])]),
        readouts=tuple(readouts or [f"x{k}" for k in range(n)]), x0=x0, onset=onset_arr,
        differentiating=bool(differentiating), baseline_x=base_x, baseline_covariates=base_u,
    )


def design_from_midas(df: pd.DataFrame, *, time_unit: float = 60.0, transform: str = "log10") -> tuple[TimeCourseDesign, dict]:
    """A time-course design from a tidy MIDAS table (:func:`semimech.datasets.read_midas`).

    Conditions are ``cell_line|stimuli|inhibitors``; covariates are indicators of each stimulus,
    each inhibitor and each non-first cell line. Values become ``log10(1 + value)`` standardised
    per readout by the controls' (no stimulus, no inhibitor) mean and the overall sd; times are
    divided by ``time_unit`` (minutes -> hours). Non-differentiating: the unstimulated,
    uninhibited samples are the baseline. Returns the design and the standardisation
    (``{"loc", "scale"}``, per readout) to map predictions back.
    """
    need = {"cell_line", "stimuli", "inhibitors", "time", "readout", "value"}
    if not need <= set(df.columns):
        raise DesignError(f"design_from_midas needs the columns {sorted(need)} of read_midas; got {list(df.columns)}.")
    wide = df.pivot_table(index=["cell_line", "stimuli", "inhibitors", "time", "row"], columns="readout",
                          values="value", aggfunc="mean", observed=True, dropna=False).reset_index()
    wide = wide[wide.iloc[:, 5:].notna().any(axis=1)]
    readouts = [c for c in wide.columns if c not in ("cell_line", "stimuli", "inhibitors", "time", "row")]
    v = wide[readouts].to_numpy(float)
    v = np.log10(1.0 + np.clip(v, 0, None)) if transform == "log10" else v
    cond = (wide.cell_line.astype(str) + "|" + wide.stimuli.astype(str) + "|" + wide.inhibitors.astype(str)).to_numpy()
    lines = sorted(wide.cell_line.astype(str).unique())
    split = lambda s: [t for t in str(s).split("+") if t and t != "none"]  # noqa: E731
    stims = sorted({t for s in wide.stimuli for t in split(s)})
    inhs = sorted({t for s in wide.inhibitors for t in split(s)})
    names = [f"stim:{s}" for s in stims] + [f"inh:{s}" for s in inhs] + [f"line:{c}" for c in lines[1:]]
    covs = {}
    for c in dict.fromkeys(cond):
        line, st, inh = c.split("|")
        u = [float(s in split(st)) for s in stims] + [float(s in split(inh)) for s in inhs] + [float(line == c2) for c2 in lines[1:]]
        covs[c] = np.array(u)
    ctrl_rows = (wide.stimuli.astype(str) == "none").to_numpy() & (wide.inhibitors.astype(str) == "none").to_numpy()
    if not ctrl_rows.any():
        raise DesignError("design_from_midas: no unstimulated, uninhibited rows to serve as controls.")
    loc = np.nanmean(v[ctrl_rows], 0)
    scale = np.nanstd(v, 0) + 1e-6
    control = f"{lines[0]}|none|none"
    des = time_course_design(
        (v - loc) / scale, time=wide.time.to_numpy(float) / time_unit, condition=cond, covariates=covs,
        control=control, readouts=readouts, covariate_names=names,
    )
    # every cell line's unstimulated, uninhibited samples are baseline states (under their covariates)
    code = np.array([des.conditions.index(c) for c in cond])
    base = ctrl_rows & ~np.isnan(v).any(1)
    des = dataclasses.replace(des, baseline_x=des.y[base], baseline_covariates=des.covariates[code[base]])
    return des, {"loc": loc, "scale": scale}


def time_matched_effects(design: TimeCourseDesign) -> np.ndarray:
    """Mean of each condition minus the control's mean *at the same time*: ``(conditions, times, readouts)``.

    The comparison a differentiating system needs (FRAMEWORK.md sections 2 and 6): against a
    control measured at another time the effect would absorb the control's own motion. NaN
    where a condition was not measured at a time; a perturbed condition measured at a time
    without a control is a :class:`DesignError`.
    """
    if design.y is None:
        raise DesignError("time_matched_effects needs measurements (y).")
    T, C = len(design.times), len(design.conditions)
    means = np.full((C, T, design.n_readouts), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for c in range(C):
            for t in range(T):
                rows = (design.condition_index == c) & (design.time_index == t)
                if rows.any():
                    means[c, t] = np.nanmean(design.y[rows], 0)
    missing = [float(design.times[t]) for t in range(T)
               if np.isnan(means[0, t]).all() and not np.isnan(means[1:, t]).all()]
    if missing:
        raise DesignError(f"no control measured at {missing[:5]} h, where perturbed conditions were: effects need "
                          "time-matched controls (add control samples at those times).")
    return means - means[:1]


def solve_conditions(field, params, *, x0, covariates, times, onset=None, max_steps: int = 512, rtol=None, atol=None):
    """Trajectories of every condition at ``times``: ``xs (conditions, times, n)`` and ``ok (conditions,)``.

    Each condition ``c`` starts at ``x0[c]`` at clock 0 and follows ``field(x, params, media=u_c)``.
    With ``onset`` the covariates switch on at ``onset[c]``; the state before it is ``x0[c]``,
    which is exact when ``x0[c]`` is a fixed point of the pre-onset dynamics (a
    non-differentiating system), so the solve is the time-shifted one at ``max(t - onset, 0)``.
    Never raises inside ``jit``: failed solves give ``ok=False`` and a finite state (``x0``).
    """
    import jax
    import jax.numpy as jnp

    from semimech.dynamics import trajectory

    times = jnp.asarray(times)
    onset = jnp.zeros(x0.shape[0], times.dtype) if onset is None else jnp.asarray(onset, times.dtype)

    def one(x, u, t_on):
        ts = jnp.maximum(times - t_on, 0.0)
        tr = trajectory(field, params, x0=x, ts=ts, t0=jnp.zeros((), times.dtype), media=u,
                        max_steps=max_steps, rtol=rtol, atol=atol)
        return jnp.where(tr.ok, jnp.where(jnp.isfinite(tr.xs), tr.xs, 0.0), x[None]), tr.ok

    return jax.vmap(one)(jnp.asarray(x0), jnp.asarray(covariates), onset)
