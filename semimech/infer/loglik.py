"""Pointwise log-likelihood of a fit, at the unit the user chooses, computed on demand.

The unit of a log-likelihood value is what leave-one-out leaves out:

- ``"cells"``: each row of the training design (a cell, or a pseudobulk row when the fit was
  on a pseudobulk; the dim is named ``cells`` like the model's plate).
- ``"pseudobulk"``: the rows of each perturbation x batch group summed, labelled like the
  rows of :meth:`Design.pseudobulk` (``"KLF1|batch1"``; ``"KLF1"`` without batches). For a
  Gaussian fit of single cells this equals, draw for draw, the row log-likelihood of a fit of
  the pseudobulk (the pseudobulk row carries its cells' joint density), so the two compare.
- ``"perturbations"``: the rows of each perturbation summed over batches (observed labels).
- ``"entries"``: each row x gene readout, ``(chains, draws, cells, genes)``: what
  ``arviz_plots.plot_loo_pit`` needs (it pairs each observed value with its own
  log-likelihood); large, so only on request.

A row's value is the observed site ``y`` summed over genes plus, for Gaussian pseudobulk rows,
the within-group factor ``y_within`` and its constant (see :func:`pointwise_log_likelihood`).
Cost: one model evaluation per draw over rows x genes, in chunks; the result is
``(chains, draws, units)``, ``cells x genes`` only for ``"entries"``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from numpyro.infer import log_likelihood as _numpyro_log_likelihood

from semimech.errors import DesignError
from semimech.infer._sites import abstract_trace

__all__ = ["UNITS", "pointwise_log_likelihood", "unit_index"]

#: Units a log-likelihood can be computed at.
UNITS = ("cells", "pseudobulk", "perturbations", "entries")
#: Default bound on draw x row x gene values evaluated at once.
MAX_CHUNK_ELEMENTS = 20_000_000


def unit_index(design, unit: str) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """``(group index of each row or None, unit labels)`` for a log-likelihood ``unit``.

    ``None`` means every row is its own unit (``"cells"``).
    """
    if unit in ("cells", "entries"):
        return None, tuple(design.obs_names)
    if unit == "perturbations":
        codes, inverse = np.unique(np.asarray(design.perturbation_index), return_inverse=True)
        return inverse.ravel(), tuple(design.perturbations[int(c)] for c in codes)
    if unit == "pseudobulk":
        b = np.zeros(design.n_obs, np.int64) if design.batch_index is None else np.asarray(design.batch_index)
        keys = np.stack([np.asarray(design.perturbation_index, np.int64), b], axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        with_batch = design.batches is not None
        labels = tuple(design.perturbations[p] + (f"|{design.batches[bb]}" if with_batch else "") for p, bb in uniq)
        return inverse.ravel(), labels
    raise DesignError(f"unknown log-likelihood unit {unit!r}; choose one of {UNITS}.")


def row_setup(fit, data: dict | None = None) -> tuple:
    """``(model, data, y, latent site names, has_within)`` of a fit at its training design, checked.

    ``data``: the model data to use (default ``fit.design.model_data()``).
    """
    design = fit.design
    data = design.model_data() if data is None else data
    y = jnp.asarray(design.dense_y(), dtype=jnp.float32)
    model = functools.partial(fit.spec.model, **fit.options)
    trace = abstract_trace(model, data, y)
    if "y" not in trace or trace["y"][0] != "observed":
        raise DesignError(f"model {fit.spec.name!r} has no observed site 'y'; the model contract names the "
                          "observed readouts 'y'.")
    latent = [n for n in fit.samples if n in trace and trace[n][0] == "sample"]
    if not latent:
        raise DesignError(f"the fit of {fit.spec.name!r} holds no latent draws to compute a log-likelihood from.")
    return model, data, y, latent, "y_within" in trace


def within_constant(design) -> np.ndarray:
    """Per row and gene, ``-(n - 1) / 2 * log(2 pi) - log(n) / 2``: with ``y_within``, the rest of
    the joint Gaussian density of a pseudobulk row's ``n`` cells."""
    n = np.asarray(design.n_cells, dtype=float)
    return -(n - 1.0) / 2.0 * np.log(2.0 * np.pi) - 0.5 * np.log(n)


def row_log_likelihood_fn(model, data: dict, y, *, shape: tuple[int, int], has_within: bool,
                          entries: bool = False):
    """Jitted ``fn(samples, overrides) -> (draws, rows)`` (``(draws, rows, genes)`` with ``entries``).

    The observed site ``y`` (plus ``y_within``) per row, summed over genes, without the
    :func:`within_constant`. ``overrides``: model data replacing ``data``'s entries of the same
    name (traced: e.g. the data-centred priors of a cross-validation fold); ``{}`` for none.
    """

    @jax.jit
    def ll_fn(samples, overrides):
        ll = _numpyro_log_likelihood(model, samples, {**data, **overrides}, y=y, parallel=True)
        out = ll["y"] if not has_within else ll["y"] + ll["y_within"]
        out = out.reshape(out.shape[:1] + tuple(shape))
        return out if entries else out.sum(-1)

    return ll_fn


def chunked_draws(fn, flat: dict[str, np.ndarray], *, per_draw: int, max_chunk_elements: int):
    """Apply a jitted ``fn(samples) -> (draws, ...)`` to draws in equal chunks (compiled once).

    ``fn`` may return a dict of such arrays; the result is then a dict of the concatenations.
    """
    n_draws = next(iter(flat.values())).shape[0]
    chunk = int(max(1, min(n_draws, max_chunk_elements // max(1, per_draw))))
    pieces = []
    for start in range(0, n_draws, chunk):
        stop = min(start + chunk, n_draws)
        pad = chunk - (stop - start)
        sl = {n: a[start:stop] for n, a in flat.items()}
        if pad:  # same shape every call: compile once
            sl = {n: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for n, a in sl.items()}
        pieces.append(jax.tree.map(lambda a, m=stop - start: np.asarray(a)[:m], fn(sl)))
    return jax.tree.map(lambda *p: np.concatenate(p), *pieces)


def pointwise_log_likelihood(fit, *, unit: str = "cells", max_chunk_elements: int = MAX_CHUNK_ELEMENTS) -> np.ndarray:
    """Log-likelihood of each unit under each posterior draw, ``(chains, draws, units)``.

    ``unit="entries"``: ``(chains, draws, cells, genes)``, each readout's value (the
    row's value is their sum).

    Computed with :func:`numpyro.infer.log_likelihood` on the fit's training design
    (``fit.design.model_data()``, ``fit.design.dense_y()``, model options ``fit.options``).
    Row ``i``'s value is the observed site ``y`` summed over genes, plus, for Gaussian
    pseudobulk rows, the within-group term ``y_within`` and the constant
    ``-(n_i - 1) / 2 * log(2 pi) - log(n_i) / 2`` per gene, so that it is the joint
    log-density of the row's ``n_i`` cells. Rows are then summed per ``unit`` (``"cells"``:
    each row; ``"pseudobulk"``: per perturbation x batch; ``"perturbations"``: per
    perturbation; labels from :func:`unit_index`). Draws are processed in chunks of at most
    ``max_chunk_elements`` draw x row x gene values.

    For a fit stored in ``fit.idata`` use :func:`semimech.add_log_likelihood`, which puts the
    same values in the ``log_likelihood`` group that ArviZ reads.
    """
    groups, labels = unit_index(fit.design, unit)  # validates unit before any work
    design = fit.design
    model, data, y, latent, has_within = row_setup(fit)
    flat = {n: np.asarray(fit.flat(n)) for n in latent}
    entries = unit == "entries"
    ll_fn = row_log_likelihood_fn(model, data, y, shape=(design.n_obs, design.n_genes), has_within=has_within,
                                  entries=entries)
    out = chunked_draws(lambda s: ll_fn(s, {}), flat, per_draw=design.n_obs * design.n_genes,
                        max_chunk_elements=max_chunk_elements).astype(float)
    if has_within:
        const = within_constant(design)  # per gene
        out = out + (const[:, None] if entries else design.n_genes * const)
    if entries:
        return out.reshape(fit.num_chains, fit.num_draws, design.n_obs, design.n_genes)
    if groups is not None:
        member = sp.csr_matrix((np.ones(design.n_obs), (groups, np.arange(design.n_obs))),
                               shape=(len(labels), design.n_obs))
        out = np.asarray(member @ out.T).T  # sum the rows of each unit
    return out.reshape(fit.num_chains, fit.num_draws, len(labels))
