r"""Synthetic perturbation screens with known ground truth.

:func:`simulate_screen` draws a cells x genes screen from the additive generative model

.. math::

    \log \mu_{cg} = b_g + \sum_{t \in p(c)} \delta_{tg} + \iota_{p(c) g} + \beta_{k(c) g},
    \qquad y_{cg} \sim \mathrm{NB}(s_c \mu_{cg}, \phi_g)

(``likelihood="negbin"``; counts) or :math:`y_{cg} \sim N(\ldots, \sigma_g)` on the data
scale (``likelihood="normal"``), with sparse target effects :math:`\delta`, an optional
interaction :math:`\iota` for combinations, batch offsets :math:`\beta` and library sizes
:math:`s`. Defaults follow a genome-wide CRISPR screen's proportions: about 9% non-zero
entries at 2,000 genes, a few percent control cells, each target moving a few percent of genes.

Counts are generated in chunks of rows straight into CSR form (one uniform per entry decides
zero / non-zero against the exact NB zero probability; non-zeros are drawn from the
zero-truncated NB by inverse CDF, high means by Gamma-Poisson), so memory stays near the size
of the sparse result: 10^6 cells x 2,000 genes take about 1.5 GB.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from jaxtyping import Float

from semimech._rng import as_key
from semimech.errors import DesignError

__all__ = ["ScreenTruth", "SimulatedScreen", "simulate_screen"]

_CHUNK_ROWS = 512
_GAMMA_POISSON_ABOVE = 5.0  # entries with a larger mean are drawn by Gamma-Poisson
_WORKERS = None  # threads for count generation (None: one per core, at most 8)


@dataclasses.dataclass(frozen=True, eq=False)
class ScreenTruth:
    """The parameters a screen was simulated from.

    Attributes
    ----------
    likelihood
        ``"negbin"`` or ``"normal"``.
    genes, targets, perturbations, batches
        Labels; ``perturbations`` starts with the control label.
    baseline
        ``(genes,)``: control log mean (negbin, per unit library size) or control mean (normal).
    effects
        ``(targets, genes)``: effect of each target (log fold change, or data units).
    interaction
        ``(perturbations, genes)``: non-additive residual of each condition (zero for singles).
    target_matrix
        ``(perturbations, targets)`` 0/1: which targets each condition edits.
    dispersion
        ``(genes,)``: NB concentration phi (variance ``mu + mu^2 / phi``) or Gaussian noise sd.
    batch_offsets
        ``(batches, genes)``: additive offsets on the latent scale.
    library_size
        ``(cells,)``: true size factor of each cell (ones for ``normal``).
    """

    likelihood: str
    genes: tuple[str, ...]
    targets: tuple[str, ...]
    perturbations: tuple[str, ...]
    batches: tuple[str, ...]
    baseline: Float[np.ndarray, " genes"]
    effects: Float[np.ndarray, "targets genes"]
    interaction: Float[np.ndarray, "perturbations genes"]
    target_matrix: Float[np.ndarray, "perturbations targets"]
    dispersion: Float[np.ndarray, " genes"]
    batch_offsets: Float[np.ndarray, "batches genes"]
    library_size: Float[np.ndarray, " cells"]

    @property
    def latent(self) -> Float[np.ndarray, "perturbations genes"]:
        """Latent location of each condition (no batch): baseline + effects + interaction."""
        return self.baseline + self.target_matrix @ self.effects + self.interaction

    @property
    def mean(self) -> Float[np.ndarray, "perturbations genes"]:
        """Mean of each condition on the data scale (per unit library size, no batch)."""
        return np.exp(self.latent) if self.likelihood == "negbin" else self.latent


class SimulatedScreen(NamedTuple):
    """A simulated screen: the AnnData (``obs`` columns ``perturbation``, ``batch``) and its truth."""

    adata: object
    truth: ScreenTruth


def simulate_screen(*, n_cells: int, n_genes: int, n_targets: int, rng_key, n_batches: int = 1,
                    frac_control: float = 0.05, effect_sparsity: float = 0.05, effect_sd: float = 0.5,
                    knockdown: float = -1.5, moi: float = 1.0, combos: int = 0, interaction_sd: float = 0.0,
                    batch_sd: float = 0.2, density: float = 0.09, likelihood: str = "negbin",
                    control: str = "control") -> SimulatedScreen:
    """Simulate a perturbation screen with known effects.

    Parameters
    ----------
    n_cells, n_genes, n_targets
        Size of the screen. Targets are named after the first ``n_targets`` genes (a CRISPRi
        screen: each target's own gene is knocked down by ``knockdown``) when
        ``n_targets <= n_genes``, else ``T0000, T0001, ...``.
    rng_key
        Int seed or JAX key; the same key gives the same screen.
    n_batches
        Batches (lanes); cells are spread uniformly, controls in every batch.
    frac_control
        Fraction of control cells.
    effect_sparsity
        Fraction of genes each target moves; those effects are ``Normal(0, effect_sd)``.
    knockdown
        Effect of a target on its own gene (log scale for counts); 0 to switch off.
    moi
        Mean number of targets per perturbed cell. ``1`` (default): one condition per cell,
        drawn uniformly from the singles and the ``combos`` designed pairs. Above 1, each
        perturbed cell gets ``1 + Poisson(moi - 1)`` distinct random targets (at most 3).
    combos
        Number of designed two-target conditions added to the singles (``moi == 1``).
    interaction_sd
        Sd of the per-gene interaction of conditions with two or more targets.
    batch_sd
        Sd of batch x gene offsets.
    density
        Target fraction of non-zero counts (``negbin``); the baseline level is set to hit it.
    likelihood
        ``"negbin"`` (sparse CSR counts) or ``"normal"`` (dense, continuous; for small
        screens).
    control
        Label of control cells.

    Returns
    -------
    SimulatedScreen
        ``(adata, truth)``.
    """
    _check(n_cells, n_genes, n_targets, n_batches, frac_control, effect_sparsity, moi, combos, density, likelihood)
    import anndata as ad
    import pandas as pd

    seed = [int(x) for x in np.asarray(as_key(rng_key))]
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    genes = tuple(f"G{i:05d}" for i in range(n_genes))
    targets = genes[:n_targets] if n_targets <= n_genes else tuple(f"T{i:05d}" for i in range(n_targets))
    batches = tuple(f"b{i}" for i in range(n_batches))

    effects = np.where(rng.random((n_targets, n_genes)) < effect_sparsity,
                       rng.normal(0.0, effect_sd, (n_targets, n_genes)), 0.0)
    if n_targets <= n_genes and knockdown != 0.0:
        effects[np.arange(n_targets), np.arange(n_targets)] = knockdown
    labels = _assign(rng, n_cells, targets, frac_control, moi, combos, control)
    perturbations = (control,) + tuple(sorted(set(labels) - {control}))
    pidx = pd.Categorical(labels, categories=perturbations).codes.astype(np.int64)
    tcode = {t: i for i, t in enumerate(targets)}
    tm = np.zeros((len(perturbations), n_targets))
    for i, p in enumerate(perturbations[1:], start=1):
        tm[i, [tcode[t] for t in p.split("+")]] = 1.0
    interaction = np.where(tm.sum(1, keepdims=True) >= 2,
                           rng.normal(0.0, 1.0, (len(perturbations), n_genes)) * interaction_sd, 0.0)
    bidx = rng.integers(0, n_batches, n_cells)
    batch_offsets = rng.normal(0.0, batch_sd, (n_batches, n_genes)) if n_batches > 1 else np.zeros((1, n_genes))

    if likelihood == "negbin":
        library = np.exp(rng.normal(0.0, 0.3, n_cells))
        dispersion = np.exp(rng.normal(np.log(2.0), 0.5, n_genes))
        spread = rng.normal(0.0, 1.5, n_genes)
        baseline = _calibrate(spread, dispersion, library, density)
    else:
        library = np.ones(n_cells)
        dispersion = np.exp(rng.normal(np.log(0.5), 0.3, n_genes))
        baseline = rng.normal(1.0, 1.0, n_genes)
    truth = ScreenTruth(likelihood=likelihood, genes=genes, targets=targets, perturbations=perturbations,
                        batches=batches, baseline=baseline, effects=effects, interaction=interaction,
                        target_matrix=tm, dispersion=dispersion, batch_offsets=batch_offsets,
                        library_size=library)
    latent = truth.latent.astype(np.float32)
    if likelihood == "negbin":
        X = _counts(seed, latent, batch_offsets.astype(np.float32), dispersion.astype(np.float32), library, pidx, bidx)
    else:
        z = rng.standard_normal((n_cells, n_genes), dtype=np.float32)
        X = latent[pidx] + batch_offsets.astype(np.float32)[bidx] + z * dispersion.astype(np.float32)
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels, categories=perturbations),
                        "batch": pd.Categorical.from_codes(bidx, categories=batches)},
                       index=pd.Index([f"c{i:07d}" for i in range(n_cells)]))
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    return SimulatedScreen(adata, truth)


def _check(n_cells, n_genes, n_targets, n_batches, frac_control, effect_sparsity, moi, combos, density, likelihood):
    if likelihood not in ("negbin", "normal"):
        raise DesignError(f"likelihood must be 'negbin' or 'normal', got {likelihood!r}.")
    for name, val in (("n_cells", n_cells), ("n_genes", n_genes), ("n_targets", n_targets), ("n_batches", n_batches)):
        if int(val) != val or val < 1:
            raise DesignError(f"{name} must be a positive integer, got {val!r}.")
    if not 0.0 < frac_control < 1.0:
        raise DesignError(f"frac_control must lie in (0, 1), got {frac_control}.")
    if not 0.0 <= effect_sparsity <= 1.0:
        raise DesignError(f"effect_sparsity is a fraction of genes in [0, 1], got {effect_sparsity}.")
    if moi < 1.0:
        raise DesignError(f"moi is the mean number of targets per perturbed cell, at least 1; got {moi}.")
    if combos < 0 or combos > n_targets * (n_targets - 1) // 2:
        raise DesignError(f"combos must be between 0 and {n_targets * (n_targets - 1) // 2} for {n_targets} targets.")
    if not 0.0 < density < 1.0:
        raise DesignError(f"density is a fraction of non-zero counts in (0, 1), got {density}.")


def _assign(rng, n_cells, targets, frac_control, moi, combos, control):
    """Condition label of each cell (strings; combinations join sorted targets with '+')."""
    is_ctrl = rng.random(n_cells) < frac_control
    n_pert = int((~is_ctrl).sum())
    T = len(targets)
    if moi == 1.0:
        pairs = set()
        while len(pairs) < combos:
            a, b = rng.choice(T, 2, replace=False)
            pairs.add((min(a, b), max(a, b)))
        conds = list(targets) + [f"{targets[a]}+{targets[b]}" for a, b in sorted(pairs)]
        pick = np.asarray(conds, dtype=object)[rng.integers(0, len(conds), n_pert)]
    else:
        k = np.minimum(1 + rng.poisson(moi - 1.0, n_pert), min(3, T))
        pick = np.empty(n_pert, dtype=object)
        for j, kk in enumerate(k):
            pick[j] = "+".join(sorted(targets[i] for i in rng.choice(T, kk, replace=False)))
    labels = np.full(n_cells, control, dtype=object)
    labels[~is_ctrl] = pick
    return labels


def _calibrate(spread, phi, library, density, iters: int = 60):
    """Baseline log means ``m + spread`` with ``m`` set so the mean NB non-zero fraction is ``density``."""
    s = np.quantile(library, np.linspace(0.01, 0.99, 25))

    def frac(m):
        mu = s[:, None] * np.exp(m + spread)[None, :]
        return float(np.mean(1.0 - np.exp(-phi * np.log1p(mu / phi))))

    lo, hi = -20.0, 10.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if frac(mid) < density else (lo, mid)
    return 0.5 * (lo + hi) + spread


def _counts(seed, latent, offsets, phi, library, pidx, bidx) -> sp.csr_matrix:
    """NB counts in CSR, drawn chunk by chunk on a thread per core.

    Each chunk of rows has its own random stream (spawned from ``seed`` and the chunk index),
    so the result does not depend on the number of threads.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    n, G = len(pidx), latent.shape[1]
    mu_over_phi = np.exp(latent[:, None, :] + offsets[None, :, :]) / phi  # perturbations x batches x genes
    lib = library.astype(np.float32)

    def chunk(c):
        start, stop = c * _CHUNK_ROWS, min((c + 1) * _CHUNK_ROWS, n)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(c,)))
        t = mu_over_phi[pidx[start:stop], bidx[start:stop]]            # rows x genes: mu / phi
        t *= lib[start:stop, None]
        u = rng.random(t.shape, dtype=np.float32)
        p0 = np.log1p(t)                                                 # P(0) = (1 + mu/phi)^-phi
        p0 *= -phi
        np.exp(p0, out=p0)
        flat = np.flatnonzero(u > p0)
        rows, cols = np.divmod(flat, G)
        vals = _truncated_nb(rng, t.ravel()[flat].astype(np.float64), phi[cols].astype(np.float64),
                             u.ravel()[flat].astype(np.float64), p0.ravel()[flat].astype(np.float64))
        return vals.astype(np.float32), cols.astype(np.int32), np.bincount(rows, minlength=stop - start)

    n_chunks = -(-n // _CHUNK_ROWS)
    with ThreadPoolExecutor(max_workers=_WORKERS or min(os.cpu_count() or 1, 8)) as pool:
        parts = list(pool.map(chunk, range(n_chunks)))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate([p[2] for p in parts]))])
    data = np.concatenate([p[0] for p in parts])
    indices = np.concatenate([p[1] for p in parts])
    del parts
    return sp.csr_matrix((data, indices, indptr), shape=(n, G))


def _truncated_nb(rng, t, phi, u, p0):
    """Counts >= 1 given ``u > P(0)``: inverse CDF for small means, Gamma-Poisson above.

    ``t`` is mu / phi. Given ``u > P(0)``, the inverse CDF at ``u`` is a draw of the
    zero-truncated NB; entries with a large mean (long search) are drawn afresh from the
    zero-truncated NB by Gamma-Poisson with zeros redrawn (rare at those means).
    """
    q = t / (1.0 + t)                                                    # mu / (phi + mu)
    pk = p0 * phi * q                                                    # P(1)
    cdf = p0 + pk
    out = np.ones(len(t))
    big = t * phi > _GAMMA_POISSON_ABOVE
    active = np.flatnonzero((u > cdf) & ~big)
    k = 1.0
    while active.size:
        k += 1.0
        pa = pk[active] * ((k - 1.0 + phi[active]) / k * q[active])
        pk[active] = pa
        ca = cdf[active] + pa
        cdf[active] = ca
        more = (u[active] > ca) & (pa > 1e-300)                          # stop at float rounding in the far tail
        out[active[~more]] = k
        active = active[more]
    if big.any():
        tb, pb = t[big], phi[big]
        draw = rng.poisson(rng.gamma(pb, tb))
        while (zero := draw == 0).any():
            draw[zero] = rng.poisson(rng.gamma(pb[zero], tb[zero]))
        out[big] = draw
    return out
