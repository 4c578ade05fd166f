"""Per-row log-likelihood and replicate draws of a model at given latent draws, compiled once.

The shared engine of :func:`semimech.evaluate.compare.pointwise_log_likelihood` and of the
refits of :mod:`semimech.evaluate.cv`: one jitted function per model and design, applied to
fixed-size chunks of draws (the last chunk padded), so every call after the first reuses the
compiled code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive
from numpyro.infer import log_likelihood as _numpyro_log_likelihood

from semimech.errors import DesignError
from semimech.infer._sites import abstract_trace
from semimech.infer.fit import DATA_SUMMARIES


class RowEngine:
    """Log-likelihood per row (``(draws, rows)``) and replicate rows (``(draws, rows, genes)``).

    Built from a fit's model, options and training design (every row, no mask). Row ``i``'s
    log-likelihood is the observed site ``y`` summed over genes, plus, for Gaussian pseudobulk
    rows, the within-group term ``y_within`` and its constant
    ``-(n_i - 1) / 2 * log(2 pi) - log(n_i) / 2`` per gene, so that it is the joint log-density
    of the row's ``n_i`` cells.
    """

    def __init__(self, fit, *, max_chunk_elements: int = 20_000_000):
        design = fit.design
        self.design = design
        self.data = {k: v for k, v in design.model_data().items() if k != "row_mask"}
        self.y = jnp.asarray(design.dense_y(), dtype=jnp.float32)
        self.model = functools.partial(fit.spec.model, **fit.options)
        trace = abstract_trace(self.model, self.data, self.y)
        if "y" not in trace or trace["y"][0] != "observed":
            raise DesignError(f"model {fit.spec.name!r} has no observed site 'y'; the model contract names the "
                              "observed readouts 'y'.")
        self.latent = [n for n in fit.samples if n in trace and trace[n][0] == "sample"]
        if not self.latent:
            raise DesignError(f"the fit of {fit.spec.name!r} holds no latent draws to compute a log-likelihood from.")
        self.has_within = "y_within" in trace
        per_draw = max(1, design.n_obs * design.n_genes)
        self.chunk = int(max(1, min(fit.num_chains * fit.num_draws, max_chunk_elements // per_draw)))
        if self.has_within:
            n = np.asarray(design.n_cells, dtype=float)
            self.constant = design.n_genes * (-(n - 1.0) / 2.0 * np.log(2.0 * np.pi) - 0.5 * np.log(n))
        else:
            self.constant = np.zeros(design.n_obs)
        model, data, y, has_within = self.model, self.data, self.y, self.has_within

        self.summaries = {k: data[k] for k in DATA_SUMMARIES if k in data}

        # the data-centred prior constants are arguments: a fold's refit uses its own (fold_summaries)
        @jax.jit
        def rows_ll(samples, summaries):
            ll = _numpyro_log_likelihood(model, samples, {**data, **summaries}, y=y, parallel=True)
            out = ll["y"].reshape(ll["y"].shape[:2] + (-1,)).sum(-1)
            if has_within:
                out = out + ll["y_within"].reshape(out.shape + (-1,)).sum(-1)
            return out

        @jax.jit
        def rows_rep(key, samples, summaries):
            pred = Predictive(model, posterior_samples=samples, return_sites=["y"], parallel=True)
            return pred(key, {**data, **summaries})["y"]

        self._ll, self._rep = rows_ll, rows_rep

    def _chunks(self, samples: dict):
        """Fixed-size chunks of the draws (the last padded, so every call compiles once)."""
        sl = {k: np.asarray(samples[k]) for k in self.latent}
        n = next(iter(sl.values())).shape[0]
        for start in range(0, n, self.chunk):
            stop = min(start + self.chunk, n)
            part = {k: a[start:stop] for k, a in sl.items()}
            pad = self.chunk - (stop - start)
            if pad:
                part = {k: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for k, a in part.items()}
            yield part, stop - start

    def _summaries(self, summaries):
        return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in {**self.summaries, **(summaries or {})}.items()}

    def log_likelihood(self, samples: dict, summaries: dict | None = None) -> np.ndarray:
        """``(draws, rows)`` log-likelihood of every row; ``samples``: latent site -> ``(draws, ...)``.

        ``summaries``: the data-centred prior constants to use (default: the full design's).
        """
        s = self._summaries(summaries)
        out = [np.asarray(self._ll(part, s))[:m] for part, m in self._chunks(samples)]
        return np.concatenate(out).astype(float) + self.constant

    def replicates(self, key, samples: dict, rows=None, summaries: dict | None = None) -> np.ndarray:
        """``(draws, rows, genes)`` replicate rows (a new pseudobulk of each row's size) per draw.

        ``rows``: optional row indices to keep (the others are drawn and dropped chunk by chunk).
        """
        keep = slice(None) if rows is None else np.asarray(rows)
        s = self._summaries(summaries)
        out = [np.asarray(self._rep(jax.random.fold_in(key, i), part, s))[:m][:, keep]
               for i, (part, m) in enumerate(self._chunks(samples))]
        return np.concatenate(out).astype(float)

    def apply(self, fn, key, samples: dict, names) -> dict[str, np.ndarray]:
        """``fn(key, chunk of samples[names]) -> dict`` over fixed-size chunks of the draws, concatenated."""
        sub = {k: np.asarray(samples[k]) for k in names}
        n = next(iter(samples.values())).shape[0]
        pieces: dict[str, list] = {}
        for i, start in enumerate(range(0, n, self.chunk)):
            stop = min(start + self.chunk, n)
            part = {k: a[start:stop] for k, a in sub.items()}
            pad = self.chunk - (stop - start)
            if pad:
                part = {k: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for k, a in part.items()}
            for k, v in fn(jax.random.fold_in(key, i), part).items():
                pieces.setdefault(k, []).append(np.asarray(v)[: stop - start])
        return {k: np.concatenate(v) for k, v in pieces.items()}


def flat_latent(fit, names) -> dict[str, np.ndarray]:
    """Draws of the given sites with chains and draws merged."""
    return {n: np.asarray(fit.flat(n)) for n in names}
