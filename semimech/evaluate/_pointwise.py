"""Per-row log-likelihood and replicate draws of a fit at other latent draws, compiled once per fit.

The engine of the refits of :mod:`semimech.evaluate.cv`, built on
:mod:`semimech.infer.loglik` (the same row log-likelihood as
:func:`semimech.pointwise_log_likelihood`): one jitted function per model and design whose
data-centred prior constants are arguments (each fold has its own), applied to fixed-size
chunks of draws, so every fold after the first reuses the compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers

from semimech._rng import host_rng
from semimech.infer._svi import ROW_KEYS
from semimech.infer.auto import cut_sites_in
from semimech.infer.fit import DATA_SUMMARIES
from semimech.infer.loglik import MAX_CHUNK_ELEMENTS, chunked_draws, row_log_likelihood_fn, row_setup, within_constant
from semimech.measurement.likelihoods import gamma_poisson_draws

#: Model-data flag the engine sets: the observed site is evaluated as the predictive of a *new*
#: observation. A model with a cut posterior (``ModelSpec.cut_sites``, e.g. ``signalling_network``'s
#: ``misfit_cut``) observes its training rows with part of its sd (the measurement noise) and
#: predicts with the whole (measurement and structural error, as ``sm.predict`` does); with this
#: flag it observes with the whole, so held-out rows are scored under the predictive that
#: predictions use. Models without a cut ignore it.
PREDICTIVE_FLAG = "observe_predictive"

#: Bound on draw x row x gene replicate values drawn at once (below the log-likelihood's
#: ``MAX_CHUNK_ELEMENTS``): a count model's negative-binomial sampler holds ~150 bytes per value while it
#: runs; 20M values at once peaked at 3.6 GB and took 24 s, eight chunks of 2.5M 0.9 GB and 20 s.
REPLICATE_CHUNK_ELEMENTS = 2_500_000
#: Smallest number of rows a replicate of some rows is drawn for (see :func:`subset_size`).
MIN_SUBSET_ROWS = 16


def subset_size(n_rows: int, n_obs: int) -> int | None:
    """Rows the model is run with to draw replicates of ``n_rows`` rows, or ``None`` where that is not
    fewer than the design's ``n_obs``: ``n_rows`` rounded up to a multiple of an eighth of its power of
    two (at least :data:`MIN_SUBSET_ROWS`; at most 1/8 padding), so that folds of similar size share
    one compiled program."""
    n = max(int(n_rows), MIN_SUBSET_ROWS)
    step = max(1, 1 << max(0, n.bit_length() - 4))
    b = -(-n // step) * step
    return b if b < n_obs else None


class RowEngine:
    """Log-likelihood per row (``(draws, rows)``) and replicate rows (``(draws, rows, genes)``).

    Built from a fit's model, options and training design (every row, no mask). Row ``i``'s
    value is that of :func:`semimech.pointwise_log_likelihood` (``unit="cells"``): the joint
    log-density of the row's cells. The model sees :data:`PREDICTIVE_FLAG` (held-out rows are
    scored as new observations); ``cut`` lists the spec's cut sites present in the model (their
    PSIS weights from this log-likelihood are not the cut posterior's leave-out weights).
    """

    def __init__(self, fit, *, max_chunk_elements: int = MAX_CHUNK_ELEMENTS):
        design = fit.design
        self.design = design
        data = {k: v for k, v in design.model_data().items() if k != "row_mask"}
        self.model, _, self.y, self.latent, self.has_within = row_setup(fit, {**data, PREDICTIVE_FLAG: True})
        self.cut = cut_sites_in(fit.spec, self.model, data, self.y)  # the model as fitted (without the flag)
        data[PREDICTIVE_FLAG] = True
        self.data = data
        self.per_draw, self.max_chunk = max(1, design.n_obs * design.n_genes), max_chunk_elements
        self.constant = (design.n_genes * within_constant(design) if self.has_within else np.zeros(design.n_obs))
        self.summaries = {k: data[k] for k in DATA_SUMMARIES if k in data}
        self._ll = row_log_likelihood_fn(self.model, data, self.y, shape=(design.n_obs, design.n_genes),
                                         has_within=self.has_within)
        self._entries = row_log_likelihood_fn(self.model, data, self.y, shape=(design.n_obs, design.n_genes),
                                              has_within=False, entries=True)
        model = self.model
        n_genes = design.n_genes

        @jax.jit
        def rows_rep(chunk, summaries):
            return observation_draws(model, chunk, {**data, **summaries}, (design.n_obs, n_genes))

        self._rep = rows_rep
        # replicates of some rows are drawn from the model given those rows alone: every per-row array of a
        # Design's model data (ROW_KEYS) indexed, the rest (conditions, genes, priors) unchanged. A count
        # model's draw for every row of the design then sliced cost ~50 s per fold on 3,000 cells x 300 genes.
        self._row_keys = _row_keys(design, data)
        if self._row_keys is not None:
            shared = {k: v for k, v in data.items() if k not in self._row_keys}

            @jax.jit
            def subset_rep(chunk, summaries, rows_data):
                n_rows = rows_data["perturbation_index"].shape[0]
                return observation_draws(model, chunk, {**shared, **summaries, **rows_data, "n_obs": n_rows},
                                         (n_rows, n_genes))

            self._subset_rep = subset_rep

    def _summaries(self, summaries):
        return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in {**self.summaries, **(summaries or {})}.items()}

    def apply(self, fn, samples: dict, names, key=None, *, per_draw: int | None = None,
              max_chunk_elements: int | None = None):
        """``fn(chunk of samples[names])`` over fixed-size chunks of the draws, concatenated.

        With ``key``, each chunk also holds ``"__key"`` (one key per draw). ``per_draw``: values one
        draw computes (default: every row x gene), which with ``max_chunk_elements`` (default: the
        engine's) sets the chunk size.
        """
        flat = {k: np.asarray(samples[k]) for k in names}
        if key is not None:
            flat["__key"] = np.asarray(jax.random.split(key, next(iter(flat.values())).shape[0]))
        return chunked_draws(fn, flat, per_draw=per_draw or self.per_draw,
                             max_chunk_elements=max_chunk_elements or self.max_chunk)

    def log_likelihood(self, samples: dict, summaries: dict | None = None) -> np.ndarray:
        """``(draws, rows)`` log-likelihood of every row; ``samples``: latent site -> ``(draws, ...)``.

        ``summaries``: the data-centred prior constants to use (default: the full design's).
        """
        s = self._summaries(summaries)
        return self.apply(lambda part: self._ll(part, s), samples, self.latent).astype(float) + self.constant

    def entry_log_likelihood(self, samples: dict, rows, summaries: dict | None = None) -> np.ndarray:
        """``(draws, len(rows), genes)``: the observed site ``y`` alone at each readout of ``rows``.

        For a Gaussian pseudobulk row this is the density of the row's observed *mean* (its cells'
        scatter around the mean, the ``y_within`` factor, is left out); otherwise the row's own density.
        """
        s, keep = self._summaries(summaries), np.asarray(rows)
        return self.apply(lambda part: self._entries(part, s)[:, keep], samples, self.latent).astype(float)

    def replicates(self, key, samples: dict, rows=None, summaries: dict | None = None) -> np.ndarray:
        """``(draws, rows, genes)`` replicate rows (a new pseudobulk of each row's size) per draw.

        ``rows``: optional row indices to draw (default: every row). Fewer rows than the design's are
        drawn from the model given those rows alone (for a :class:`~semimech.Design`, whose per-row
        model data are known), so their cost is that of the rows drawn, not of the design. Counts are
        drawn on the host (:func:`observation_draws`).
        """
        s = self._summaries(summaries)
        limit = min(self.max_chunk, REPLICATE_CHUNK_ELEMENTS)
        if rows is None:
            return self.apply(lambda part: host_draws(self._rep(part, s), part["__key"]), samples, self.latent,
                              key=key, max_chunk_elements=limit).astype(float)
        rows = np.asarray(rows, dtype=np.int64)
        b = None if self._row_keys is None or rows.size == 0 else subset_size(rows.size, self.design.n_obs)
        if b is None:
            return self.apply(lambda part: host_draws(self._rep(part, s), part["__key"])[:, rows], samples,
                              self.latent, key=key, max_chunk_elements=limit).astype(float)
        padded = np.concatenate([rows, np.repeat(rows[:1], b - rows.size)])  # padding rows are drawn and dropped
        rows_data = {k: jnp.asarray(np.asarray(self.data[k])[padded]) for k in self._row_keys}
        n = rows.size
        return self.apply(lambda part: host_draws(self._subset_rep(part, s, rows_data), part["__key"])[:, :n],
                          samples, self.latent, key=key, per_draw=b * self.design.n_genes,
                          max_chunk_elements=limit).astype(float)


def observation_draws(model, chunk: dict, data: dict, shape: tuple[int, int]) -> dict:
    """Per draw of ``chunk`` (latent site -> ``(draws, ...)``, ``"__key"`` one key per draw): the observed
    site ``y``'s distribution given the draw, as ``{"concentration", "rate"}`` arrays ``(draws, *shape)`` when it
    is a gamma-Poisson (the negative binomial of count readouts), else ``{"y": a draw}``.

    A count replicate is then drawn on the host (:func:`host_draws`): JAX's gamma and Poisson samplers loop until
    every value is accepted, ~1-2 us per value on a CPU core, numpy's ~0.1 us (most of a count cross-validation's
    scoring time was these draws; ``benchmarks/cv_replicates.py``). The site is conditioned on zeros, so nothing
    is sampled for it here; every other site is the draw's value or, if the draw lacks it (a held-out target's
    latent under ``PREDICTIVE_FLAG``), drawn from the model with the draw's key.
    """
    chunk = dict(chunk)
    keys = chunk.pop("__key")
    zeros = jnp.zeros(shape, jnp.float32)

    def one(sample, key):
        seeded = handlers.seed(handlers.condition(handlers.substitute(model, data=sample), data={"y": zeros}), key)
        fn = handlers.trace(seeded).get_trace(data)["y"]["fn"]
        nb = _gamma_poisson(fn)
        if nb is None:
            return {"y": jnp.reshape(fn.sample(jax.random.fold_in(key, 1)), shape)}
        return {k: jnp.broadcast_to(v, shape) for k, v in zip(("concentration", "rate"), nb)}

    return jax.vmap(one)(chunk, keys)


def _gamma_poisson(fn):
    """``(concentration, rate)`` of a gamma-Poisson ``fn`` (through the plates' expansion and ``to_event``), or None."""
    while isinstance(fn, (dist.ExpandedDistribution, dist.Independent)):
        fn = fn.base_dist
    if type(fn) in (dist.GammaPoisson, dist.NegativeBinomial2):
        return fn.concentration, fn.rate
    return None


def host_draws(params: dict, keys) -> np.ndarray:
    """Replicates from :func:`observation_draws`' output: its draw, or a negative-binomial draw on the host
    (gamma then Poisson, numpy's generator seeded by the chunk's first key)."""
    if "y" in params:
        return np.asarray(params["y"])
    return gamma_poisson_draws(host_rng(keys[0]), params["concentration"], params["rate"])


def _row_keys(design, data: dict) -> tuple[str, ...] | None:
    """The per-row model data of ``design`` (:data:`~semimech.infer._svi.ROW_KEYS` present in ``data``), or
    ``None`` where they are not known (designs other than :class:`~semimech.Design`, e.g. time courses,
    carry other per-row arrays): replicates of some rows are then drawn for every row and sliced."""
    from semimech.data.design import Design

    if type(design) is not Design:
        return None
    return tuple(k for k in ROW_KEYS if data.get(k) is not None)


def flat_latent(fit, names) -> dict[str, np.ndarray]:
    """Draws of the given sites with chains and draws merged."""
    return {n: np.asarray(fit.flat(n)) for n in names}
