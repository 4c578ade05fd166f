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

    def _summaries(self, summaries):
        return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in {**self.summaries, **(summaries or {})}.items()}

    def apply(self, fn, samples: dict, names, key=None):
        """``fn(chunk of samples[names])`` over fixed-size chunks of the draws, concatenated.

        With ``key``, each chunk also holds ``"__key"`` (one key per draw).
        """
        flat = {k: np.asarray(samples[k]) for k in names}
        if key is not None:
            flat["__key"] = np.asarray(jax.random.split(key, next(iter(flat.values())).shape[0]))
        return chunked_draws(fn, flat, per_draw=self.per_draw, max_chunk_elements=self.max_chunk)

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

        ``rows``: optional row indices to keep (the others are dropped chunk by chunk).
        """
        s = self._summaries(summaries)
        keep = slice(None) if rows is None else np.asarray(rows)
        return self.apply(lambda part: self._rep(part, s)[:, keep], samples, self.latent, key=key).astype(float)


def flat_latent(fit, names) -> dict[str, np.ndarray]:
    """Draws of the given sites with chains and draws merged."""
    return {n: np.asarray(fit.flat(n)) for n in names}
