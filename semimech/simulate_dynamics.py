"""Synthetic perturbation time courses from a known gene-regulatory ODE.

The truth is :func:`semimech.dynamics.production_decay_field`,
``dx/dt = alpha * s * sigmoid(W x + b + M m) - gamma * x``, with a random sparse ``W``.
Perturbations are knockdowns (``s_j = 1 - efficacy`` for each target ``j``) of single genes
and pairs, applied at time 0.

- **Non-differentiating** (``differentiating=False``): cells start at the unperturbed fixed
  point ``x*`` in maintenance medium (``m = 0``); controls stay there at every time.
- **Differentiating** (``differentiating=True``): at time 0 a cue switches the medium to
  ``m = 1`` for every condition (the perturbation arrives with the cue); controls leave
  ``x*`` and move towards the cued fixed point, so every time point needs its own controls.

The returned :class:`~semimech.timecourse.TimeCourseDesign` encodes each condition by
covariates ``u = [cue, target indicators]`` (``cue`` only when differentiating), which is
what a learned field sees; the truth keeps the mechanistic parameters.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from semimech._rng import as_key
from semimech.dynamics import Intervention, ProductionDecayParams, production_decay_field, trajectory
from semimech.errors import DesignError
from semimech.timecourse import TimeCourseDesign, check_time_grid, time_course_design

__all__ = ["DynamicsTruth", "simulate_time_course", "true_trajectories"]


class DynamicsTruth(NamedTuple):
    """What a time course was simulated from.

    Attributes
    ----------
    params
        The :class:`~semimech.dynamics.ProductionDecayParams` (``M`` is ``(n, 1)``: the cue).
    x_star
        Unperturbed fixed point in maintenance medium (the initial state).
    efficacy
        Knockdown efficacy (``s = 1 - efficacy`` on each target's production).
    targets
        Per condition, the indices of its knocked-down genes (the control: none).
    cue
        Medium after time 0 (0: maintenance, non-differentiating; 1: cue).
    noise_sd
        Gaussian measurement noise sd.
    """

    params: ProductionDecayParams
    x_star: np.ndarray
    efficacy: float
    targets: tuple
    cue: float
    noise_sd: float


def _random_params(key, n: int, density: float) -> ProductionDecayParams:
    k = jax.random.split(key, 5)
    mask = jax.random.bernoulli(k[0], density, (n, n)) & ~jnp.eye(n, dtype=bool)
    W = jnp.where(mask, 2.0 * jax.random.normal(k[1], (n, n)), 0.0)
    b = jax.random.normal(k[2], (n,))
    alpha = jax.random.uniform(k[3], (n,), minval=1.0, maxval=2.0)
    M = 2.0 * jax.random.normal(k[4], (n, 1))
    return ProductionDecayParams(W=W, b=b, alpha=alpha, gamma=jnp.ones((n,)), M=M)


def _edit(n: int, targets, efficacy: float) -> Intervention:
    s = np.ones(n)
    s[list(targets)] = 1.0 - efficacy
    return Intervention.scale(jnp.asarray(s, jnp.float32))


def true_trajectories(truth: DynamicsTruth, times) -> np.ndarray:
    """Noise-free states ``(conditions, times, n)`` of every condition at ``times`` (h)."""
    times = check_time_grid(times)
    n = truth.x_star.shape[0]
    xs, ok = _run(truth.params, jnp.asarray(truth.x_star), jnp.asarray(times, jnp.float32),
                  _edits(n, truth.targets, truth.efficacy), truth.cue)
    if not bool(np.all(ok)):
        raise DesignError("simulate: a true trajectory failed to integrate; try another rng_key.")
    return np.asarray(xs)


def _edits(n, targets, efficacy):
    return jax.tree.map(lambda *a: jnp.stack(a), *[_edit(n, tg, efficacy) for tg in targets])


@jax.jit
def _run(params, x0, ts, edits, cue):
    def one(e):
        tr = trajectory(production_decay_field, params, x0=x0, ts=ts, t0=0.0,
                        media=jnp.full((1,), cue, ts.dtype), intervention=e)
        return tr.xs, tr.ok
    return jax.vmap(one)(edits)


def simulate_time_course(
    *,
    rng_key,
    n_genes: int = 5,
    differentiating: bool = False,
    times=(0.0, 0.5, 1.0, 2.0, 4.0),
    n_pairs: int = 6,
    n_replicates: int = 2,
    efficacy: float = 0.8,
    noise_sd: float = 0.05,
    density: float = 0.4,
) -> tuple[TimeCourseDesign, DynamicsTruth]:
    """Simulate control, single-gene and pair knockdown time courses.

    Parameters
    ----------
    rng_key
        Seed of the network, the pairs drawn and the noise.
    n_genes
        State size.
    differentiating
        Apply a cue at time 0 (controls move) instead of staying in maintenance medium.
    times
        Measurement times (h), strictly increasing, starting at 0 or later.
    n_pairs
        Number of distinct pairs of knocked-down genes (drawn at random).
    n_replicates
        Samples per condition and time.
    efficacy, noise_sd, density
        Knockdown efficacy, measurement noise sd (abundance), density of ``W``.

    Returns
    -------
    ``(design, truth)``; condition labels are ``"control"``, ``"g1"``, ``"g1+g3"``, ...
    """
    times = check_time_grid(times)
    if n_genes < 2 or n_replicates < 1 or not 0 < efficacy <= 1 or noise_sd < 0:
        raise DesignError("simulate_time_course needs n_genes >= 2, n_replicates >= 1, 0 < efficacy <= 1, noise_sd >= 0.")
    key = as_key(rng_key)
    k_par, k_pairs, k_noise = jax.random.split(key, 3)
    params = _random_params(k_par, n_genes, density)
    # the unperturbed fixed point: integrate long in maintenance medium (same compiled solve as below)
    x_star = _run(params, jnp.ones(n_genes), jnp.asarray(times * (50.0 / times[-1]), jnp.float32),
                  _edits(n_genes, ((),), 1.0), 0.0)[0][0, -1]
    if not bool(jnp.all(jnp.abs(production_decay_field(x_star, params, media=jnp.zeros(1))) < 1e-3)):
        raise DesignError("simulate: the unperturbed system did not settle at a fixed point; try another rng_key.")
    all_pairs = list(itertools.combinations(range(n_genes), 2))
    pick = np.asarray(jax.random.permutation(k_pairs, len(all_pairs)))[: min(n_pairs, len(all_pairs))]
    targets = ((),) + tuple((j,) for j in range(n_genes)) + tuple(all_pairs[i] for i in sorted(pick))
    truth = DynamicsTruth(params=params, x_star=np.asarray(x_star), efficacy=efficacy, targets=targets,
                          cue=1.0 if differentiating else 0.0, noise_sd=noise_sd)
    X = true_trajectories(truth, times)  # (C, T, n)
    genes = [f"g{j}" for j in range(n_genes)]
    labels = ["control"] + ["+".join(genes[j] for j in tg) for tg in targets[1:]]
    C, T = X.shape[:2]
    cond = np.repeat(np.arange(C), T * n_replicates)
    tidx = np.tile(np.repeat(np.arange(T), n_replicates), C)
    y = X[cond, tidx] + noise_sd * np.asarray(jax.random.normal(k_noise, (cond.size, n_genes)))
    covs = {}
    for lab, tg in zip(labels, targets):
        ind = np.zeros(n_genes)
        ind[list(tg)] = 1.0
        covs[lab] = np.concatenate([[1.0], ind]) if differentiating else ind
    names = (["cue"] if differentiating else []) + [f"kd:{g}" for g in genes]
    design = time_course_design(
        y, time=times[tidx], condition=np.asarray(labels)[cond], covariates=covs, control="control",
        readouts=genes, covariate_names=names, differentiating=differentiating,
    )
    return design, truth
