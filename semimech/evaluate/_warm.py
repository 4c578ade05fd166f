"""Warm starts of cross-validation refits that carry nothing from the left-out units.

A refit started at the full fit's posterior medians starts every latent where the *whole* data
put it, the left-out units included. Latents the training rows also inform are pulled to the
fold's optimum by the refit; a latent informed *only* by the left-out rows gets no gradient from
the fold's likelihood and stays near its warm value, moved only by its prior, so the left-out
data leak into the fold's predictive for themselves. Measured on Sachs (leave one condition out,
``benchmarks/RESULTS_compare.md``): signalling_network's held-out RMSE 1.051 from warm-started
refits against 1.169 from cold ones (1.166 from fresh fits).

The rule (:func:`reset_mask`): at the warm values, an entry of a latent site whose gradient of
the training rows' log-likelihood is exactly zero while that of the left-out rows' is not is
informed by the left-out rows alone; it starts as a fresh fit starts it (``NaN`` in
``init_values``: :func:`semimech.infer.fit.warm_init` puts the prior median there, given the
warm values of its parents), and every other entry keeps the warm start. Zero gradients of
entries no row informs are structural (the entry does not enter the training rows' likelihood),
not numerical: they hold at any point of the latent space. A coincidental zero only costs the
entry its warm start. Sites whose support is multivariate (a simplex, a Cholesky factor) are
reset or kept per event (all of its entries), so a start stays inside the support.

What the rule does not see: a *direction* of the latent space that only the left-out rows inform
while each entry along it is also informed by training rows (e.g. a product of two latents that
appear separately elsewhere); the refit moves such entries by the training gradient, and its
steps decide how much of the warm start remains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers


def event_dims(model, data: dict, values: dict) -> dict[str, int]:
    """The event dimension of each latent site's support (0: elementwise constraint)."""
    tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=values)).get_trace(data)
    return {n: int(tr[n]["fn"].support.event_dim) for n in values if n in tr and tr[n]["type"] == "sample"}


def gradient_fn(row_ll):
    """Jitted ``(values, weights, summaries) -> d/d values of sum_r weights_r * loglik_r(values)``.

    ``row_ll``: the engine's ``fn(samples, overrides) -> (draws, rows)``; ``values``: site ->
    array without a draw axis. Weights are data, so every fold shares one compiled program.
    """

    def weighted(values, weights, summaries):
        samples = {k: v[None] for k, v in values.items()}
        return jnp.sum(row_ll(samples, summaries)[0] * weights)

    return jax.jit(jax.grad(weighted))


def reset_mask(grad_train: dict, grad_held: dict, event_dim: dict[str, int]) -> dict[str, np.ndarray]:
    """Per site, True for entries informed by the left-out rows only (see the module docstring).

    A non-finite gradient counts as non-zero (an entry the training rows may inform keeps its start).
    """
    out = {}
    for name in grad_train:
        g_tr, g_held = np.asarray(grad_train[name]), np.asarray(grad_held[name])
        untouched = g_tr == 0                               # NaN != 0: counts as informed
        informed = g_held != 0
        ev = int(event_dim.get(name, 0))
        if ev and g_tr.ndim >= ev:
            axes = tuple(range(g_tr.ndim - ev, g_tr.ndim))
            mask = np.all(untouched, axis=axes) & np.any(informed, axis=axes)
            mask = np.broadcast_to(np.expand_dims(mask, axes), g_tr.shape)
        else:
            mask = untouched & informed
        out[name] = np.array(mask)
    return out


def warm_values(warm: dict, mask: dict) -> dict:
    """``warm`` with the masked entries set to NaN (they start as a fresh fit starts them)."""
    return {k: np.where(mask[k], np.nan, v) if k in mask and mask[k].any() else v for k, v in warm.items()}
