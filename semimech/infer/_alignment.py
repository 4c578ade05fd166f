"""Align posterior draws between a training design and a prediction design, by name.

Every plate that indexes conditions or treatments gets a map from the prediction design's
entries to the training ones (-1: unseen) and a canonical name per entry (its identity, not
its label: ``"A+B"`` and ``"B+A"`` are one condition). Fresh draws for unseen entries are
keyed by those names, so a condition's prediction does not depend on what else is predicted
in the same call (one call over many contexts equals one call per context, draw for draw).
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

from semimech.data._structure import context_cells, level_pairs


def _cond_name(levels: frozenset, context) -> str:
    return "+".join(sorted(levels)) + ("" if context is None else f"@{context}")


def _named(d) -> dict[str, list]:
    """Canonical identity of every entry of each alignable plate of design ``d``."""
    pairs = level_pairs(d.target_matrix)
    pair_names = [frozenset((d.targets[i], d.targets[j])) for i, j in pairs]
    out = {"perturbations": [_cond_name(*k) for k in d.condition_keys()], "targets": list(d.targets),
           "target_pairs": ["|".join(sorted(p)) for p in pair_names]}
    if d.contexts is not None:
        ct, cp = context_cells(d.target_matrix, d.perturbation_context)
        out["contexts"] = list(d.contexts)
        out["context_targets"] = [f"{d.targets[t]}@{d.contexts[k]}" for k, t in ct]
        out["context_pairs"] = [f"{'|'.join(sorted(pair_names[q]))}@{d.contexts[k]}" for k, q in cp]
    return out


def alignment(train, pdesign) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """``(maps, names)``: per plate, training index of each prediction entry (-1 unseen), and entry names."""
    t, p = _named(train), _named(pdesign)
    maps = {}
    for dim, names in p.items():
        if dim not in t:
            continue
        code = {k: i for i, k in enumerate(t[dim])}
        maps[dim] = np.array([code.get(k, -1) for k in names], dtype=np.int64)
    return maps, p


def _hash(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def fresh_normal(rng_key, site: str, names: list[str], shape: tuple[int, ...], axis: int, dtype) -> np.ndarray:
    """Standard-normal draws of ``shape`` whose slice ``i`` along ``axis`` is keyed by ``(site, names[i])``."""
    site_key = jax.random.fold_in(rng_key, _hash(site))
    keys = jax.vmap(lambda h: jax.random.fold_in(site_key, h))(np.array([_hash(n) for n in names], dtype=np.uint32))
    rest = tuple(s for i, s in enumerate(shape) if i != axis)
    draws = jax.vmap(lambda k: jax.random.normal(k, rest))(keys)  # (entries, *rest)
    return np.moveaxis(np.asarray(draws, dtype=dtype), 0, axis)
