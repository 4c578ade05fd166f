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
from numpyro.infer import Predictive

from semimech.infer._svi import ROW_KEYS
from semimech.infer.auto import cut_sites_in
from semimech.infer.fit import DATA_SUMMARIES
from semimech.infer.loglik import MAX_CHUNK_ELEMENTS, chunked_draws, row_log_likelihood_fn, row_setup, within_constant

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

        @jax.jit
        def rows_rep(chunk, summaries):  # one key per draw; a chunk draws with its first draw's key
            chunk = dict(chunk)
            key = chunk.pop("__key")[0]
            return Predictive(model, posterior_samples=chunk, return_sites=["y"], parallel=True)(
                key, {**data, **summaries})["y"]

        self._rep = rows_rep
        # replicates of some rows are drawn from the model given those rows alone: every per-row array of a
        # Design's model data (ROW_KEYS) indexed, the rest (conditions, genes, priors) unchanged. A count
        # model's draw for every row of the design then sliced cost ~50 s per fold on 3,000 cells x 300 genes.
        self._row_keys = _row_keys(design, data)
        if self._row_keys is not None:
            shared = {k: v for k, v in data.items() if k not in self._row_keys}

            @jax.jit
            def subset_rep(chunk, summaries, rows_data):
                chunk = dict(chunk)
                key = chunk.pop("__key")[0]
                n_rows = rows_data["perturbation_index"].shape[0]
                return Predictive(model, posterior_samples=chunk, return_sites=["y"], parallel=True)(
                    key, {**shared, **summaries, **rows_data, "n_obs": n_rows})["y"]

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
        model data are known), so their cost is that of the rows drawn, not of the design.
        """
        s = self._summaries(summaries)
        limit = min(self.max_chunk, REPLICATE_CHUNK_ELEMENTS)
        if rows is None:
            return self.apply(lambda part: self._rep(part, s), samples, self.latent, key=key,
                              max_chunk_elements=limit).astype(float)
        rows = np.asarray(rows, dtype=np.int64)
        b = None if self._row_keys is None or rows.size == 0 else subset_size(rows.size, self.design.n_obs)
        if b is None:
            return self.apply(lambda part: self._rep(part, s)[:, rows], samples, self.latent, key=key,
                              max_chunk_elements=limit).astype(float)
        padded = np.concatenate([rows, np.repeat(rows[:1], b - rows.size)])  # padding rows are drawn and dropped
        rows_data = {k: jnp.asarray(np.asarray(self.data[k])[padded]) for k in self._row_keys}
        n = rows.size
        return self.apply(lambda part: self._subset_rep(part, s, rows_data)[:, :n], samples, self.latent, key=key,
                          per_draw=b * self.design.n_genes, max_chunk_elements=limit).astype(float)


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
