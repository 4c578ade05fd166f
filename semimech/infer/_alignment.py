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
    """Standard-normal draws of ``shape`` whose slice ``i`` along ``axis`` is keyed by ``(site, names[i])``.

    Each slice comes from its own NumPy generator seeded by the key's data, the site and the
    entry's name, so it is the same whatever else is predicted in the call. NumPy rather than
    ``jax.random``: the JAX version compiled a program per shape (1.3 s each, 5 of the 8 s of a
    cold ``predict`` over 50 contexts, ``benchmarks/predict_contexts.py``) for a few thousand
    numbers.
    """
    key = jax.random.key_data(rng_key) if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key) else rng_key
    seed = [int(v) for v in np.asarray(key, dtype=np.uint32).ravel()] + [_hash(site)]
    rest = tuple(s for i, s in enumerate(shape) if i != axis)
    draws = np.empty((len(names), *rest), dtype=dtype)
    for i, name in enumerate(names):
        draws[i] = np.random.default_rng(seed + [_hash(name)]).standard_normal(rest)
    return np.moveaxis(draws, 0, axis)
