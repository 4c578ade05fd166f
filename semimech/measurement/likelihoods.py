"""The measurement operator: how a latent log-mean becomes observed data.

Sites sampled here (dims):

- ``noise_sd`` (genes): Gaussian noise sd per gene, data units (``likelihood="normal"``).
- ``concentration`` (genes): negative-binomial concentration phi per gene; variance is
  ``mu + mu^2 / phi`` (``likelihood="negbin"``).
- ``batch_sd`` (): sd of the batch offsets; ``batch_z`` (batches, genes): standardised offsets.
- ``y`` (cells, genes): the observations.

A row may be a pseudobulk of ``n`` cells. For ``normal`` the row is a mean of ``n`` cells, so
its sd is ``noise_sd / sqrt(n)``. For ``negbin`` the row is a sum of ``n`` cells' counts with
summed size factor ``s``; a sum of ``n`` independent NB(mu, phi) is NB(n mu, n phi), which we
use with mean ``s * exp(loc)`` and concentration ``n * phi`` (exact when cells share a size
factor). Dropout is not modelled separately here: under NB, zeros are the low-mean tail.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

LIKELIHOODS = ("normal", "negbin")


def check_likelihood(likelihood: str, *, is_counts: bool) -> None:
    from semimech.errors import DesignError

    if likelihood not in LIKELIHOODS:
        raise DesignError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}.")
    if likelihood == "negbin" and not is_counts:
        raise DesignError(
            "likelihood='negbin' needs non-negative integer counts, but this design's readouts are not counts. "
            "Use likelihood='normal' for log-normalised or continuous readouts, or build the Design from raw counts."
        )


def to_data_scale(loc, likelihood: str):
    """Map the latent location to the mean on the data scale (per unit size factor)."""
    return jnp.exp(loc) if likelihood == "negbin" else loc


def gene_noise(data, *, likelihood: str):
    """Sample the per-gene noise parameter (call inside the ``genes`` plate)."""
    if likelihood == "normal":
        scale = jnp.asarray(data["baseline_scale"]) if "baseline_scale" in data else 1.0
        return numpyro.sample("noise_sd", dist.HalfNormal(2.0 * scale))
    return numpyro.sample("concentration", dist.LogNormal(1.0, 1.5))


def batch_offsets(data, genes_plate):
    """Hierarchical batch x gene offsets on the latent scale, or None without batches."""
    if data.get("batch_index") is None or data.get("n_batches", 0) == 0:
        return None
    sd = numpyro.sample("batch_sd", dist.HalfNormal(0.5))
    with numpyro.plate("batches", data["n_batches"], dim=-2), genes_plate:
        z = numpyro.sample("batch_z", dist.Normal(0.0, 1.0))
    return sd * z


def observation_dist(loc, noise, *, likelihood: str, size_factors, n_cells):
    """The distribution of a row given its latent location ``loc`` (rows, genes)."""
    n = n_cells[:, None]
    if likelihood == "normal":
        return dist.Normal(loc, noise / jnp.sqrt(n))
    mean = size_factors[:, None] * jnp.exp(loc)
    return dist.NegativeBinomial2(mean=mean, concentration=noise * n)


def observe(loc, noise, data, *, likelihood: str, y=None):
    """Sample the observed site ``y`` (call inside the ``cells`` and ``genes`` plates).

    For Gaussian pseudobulk rows that carry their within-group sum of squares
    (``data["y_ss"]``, from :meth:`Design.pseudobulk`), the factor ``y_within`` adds the
    within-group part of the cell-level likelihood, so fitting the pseudobulk gives exactly
    the posterior of fitting every cell (the mean and the sum of squares are sufficient).
    """
    sf = jnp.asarray(data["size_factors"])
    n = jnp.asarray(data["n_cells"])
    numpyro.sample("y", observation_dist(loc, noise, likelihood=likelihood, size_factors=sf, n_cells=n), obs=y)
    if likelihood == "normal" and data.get("y_ss") is not None and y is not None:
        ss = jnp.asarray(data["y_ss"])
        numpyro.factor("y_within", -(n[:, None] - 1.0) * jnp.log(noise) - ss / (2.0 * noise**2))


def mean_of_cells(rng_key, mean, noise, *, likelihood: str, num_cells: int):
    """Draw the observed mean of ``num_cells`` new cells (size factor 1) given population means."""
    import jax

    if likelihood == "normal":
        return mean + noise / jnp.sqrt(num_cells) * jax.random.normal(rng_key, mean.shape)
    total = dist.NegativeBinomial2(mean=num_cells * mean, concentration=num_cells * noise).sample(rng_key)
    return total / num_cells
