"""Observation sub-models: counts, Gaussian readouts (with known or partly known measurement error:
:mod:`semimech.measurement.noise`), batch offsets, size factors."""

from semimech.measurement.likelihoods import (
    BOUND_TOLERANCE,
    LIKELIHOODS,
    ClippedNormal,
    batch_offsets,
    check_likelihood,
    context_noise,
    gene_noise,
    mean_of_cells,
    observation_dist,
    observe,
    observe_conditions,
    to_data_scale,
)
from semimech.measurement.noise import NoiseModel, fixed, from_replicates, learned, xmap
from semimech.measurement.replicates import duplicate_rows

__all__ = [
    "BOUND_TOLERANCE",
    "ClippedNormal",
    "LIKELIHOODS",
    "NoiseModel",
    "duplicate_rows",
    "fixed",
    "from_replicates",
    "learned",
    "xmap",
    "batch_offsets",
    "check_likelihood",
    "context_noise",
    "gene_noise",
    "mean_of_cells",
    "observation_dist",
    "observe",
    "observe_conditions",
    "to_data_scale",
]
