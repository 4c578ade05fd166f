"""Known or partly known measurement error of Gaussian readouts.

A :class:`NoiseModel` says how much one observation of a condition varies around the
condition's mean, per readout, on the modelling scale (the scale of the design's readouts).
Attach it to a design with :meth:`semimech.Design.with_noise`; every Gaussian model then uses it
(the fit, ``predict``'s ``"observed_mean"`` draws, LOO), and saved fits keep it.

- :func:`learned` (the default): a per-readout sd learned from the data (HalfNormal prior scaled
  to the control spread). Identified by replicate rows or within-group sums of squares; in a
  design with one row per condition only through the model's structure (see
  :class:`semimech.infer.fit.UnreplicatedWarning`).
- :func:`fixed`: a known sd per readout.
- :func:`xmap`: the additive + multiplicative error model of bead-based (xMAP / Luminex)
  assays, ``sd(x)^2 = a^2 + (c x)^2`` for a raw value ``x``, mapped to the modelling scale by the
  derivative of the transform the readouts were put through (``transform="log10p1"`` for
  ``log10(x + 1)``: ``sd = sqrt(a^2 + (c x)^2) / ((x + 1) ln 10)``), evaluated at the model's
  predicted mean, so the noise follows the signal.
- :func:`from_replicates`: a prior from technical replicates: per readout, the pooled
  within-replicate sd ``s`` with ``df`` degrees of freedom gives ``log noise_sd ~ Normal(log s,
  1 / sqrt(2 df))`` (the sampling sd of a log sd estimate). With ``groups=`` (e.g. the cell line
  of each replicate row) one such prior per group; :meth:`NoiseModel.by_batch` then says which
  group each batch of the modelled design belongs to, and ``noise_sd`` is learned per group
  (``(noise_groups, genes)``; every row takes its batch's group). For a design whose batches are
  cell lines x conditions, measured on instruments or lines that differ in noise: one pooled sd
  reads a quiet line's real deviations as noise and a noisy line's noise as signal.

``extra=True`` (for :func:`fixed` and :func:`xmap`) also learns a per-readout sd added in
quadrature: a partly known error (the assay's error is known, biological variation between
replicate wells is not).

The **resolution floor** ``s * sqrt(3 / N)`` (see :func:`semimech.data._aggregate.control_summaries`)
is a lower bound on a single-cell readout's sd (a gene never seen expressed in ``N`` cells). It is
an option, ``resolution_floor``: ``None`` (default) turns it on only for data of cells (a design
whose conditions hold 10 or more cells on average: single cells or pseudobulks of them) and off
for bulk data (one or a few rows per condition: plate assays, phospho arrays).

Sites (in the ``genes`` plate of every Gaussian model): ``noise_sd`` is the *learned* part of the
sd; with a fixed or xMAP error and ``extra=False`` it is a deterministic 0 and the whole sd is
the known one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from semimech.errors import DesignError

KINDS = ("learned", "fixed", "xmap", "replicates")
TRANSFORMS = ("identity", "log10p1", "log1p", "log10", "log")
CELLS_PER_CONDITION_FOR_FLOOR = 10.0


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """A measurement-error model; build one with :func:`learned`, :func:`fixed`, :func:`xmap` or
    :func:`from_replicates` (per-readout values are a number, or a mapping readout -> number)."""

    kind: str = "learned"
    sd: Any = None
    additive: Any = None
    multiplicative: Any = None
    transform: str = "identity"
    df: Any = None
    extra: bool = False
    resolution_floor: bool | None = None
    groups: Any = None
    batch_groups: Any = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DesignError(f"unknown noise model kind {self.kind!r}; choose one of {KINDS}.")
        if self.transform not in TRANSFORMS:
            raise DesignError(f"unknown transform {self.transform!r}; choose one of {TRANSFORMS} "
                              "(how the raw values were transformed into the design's readouts).")
        for name in ("sd", "additive", "multiplicative", "df"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, {str(k): float(v) for k, v in value.items()})
            elif value is not None:
                object.__setattr__(self, name, float(value))
        if self.groups is not None:
            if self.kind != "replicates":
                raise DesignError("noise groups come from replicates: build them with "
                                  "semimech.measurement.from_replicates(design, groups=...).")
            object.__setattr__(self, "groups", {str(g): {k: {str(r): float(v) for r, v in dict(per[k]).items()}
                                                         for k in ("sd", "df")} for g, per in self.groups.items()})
        if self.batch_groups is not None:
            if self.groups is None:
                raise DesignError("batch_groups needs a noise model with groups (from_replicates(..., groups=...)).")
            object.__setattr__(self, "batch_groups", {str(b): str(g) for b, g in dict(self.batch_groups).items()})
            unknown = sorted({g for g in self.batch_groups.values() if g not in self.groups})
            if unknown:
                raise DesignError(f"batch_groups names noise groups without replicates: {unknown[:10]}; the groups "
                                  f"are {sorted(self.groups)[:10]}. Map each batch to one of them.")
        _check_values(self)

    def to_dict(self) -> dict:
        """JSON-able form (saved with a fit)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "NoiseModel":
        return cls(**dict(d))

    @property
    def grouped(self) -> bool:
        """Whether the sd is learned per group of batches (:meth:`by_batch`)."""
        return self.batch_groups is not None

    def by_batch(self, batch_groups: Mapping[str, str]) -> "NoiseModel":
        """The same model with each batch's noise group: a mapping batch label -> group.

        Every batch of a design this model is attached to must be mapped (so must a batch asked
        for in :func:`semimech.predict` with ``num_cells``); batches of later designs (new
        batches) may be mapped ahead of time.
        """
        if self.groups is None:
            raise DesignError("by_batch needs a noise model with groups: from_replicates(design, groups=...).")
        if not isinstance(batch_groups, Mapping) or not batch_groups:
            raise DesignError("batch_groups must be a non-empty mapping batch label -> noise group.")
        return dataclasses.replace(self, batch_groups=dict(batch_groups))

    def group_names(self) -> tuple[str, ...]:
        """The noise groups, in the order of ``noise_sd``'s ``noise_groups`` axis."""
        return tuple(sorted(self.groups)) if self.groups is not None else ()

    def batch_group_index(self, batches) -> np.ndarray:
        """One group index per batch label (a clear error naming unmapped batches)."""
        names = self.group_names()
        missing = [b for b in batches if str(b) not in self.batch_groups]
        if missing:
            raise DesignError(f"the noise model's batch_groups do not map batches {missing[:10]}; map every batch "
                              "to a noise group: noise.by_batch({batch: group, ...}).")
        return np.asarray([names.index(self.batch_groups[str(b)]) for b in batches], np.int32)

    def row_group_weights(self, design) -> np.ndarray:
        """The fraction of ``design``'s rows in each noise group (the mixture an unnamed batch implies)."""
        rows = self.batch_group_index(design.batches)[np.asarray(design.batch_index)]
        return np.bincount(rows, minlength=len(self.group_names())) / rows.size

    def model_data(self, design) -> dict[str, Any]:
        """The arrays a model reads (``noise_*`` keys of ``Design.model_data``), aligned with genes."""
        genes = tuple(design.genes)
        out: dict[str, Any] = {"noise_kind": self.kind, "noise_extra": bool(self.extra)}
        if self.kind == "fixed":
            out["noise_known_sd"] = _per_gene(self.sd, genes, "sd")
        elif self.kind == "xmap":
            out["noise_add"] = _per_gene(self.additive, genes, "additive")
            out["noise_mult"] = _per_gene(self.multiplicative, genes, "multiplicative")
            out["noise_transform"] = self.transform
            both_zero = (out["noise_add"] == 0) & (out["noise_mult"] == 0)
            if np.any(both_zero):
                bad = [g for g, z in zip(genes, both_zero) if z]
                raise DesignError(f"xmap noise model: additive and multiplicative are both 0 for readouts {bad[:10]}, "
                                  "a non-positive sd. Give a positive additive (a) or multiplicative (c) term.")
        elif self.kind == "replicates" and self.grouped:
            if design.batches is None:
                raise DesignError("a noise model grouped by batch needs a design with batches (batch_key=).")
            names = self.group_names()
            sd = np.stack([_per_gene(self.groups[g]["sd"], genes, f"sd of group {g!r}") for g in names])
            df = np.stack([_per_gene(self.groups[g]["df"], genes, f"df of group {g!r}") for g in names])
            out["noise_prior_loc"] = np.log(sd).astype(np.float32)  # (groups, genes)
            out["noise_prior_scale"] = (1.0 / np.sqrt(2.0 * df)).astype(np.float32)
            out["noise_batch_group"] = self.batch_group_index(design.batches)
        elif self.kind == "replicates":
            sd = _per_gene(self.sd, genes, "sd")
            df = _per_gene(self.df, genes, "df")
            out["noise_prior_loc"] = np.log(sd).astype(np.float32)
            out["noise_prior_scale"] = (1.0 / np.sqrt(2.0 * df)).astype(np.float32)
        return out


def _check_values(m: NoiseModel) -> None:
    need = {"fixed": ("sd",), "xmap": ("additive", "multiplicative"), "replicates": ("sd", "df"), "learned": ()}[m.kind]
    for name in need:
        if getattr(m, name) is None:
            raise DesignError(f"a {m.kind!r} noise model needs {name}=.")
    for name in ("sd", "df"):
        values = list(_items(getattr(m, name)))
        for g, per in (m.groups or {}).items():
            values += [(f"group {g!r}, {k}", v) for k, v in _items(per[name])]
        for key, v in values:
            if not (math.isfinite(v) and v > 0):
                raise DesignError(f"noise model {name} must be positive and finite; {key} has {v!r}. "
                                  "A measurement sd of 0 would make every observation exact.")
    for name in ("additive", "multiplicative"):
        for key, v in _items(getattr(m, name)):
            if not (math.isfinite(v) and v >= 0):
                raise DesignError(f"xmap noise model: {name} must be finite and >= 0; {key} has {v!r}.")


def _items(value):
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [(f"readout {k!r}", v) for k, v in value.items()]
    return [("the value", value)]


def _per_gene(value, genes: tuple[str, ...], name: str) -> np.ndarray:
    if not isinstance(value, Mapping):
        return np.full(len(genes), float(value), np.float32)
    unknown = [k for k in value if k not in set(genes)]
    missing = [g for g in genes if g not in value]
    if unknown or missing:
        raise DesignError(f"noise model {name}: per-readout values must name exactly the design's readouts; "
                          f"unknown {unknown[:10]}, missing {missing[:10]}. Give a number for all readouts, or a "
                          "mapping with every readout.")
    return np.asarray([value[g] for g in genes], np.float32)


# ---------------------------------------------------------------------------- constructors
def learned(*, resolution_floor: bool | None = None) -> NoiseModel:
    """A per-readout sd learned from the data (the default)."""
    return NoiseModel("learned", resolution_floor=resolution_floor)


def fixed(sd, *, extra: bool = False, resolution_floor: bool | None = False) -> NoiseModel:
    """A known sd per readout, on the modelling scale (a number or a mapping readout -> sd)."""
    return NoiseModel("fixed", sd=sd, extra=extra, resolution_floor=resolution_floor)


def xmap(*, additive, multiplicative, transform: str = "log10p1", extra: bool = False,
         resolution_floor: bool | None = False) -> NoiseModel:
    """Additive + multiplicative error ``sd^2 = additive^2 + (multiplicative * x)^2`` on the raw scale.

    ``additive`` is in raw units (e.g. fluorescence), ``multiplicative`` a fraction (0.1 = 10%);
    ``transform`` names how raw values became the design's readouts (``"log10p1"``:
    ``log10(x + 1)``; ``"identity"``: readouts are raw).
    """
    return NoiseModel("xmap", additive=additive, multiplicative=multiplicative, transform=transform, extra=extra,
                      resolution_floor=resolution_floor)


def from_replicates(design, *, groups=None, resolution_floor: bool | None = False) -> NoiseModel:
    """A prior on each readout's sd from technical replicates: rows of one condition (x batch).

    ``design`` holds the replicate measurements (any conditions; only groups with two or more
    rows count). Exactly duplicated rows are copies, not replicates: they are dropped (and
    named in the error if nothing else is left).

    ``groups``: optionally one label per row of ``design`` (e.g. its cell line): also a prior per
    group, from that group's replicates alone (each group needs replicates of its own). Attach
    the model with :meth:`NoiseModel.by_batch` to learn the sd per group; without it the pooled
    prior is used as before.
    """
    from semimech.data.design import Design
    from semimech.measurement.replicates import replicate_sd

    if not isinstance(design, Design):
        raise DesignError(f"from_replicates needs a semimech Design of the replicate measurements, got "
                          f"{type(design).__name__}.")
    sd, df = replicate_sd(design)
    per_group = None
    if groups is not None:
        labels = np.asarray([str(g) for g in groups], dtype=object)
        if labels.shape != (design.n_obs,):
            raise DesignError(f"groups must give one label per row of the replicate design ({design.n_obs} rows), "
                              f"got {labels.shape[0] if labels.ndim else 'a scalar'}.")
        per_group = {}
        for g in dict.fromkeys(labels):
            try:
                g_sd, g_df = replicate_sd(design.subset(np.flatnonzero(labels == g)))
            except DesignError as err:
                raise DesignError(f"noise group {g!r}: {err}") from None
            per_group[g] = {"sd": dict(zip(design.genes, g_sd.tolist())), "df": dict(zip(design.genes, g_df.tolist()))}
    return NoiseModel("replicates", sd=dict(zip(design.genes, sd.tolist())),
                      df=dict(zip(design.genes, df.tolist())), resolution_floor=resolution_floor, groups=per_group)


# ------------------------------------------------------------------------- used by models
def use_floor(noise: NoiseModel | None, design) -> bool:
    """Whether the resolution floor applies (see the module docstring)."""
    setting = None if noise is None else noise.resolution_floor
    if setting is not None:
        return bool(setting)
    groups = design.perturbation_index.astype(np.int64)
    if design.batch_index is not None:
        groups = groups * (len(design.batches) + 1) + design.batch_index
    n_groups = max(np.unique(groups).size, 1)
    return float(np.sum(design.n_cells)) / n_groups >= CELLS_PER_CONDITION_FOR_FLOOR


def known_variance(data, loc):
    """Variance of the known part of the error at latent location ``loc`` (0 without one)."""
    if data.get("noise_known_sd") is not None:
        return jnp.asarray(data["noise_known_sd"]) ** 2
    if data.get("noise_add") is None:
        return 0.0
    if loc is None:
        raise ValueError("an xmap noise model needs the latent location to give the sd.")
    a, c = jnp.asarray(data["noise_add"]), jnp.asarray(data["noise_mult"])
    x, dt_dx = _raw_and_slope(loc, data["noise_transform"])
    return (a**2 + (c * x) ** 2) * dt_dx**2


def _raw_and_slope(loc, transform: str):
    """The raw value ``x`` at modelling-scale value ``loc``, and d(transform)/dx there."""
    ln10 = math.log(10.0)
    if transform == "identity":
        return loc, 1.0
    if transform == "log10p1":
        x = jnp.maximum(10.0**loc - 1.0, 0.0)
        return x, 1.0 / ((x + 1.0) * ln10)
    if transform == "log1p":
        x = jnp.maximum(jnp.expm1(loc), 0.0)
        return x, 1.0 / (x + 1.0)
    if transform == "log10":
        x = 10.0**loc
        return x, 1.0 / (x * ln10)
    x = jnp.exp(loc)  # "log"
    return x, 1.0 / x
