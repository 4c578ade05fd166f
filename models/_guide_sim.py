"""Simulated CRISPR screens with known guide efficacies, escapers and batch effects."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech._rng import as_key


def simulate_guide_screen(rng_key, *, n_cells: int = 3000, n_targets: int = 3, guides_per_target: int = 2,
                          n_control_guides: int = 2, n_genes: int = 12, n_batches: int = 2,
                          efficacy=None, effect_size: float = 1.5, genes_per_target: int = 3,
                          batch_sd: float = 0.4, concentration: float = 5.0, second_guide_prob: float = 0.05,
                          control_share: float | None = None, batches_without_controls=()) -> tuple[ad.AnnData, dict]:
    """Draw a screen from the guide-assignment model's generative story.

    Each cell receives one guide (uniformly, non-targeting guides included) and, with
    probability ``second_guide_prob``, a second one (MOI > 1). Guide UMIs: present
    ``NB(60, 1.5)``, ambient ``NB(0.3, 0.5)``. A present guide edits its cell with probability
    equal to its efficacy; target ``t`` changes ``genes_per_target`` genes (alternating sign)
    by ``effect_size`` on the log scale. Expression ``NB(s exp(base + batch + effects), phi)``.

    Returns
    -------
    ``(adata, truth)``: AnnData with raw counts (CSR), ``obsm["grna_counts"]`` (CSR),
    ``uns["grna_targets"]``, ``obs["batch"]``, ``obs["size_factor"]`` (the true one: with
    few genes, total-count size factors would absorb the effects) and ``obs["top_target"]`` (the
    target of the most-counted guide: a naive label); ``truth`` holds ``efficacy`` (guides,),
    ``escaper_fraction`` (targets,), ``effect`` (targets, genes), ``batch_effect`` (batches,
    genes), ``perturbed`` (cells,) bool, ``target_index`` (cells,), ``guides``, ``targets``.
    """
    rng = np.random.default_rng([int(k) for k in np.asarray(as_key(rng_key))])
    targets = [f"T{t}" for t in range(n_targets)]
    guides = [f"{t}g{j}" for t in targets for j in range(guides_per_target)] + [f"NTg{j}" for j in range(n_control_guides)]
    gt = np.array([t for t in range(n_targets) for _ in range(guides_per_target)] + [-1] * n_control_guides)
    K = len(guides)
    eff = (rng.uniform(0.4, 0.95, K) if efficacy is None else np.broadcast_to(np.asarray(efficacy, float), (K,)).copy())
    eff[gt < 0] = 0.0
    effect = np.zeros((n_targets, n_genes))
    for t in range(n_targets):
        for j in range(genes_per_target):
            effect[t, (t * genes_per_target + j) % n_genes] = effect_size * (1 if j % 2 == 0 else -1)
    batch = rng.integers(0, n_batches, n_cells)
    p_guide = np.ones(K)
    if control_share is not None:
        p_guide[gt < 0] = control_share / max(n_control_guides, 1)
        p_guide[gt >= 0] = (1 - control_share) / max(int((gt >= 0).sum()), 1)
    p_guide = p_guide / p_guide.sum()
    present = np.zeros((n_cells, K), bool)
    present[np.arange(n_cells), rng.choice(K, n_cells, p=p_guide)] = True
    extra = rng.random(n_cells) < second_guide_prob
    present[np.flatnonzero(extra), rng.choice(K, int(extra.sum()), p=p_guide)] = True
    for b in batches_without_controls:  # move control-guide cells of these batches to another batch
        ctrl = present[:, gt < 0].any(1) & (batch == b)
        batch[ctrl] = (b + 1) % n_batches
    edited = present & (rng.random((n_cells, K)) < eff[None])
    z = np.zeros((n_cells, n_targets), bool)
    for k in np.flatnonzero(gt >= 0):
        z[:, gt[k]] |= edited[:, k]
    fg = rng.negative_binomial(1.5, 1.5 / (1.5 + 60.0), (n_cells, K))
    bg = rng.negative_binomial(0.5, 0.5 / (0.5 + 0.3), (n_cells, K))
    gcounts = np.where(present, np.maximum(fg, 1), bg)
    base = rng.normal(np.log(3.0), 0.8, n_genes)
    boff = rng.normal(0.0, batch_sd, (n_batches, n_genes))
    sf = np.exp(rng.normal(0.0, 0.3, n_cells))
    mu = sf[:, None] * np.exp(base + boff[batch] + z.astype(float) @ effect)
    y = rng.negative_binomial(concentration, concentration / (concentration + mu))
    n_with = np.array([present[:, gt == t].any(1).sum() for t in range(n_targets)])
    top = gt[gcounts.argmax(1)]
    obs = pd.DataFrame({"batch": [f"b{b}" for b in batch], "size_factor": sf,
                        "top_target": [targets[t] if t >= 0 else "non-targeting" for t in top]},
                       index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=sp.csr_matrix(y.astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.obsm["grna_counts"] = sp.csr_matrix(gcounts.astype(np.float32))
    adata.uns["grna_targets"] = pd.DataFrame({"target": [targets[t] if t >= 0 else "non-targeting" for t in gt]},
                                             index=pd.Index(guides, name="grna"))
    truth = {"efficacy": eff, "effect": effect, "batch_effect": boff, "perturbed": z.any(1), "guides": guides,
             "targets": targets,
             "escaper_fraction": np.array([1 - eff[gt == t].mean() for t in range(n_targets)]),
             "observed_escaper_fraction": np.array([1 - (z[:, t].sum() / max(n_with[t], 1)) for t in range(n_targets)])}
    return adata, truth
