"""Perturbation labels -> targets: parsing combination labels and the target matrix."""

from __future__ import annotations

import numpy as np

from semimech.errors import DesignError


def target_gene_index(targets, genes) -> np.ndarray:
    """Column of each target among ``genes``, or -1 for a target that is not a modelled gene."""
    col = {g: i for i, g in enumerate(genes)}
    return np.array([col.get(t, -1) for t in targets], dtype=np.int32)


def parse_label(label: str, control: str, sep: str) -> tuple[str, ...]:
    """The targets a label names (``"A+B"`` -> ``("A", "B")``; the control -> ``()``)."""
    if label == control:
        return ()
    parts = tuple(p.strip() for p in str(label).split(sep))
    if any(p == "" for p in parts):
        raise DesignError(f"malformed perturbation label {label!r} (empty part around {sep!r}).")
    if control in parts:
        parts = tuple(p for p in parts if p != control)
    return parts


def encode_targets(perturbations, control, sep):
    """Sorted targets and the 0/1 ``(perturbations, targets)`` matrix; two labels naming one target set are an error."""
    parsed = [parse_label(p, control, sep) for p in perturbations]
    targets = tuple(sorted({t for parts in parsed for t in parts}))
    code = {t: i for i, t in enumerate(targets)}
    tm = np.zeros((len(perturbations), len(targets)), dtype=np.float32)
    for i, parts in enumerate(parsed):
        for t in parts:
            tm[i, code[t]] = 1.0
    seen = {}
    for p, row in zip(perturbations, tm):
        key = row.tobytes()
        if key in seen and p != control:
            raise DesignError(
                f"labels {seen[key]!r} and {p!r} name the same set of targets; relabel them to one label."
            )
        seen[key] = p
    return targets, tm
