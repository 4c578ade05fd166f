"""Observation sub-models: counts, Gaussian readouts, batch offsets, size factors."""

from semimech.measurement.likelihoods import (
    LIKELIHOODS,
    batch_offsets,
    check_likelihood,
    gene_noise,
    mean_of_cells,
    observation_dist,
    observe,
    observe_conditions,
    to_data_scale,
)

__all__ = [
    "LIKELIHOODS",
    "batch_offsets",
    "check_likelihood",
    "gene_noise",
    "mean_of_cells",
    "observation_dist",
    "observe",
    "observe_conditions",
    "to_data_scale",
]
