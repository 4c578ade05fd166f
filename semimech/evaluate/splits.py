"""Train/test splits of a Design for held-out evaluation (deterministic given ``rng_key``).

Every split returns ``(train, test)`` Designs made with :meth:`Design.subset`, so both keep the
full encodings (all perturbation labels and targets): a model fitted on ``train`` predicts the
labels of ``test`` by label. Control rows go to **both** sides by default: training needs them,
and the test side uses them as the reference for changes (prediction minus control). A split that
leaves the training set without controls raises :class:`~semimech.errors.DesignError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semimech._rng import host_rng
from semimech.data.design import Design
from semimech.errors import DesignError

__all__ = ["leave_one_condition_out", "leave_one_perturbation_out", "leave_one_target_out", "singles_seen",
           "split_combinations", "split_rows", "transfer"]


def split_rows(design: Design, test_mask, *, controls: str = "both") -> tuple[Design, Design]:
    """The generic split: rows in ``test_mask`` are held out.

    Parameters
    ----------
    design
        A design with readouts.
    test_mask
        Boolean array over rows: True for held-out rows.
    controls
        ``"both"`` (default): every control row goes to train and test, whatever the mask says.
        ``"masked"``: control rows follow the mask like any other row (a held-out context keeps
        its own controls in test only); test still needs at least one control row.

    Raises
    ------
    DesignError
        When the mask has the wrong shape, holds out no perturbed row, or the training or test
        set would have no control rows.
    """
    if design.y is None:
        raise DesignError("cannot split a prediction design; split the data design.")
    mask = np.asarray(test_mask)
    if mask.dtype != bool or mask.shape != (design.n_obs,):
        raise DesignError(f"test_mask must be a boolean array with one entry per row ({design.n_obs}), "
                          f"got dtype {mask.dtype} and shape {mask.shape}.")
    if controls not in ("both", "masked"):
        raise DesignError(f"controls must be 'both' or 'masked', got {controls!r}.")
    is_ctrl = design.perturbation_index == 0
    if not np.any(mask & ~is_ctrl):
        raise DesignError("the split holds out no perturbed rows; choose labels or contexts that occur in the design.")
    if np.all(mask | is_ctrl):
        raise DesignError("the split leaves no perturbed rows for training.")
    train_rows = ~mask | (is_ctrl if controls == "both" else False)
    test_rows = mask | (is_ctrl if controls == "both" else False)
    if not np.any(train_rows & is_ctrl):
        raise DesignError(
            f"the split leaves the training set without control ({design.control!r}) rows, so no model can learn "
            "the baseline. Keep controls in training: use controls='both', or hold out fewer contexts.")
    if not np.any(test_rows & is_ctrl):
        raise DesignError("the split leaves the test set without control rows (needed as the reference for "
                          "changes); use controls='both'.")
    return design.subset(train_rows), design.subset(test_rows)


def _rows_of(design: Design, labels: Sequence[str]) -> np.ndarray:
    unknown = [lab for lab in labels if lab not in design.perturbations]
    if unknown:
        raise DesignError(f"perturbations not in the design: {unknown}. Known: {list(design.perturbations)[:20]}.")
    codes = [design.perturbations.index(lab) for lab in labels]
    return np.isin(design.perturbation_index, codes)


def leave_one_perturbation_out(design: Design, label: str) -> tuple[Design, Design]:
    """Hold out every row of one perturbation label (``"KLF1"``, ``"KLF1+MAP2K6"``)."""
    if label == design.control:
        raise DesignError("cannot hold out the control: it is the reference for every change.")
    return split_rows(design, _rows_of(design, [label]))


def leave_one_target_out(design: Design, target: str) -> tuple[Design, Design]:
    """Hold out every condition that edits ``target`` (its single and all its combinations).

    The target is then unseen in training: only models that propagate edits through a network
    can predict it.
    """
    if target not in design.targets:
        raise DesignError(f"{target!r} is not a perturbed target of the design ({list(design.targets)[:20]}).")
    labels = [p for p in design.perturbations if target in design.targets_of(p)]
    return split_rows(design, _rows_of(design, labels))


def leave_one_condition_out(design: Design, label: str, *, conditions: Sequence[str] | None = None
                            ) -> tuple[Design, Design]:
    """Hold out one condition.

    Parameters
    ----------
    design
        The design.
    label
        The condition to hold out.
    conditions
        Optional per-row condition labels (any column, e.g. a stimulus x inhibitor code); by
        default the perturbation labels, which makes this :func:`leave_one_perturbation_out`.
    """
    if conditions is None:
        return leave_one_perturbation_out(design, label)
    cond = np.asarray([str(c) for c in conditions])
    if cond.shape != (design.n_obs,):
        raise DesignError(f"conditions must have one label per row ({design.n_obs}), got {cond.shape}.")
    if label not in set(cond):
        raise DesignError(f"condition {label!r} does not occur in conditions ({sorted(set(cond))[:20]}).")
    return split_rows(design, cond == label)


def transfer(design: Design, *, contexts: Sequence[str] | str, test_contexts: Sequence[str],
             controls: str = "both") -> tuple[Design, Design]:
    """Transfer to an unseen context (cell line, donor, tissue): hold out its perturbed rows.

    Parameters
    ----------
    design
        The design.
    contexts
        Per-row context labels, or ``"batches"`` to use the design's batch labels.
    test_contexts
        The context(s) to hold out.
    controls
        ``"both"`` (default): controls of every context are in training, as when the baseline of the
        new cell line is measured and only its perturbation responses are unseen. ``"masked"``:
        the held-out contexts' controls are in test only (a fully unseen context).
    """
    if isinstance(contexts, str):
        if contexts != "batches" or design.batches is None:
            raise DesignError("contexts must be per-row labels or 'batches' (for a design built with batch_key).")
        ctx = np.asarray(design.batches)[design.batch_index]
    else:
        ctx = np.asarray([str(c) for c in contexts])
    if ctx.shape != (design.n_obs,):
        raise DesignError(f"contexts must have one label per row ({design.n_obs}), got shape {ctx.shape}.")
    test_contexts = [str(c) for c in ([test_contexts] if isinstance(test_contexts, str) else test_contexts)]
    unknown = [c for c in test_contexts if c not in set(ctx)]
    if unknown:
        raise DesignError(f"test contexts {unknown} do not occur (contexts: {sorted(set(ctx))}).")
    return split_rows(design, np.isin(ctx, test_contexts), controls=controls)


def singles_seen(design: Design, labels: Sequence[str] | None = None) -> dict[str, int]:
    """For each combination label, how many of its targets were perturbed alone in ``design``.

    Use it on a training design to stratify held-out combinations (0/1/2 singles seen).
    """
    observed = design.observed_perturbations()
    singles = {design.targets_of(p)[0] for p in observed if len(design.targets_of(p)) == 1}
    labels = [p for p in design.perturbations if len(design.targets_of(p)) >= 2] if labels is None else labels
    return {lab: sum(t in singles for t in design.targets_of(lab)) for lab in labels}


def split_combinations(design: Design, *, singles_seen: int = 2, rng_key=None,
                       test_labels: Sequence[str] | None = None, fraction: float = 1.0) -> tuple[Design, Design]:
    """Hold out combinations, with a chosen number of their single perturbations seen in training.

    Candidates are the observed combinations (two or more targets) whose every target also
    occurs as an observed single perturbation. ``fraction`` of them (all by default) are held out,
    chosen with ``rng_key``. With ``singles_seen`` below 2, ``2 - singles_seen`` randomly chosen
    targets of each held-out combination are hidden (the 0/1/2-seen splits of GEARS, defined on
    doubles; a triple hides as many): their singles, and every other condition that edits them,
    move to the test set too, so those targets are unseen in training. Use :func:`singles_seen`
    on the training design to stratify the scores.

    Parameters
    ----------
    design
        The design.
    singles_seen
        How many of a double's singles stay seen in training (2: all seen, the "combinable"
        task, nothing hidden; 1 or 0: one or both hidden).
    rng_key
        Int seed or key; needed when ``fraction < 1`` or ``singles_seen`` hides targets.
    test_labels
        Hold out exactly these combinations instead of choosing (``singles_seen`` still applies).
    fraction
        Fraction of candidate combinations to hold out.
    """
    observed = design.observed_perturbations()
    single_of = {design.targets_of(p)[0] for p in observed if len(design.targets_of(p)) == 1}
    combos = [p for p in observed if len(design.targets_of(p)) >= 2]
    if singles_seen not in (0, 1, 2):
        raise DesignError(f"singles_seen must be 0, 1 or 2, got {singles_seen}.")
    if test_labels is not None:
        chosen = [str(t) for t in test_labels]
        bad = [t for t in chosen if t not in combos]
        if bad:
            raise DesignError(f"test_labels {bad} are not observed combinations (combinations: {combos}).")
    else:
        candidates = [p for p in combos if all(t in single_of for t in design.targets_of(p))]
        if not candidates:
            raise DesignError("no combination has all of its singles observed; nothing to hold out. "
                              "Pass test_labels explicitly.")
        if not 0 < fraction <= 1:
            raise DesignError(f"fraction must be in (0, 1], got {fraction}.")
        n = max(1, int(round(fraction * len(candidates))))
        if n < len(candidates):
            if rng_key is None:
                raise DesignError("choosing a random subset of combinations needs rng_key (an int seed).")
            idx = np.sort(host_rng(rng_key).choice(len(candidates), size=n, replace=False))
            candidates = [candidates[i] for i in idx]
        chosen = candidates
    hidden: set[str] = set()
    if singles_seen < 2:
        if rng_key is None:
            raise DesignError(f"singles_seen={singles_seen} hides targets at random; pass rng_key (an int seed).")
        rng = host_rng(rng_key)
        for p in chosen:
            parts = list(design.targets_of(p))
            k = min(len(parts), 2 - singles_seen)
            already = [t for t in parts if t in hidden]
            rest = [t for t in parts if t not in hidden]
            extra = max(0, k - len(already))
            if extra:
                hidden.update(rest[i] for i in rng.choice(len(rest), size=extra, replace=False))
    held = set(chosen) | {p for p in observed if hidden & set(design.targets_of(p))}
    held.discard(design.control)
    return split_rows(design, _rows_of(design, sorted(held)))
