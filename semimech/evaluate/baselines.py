"""Simple baselines that every model must be compared with (pure numpy).

Each baseline takes the training design and the labels to predict (a list, or a test design
whose non-control labels are used) and returns a :class:`PointPrediction` of means,
``(perturbations, genes)``, on the data scale: a control mean plus a predicted change. Changes
come from the training pseudobulk (:func:`perturbation_effects`: perturbation mean minus control
mean, taken within each batch when there are batches). ``batch=`` predicts for one batch or
context (a cell line): its control mean is the reference, so effects learned in other cell
lines are *transferred* to it (:func:`semimech.evaluate.transfer`).

Sources
-------
- *No change* and *additive*: the two baselines of Ahlmann-Eltze, Huber & Anders (2025),
  "Deep-learning-based gene perturbation effect prediction does not yet outperform simple
  linear baselines", Nat Methods 22, 1657-1661, doi:10.1038/s41592-025-02772-6.
- *Training mean*: the mean of the training perturbations ("nonctl-mean" in Systema,
  Viñas Torné et al. 2025, Nat Biotechnol).
- *Linear*: the linear model of Ahlmann-Eltze et al. (2025), see :func:`linear`.
- *Strongest single* (``min_single``): the "min" bar for inhibitor combinations in the shared
  data README (HepG2, Saez-Rodriguez et al. 2011, Cancer Res), see :func:`min_single`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from semimech.data.design import Design
from semimech.errors import DesignError
from semimech.evaluate._align import PointPrediction, control_mean, held_out_labels, perturbation_effects

__all__ = ["BASELINES", "DEFAULT_BASELINES", "additive", "linear", "min_single", "no_change", "single_effects",
           "train_mean"]


def _labels(labels) -> tuple[str, ...]:
    if isinstance(labels, Design):
        return held_out_labels(labels)
    if isinstance(labels, str):
        return (labels,)
    out = tuple(str(x) for x in labels)
    if not out:
        raise DesignError("no labels to predict.")
    return out


def _check(train: Design, labels: tuple[str, ...]) -> None:
    for lab in labels:
        for t in train.targets_of(lab):
            if t not in train.targets:
                raise DesignError(f"target {t!r} of {lab!r} is not a target of the training design's encoding "
                                  f"({list(train.targets)[:20]}); split designs with semimech.evaluate splits.")


def no_change(train: Design, labels, *, batch: str | None = None) -> PointPrediction:
    """Predict the training control mean (of ``batch``) for every perturbation ("no change")."""
    labels = _labels(labels)
    ctrl = control_mean(train, batch=batch)
    return PointPrediction(labels, train.genes, np.tile(ctrl, (len(labels), 1)), "no_change")


def train_mean(train: Design, labels, *, batch: str | None = None) -> PointPrediction:
    """Predict the mean of the training perturbations (controls excluded, equal weight each).

    Without batches this is the mean of the training perturbation means; in general it is the
    control mean plus the average training change.
    """
    labels = _labels(labels)
    obs, eff = perturbation_effects(train)
    pert = [i for i, p in enumerate(obs) if p != train.control]
    if not pert:
        raise DesignError("the training design has no perturbed rows; train_mean needs some.")
    value = control_mean(train, batch=batch) + eff[pert].mean(0)
    return PointPrediction(labels, train.genes, np.tile(value, (len(labels), 1)), "train_mean")


def single_effects(train: Design) -> dict[str, np.ndarray]:
    """Observed effect of each target perturbed alone in training: single mean minus control mean."""
    obs, eff = perturbation_effects(train)
    return {train.targets_of(p)[0]: eff[i] for i, p in enumerate(obs) if len(train.targets_of(p)) == 1}


def additive(train: Design, labels, *, batch: str | None = None) -> PointPrediction:
    """Control mean plus the sum of the observed single-perturbation effects of each target.

    ``prediction(A+B) = control + (mean(A) - control) + (mean(B) - control)`` on the data scale
    (log-normalised expression for the shipped data). A target never perturbed alone in
    training contributes no change; such targets are listed in ``info["missing_singles"]``.
    """
    labels = _labels(labels)
    _check(train, labels)
    ctrl = control_mean(train, batch=batch)
    eff = single_effects(train)
    values = np.tile(ctrl, (len(labels), 1))
    missing = {}
    for r, lab in enumerate(labels):
        for t in train.targets_of(lab):
            if t in eff:
                values[r] += eff[t]
            else:
                missing.setdefault(lab, []).append(t)
    return PointPrediction(labels, train.genes, values, "additive", {"missing_singles": missing})


def min_single(train: Design, labels, *, batch: str | None = None) -> PointPrediction:
    """Per readout, the lowest of the combination's single-perturbation means ("strongest inhibitor").

    For inhibitor combinations on phospho-protein readouts (the HepG2 CancerRes 2011 task of
    the shared data README, where it scores RMSE 0.194 against 0.284 for additive): the
    combination is predicted to inhibit each readout as much as its strongest single inhibitor,
    a saturating (non-additive) assumption. Singles are ``control + single effect``; targets
    never perturbed alone are skipped (``info["missing_singles"]``), and a label without any
    single gets the control mean.
    """
    labels = _labels(labels)
    _check(train, labels)
    ctrl = control_mean(train, batch=batch)
    eff = single_effects(train)
    values, missing = np.tile(ctrl, (len(labels), 1)), {}
    for r, lab in enumerate(labels):
        parts = train.targets_of(lab)
        have = [ctrl + eff[t] for t in parts if t in eff]
        if len(have) < len(parts):
            missing[lab] = [t for t in parts if t not in eff]
        if have:
            values[r] = np.min(have, axis=0)
    return PointPrediction(labels, train.genes, values, "min_single", {"missing_singles": missing})


def linear(train: Design, labels, *, n_components: int = 10, ridge: float = 0.1, embedding: str = "genes",
           target_embedding: Mapping[str, Sequence[float]] | None = None, batch: str | None = None
           ) -> PointPrediction:
    """The linear model of Ahlmann-Eltze, Huber & Anders (2025), pseudobulk version.

    What is implemented (following the paper's ``run_linear_pretrained_model.R`` with
    ``gene_embedding = pert_embedding = "training_data"``, and its double-perturbation variant):

    1. ``X``: genes x conditions matrix of training pseudobulk means (control included);
       ``Y = X - control mean`` (the change). With batches, ``X = control + change`` with
       the batch-averaged changes of :func:`perturbation_effects`.
    2. Gene embedding ``G`` (genes x K): the first K principal-component scores of ``X`` with
       genes as observations (each condition column centred), K = ``n_components`` (10),
       capped at the matrix rank.
    3. Perturbation embedding: the row of ``G`` for each perturbed gene; the control is zero;
       a combination is the sum of its targets' rows (the paper's double script). Targets that
       are not readout genes take ``target_embedding[target]`` if given, else have no
       embedding: conditions containing them are left out of the fit (as the paper's ``NA``
       matches) and predicted with a zero embedding, i.e. ``b`` (listed in
       ``info["unembedded"]``). With ``embedding="singles"`` (our extension, not in the
       paper) a target that is not a readout gene but was perturbed alone in training is
       embedded by least squares of its observed single change on ``G``: ``argmin_p |y_t - G p|``.
    4. Solve ``Y ≈ G W P^T + b`` with ``b`` the row means of ``Y`` over the fitted conditions and
       ridge ``λ`` (0.1) on both sides:
       ``W = (G^T G + λI)^-1 G^T (Y - b) P (P^T P + λI)^-1``.
    5. Predict ``control + b + G W p`` for a perturbation with embedding ``p`` (``control``: the
       control mean of ``batch`` when given).

    Differences from the paper's code: it uses truncated PCA (irlba); we use an exact SVD. The
    paper's double script embeds singles as twice their row and trains on the first target only
    (``pert_matches1`` twice); we use the sum of the targets' rows throughout.
    """
    labels = _labels(labels)
    _check(train, labels)
    if ridge < 0 or n_components < 1:
        raise DesignError("linear needs n_components >= 1 and ridge >= 0.")
    obs, eff = perturbation_effects(train)
    ctrl = control_mean(train)
    X = ctrl + eff
    Xg = X.T  # genes x conditions
    centred = Xg - Xg.mean(axis=0, keepdims=True)
    U, S, _ = np.linalg.svd(centred, full_matrices=False)
    k = int(min(n_components, int(np.sum(S > S[0] * 1e-10)) if S.size and S[0] > 0 else 0))
    if k == 0:
        raise DesignError("the training pseudobulk matrix has rank 0; linear needs varying training conditions.")
    G = U[:, :k] * S[:k]
    gene_row = {g: i for i, g in enumerate(train.genes)}
    emb = {t: G[gene_row[t]] for t in train.targets if t in gene_row}
    if embedding not in ("genes", "singles"):
        raise DesignError(f"embedding must be 'genes' or 'singles', got {embedding!r}.")
    if embedding == "singles":
        for t, y_t in single_effects(train).items():
            emb.setdefault(t, np.linalg.lstsq(G, y_t, rcond=None)[0])
    for t, vec in (target_embedding or {}).items():
        vec = np.asarray(vec, dtype=float)
        if vec.shape != (k,):
            raise DesignError(f"target_embedding[{t!r}] must have length {k} (the number of components).")
        emb[t] = vec

    def embed(label):
        parts = train.targets_of(label)
        absent = [t for t in parts if t not in emb]
        return sum((emb[t] for t in parts if t in emb), np.zeros(k)), absent

    fitted, P = [], []
    for i, p in enumerate(obs):
        vec, absent = embed(p)
        if not absent:
            fitted.append(i)
            P.append(vec)
    P = np.asarray(P)  # fitted conditions x K
    Y = Xg[:, fitted] - ctrl[:, None]
    b = Y.mean(axis=1)
    lam = np.eye(k) * ridge
    W = np.linalg.solve(G.T @ G + lam, G.T @ (Y - b[:, None]) @ P) @ np.linalg.pinv(P.T @ P + lam)
    values, unembedded = np.empty((len(labels), train.n_genes)), {}
    ref = control_mean(train, batch=batch)
    for r, lab in enumerate(labels):
        vec, absent = embed(lab)
        if absent:
            unembedded[lab] = absent
        values[r] = ref + b + G @ W @ vec
    info = {"n_components": k, "embedding": embedding, "ridge": ridge,
            "fitted_conditions": [obs[i] for i in fitted], "unembedded": unembedded}
    return PointPrediction(labels, train.genes, values, "linear", info)


BASELINES = {"no_change": no_change, "train_mean": train_mean, "additive": additive, "linear": linear,
             "min_single": min_single}
"""Name -> baseline function ``(train, labels, *, batch=None) -> PointPrediction``."""

DEFAULT_BASELINES = ("no_change", "train_mean", "additive", "linear")
"""The baselines :func:`semimech.evaluate.score_baselines` runs unless told otherwise."""
