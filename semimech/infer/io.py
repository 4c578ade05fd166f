"""Save and load fits: a folder with the posterior (netCDF), the design (npz) and metadata (JSON).

Model options are kept exactly: JSON values in ``meta.json``, arrays (a prior ``network``
matrix, a ``direct_mask``) and tables (an edges DataFrame) column by column in ``options.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech.data.design import Design
from semimech.errors import InferenceError
from semimech.infer import _arviz

_FORMAT = 1


def save(fit, path) -> None:
    plain, arrays_opt, kinds = _split_options(fit.options)  # first: an unsavable option writes nothing
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _arviz.write(fit.idata, path / "posterior.nc")
    d = fit.design
    arrays = {"perturbation_index": d.perturbation_index, "target_matrix": d.target_matrix,
              "size_factors": d.size_factors, "n_cells": d.n_cells}
    if d.batch_index is not None:
        arrays["batch_index"] = d.batch_index
    if d.y_ss is not None:
        arrays["y_ss"] = d.y_ss
    if fit.losses is not None:
        arrays["losses"] = fit.losses
    for k, v in (fit.sample_stats or {}).items():
        arrays[f"stat_{k}"] = v
    if sp.issparse(d.y):
        arrays.update(y_data=d.y.data, y_indices=d.y.indices, y_indptr=d.y.indptr, y_shape=np.array(d.y.shape))
    elif d.y is not None:
        arrays["y"] = d.y
    np.savez_compressed(path / "design.npz", **arrays)
    np.savez_compressed(path / "options.npz", **arrays_opt)
    meta = {"format": _FORMAT, "model": fit.spec.name, "method": fit.method, "options": plain, "option_kinds": kinds,
            "dims": {k: list(v) for k, v in fit.dims.items()}, "sample_order": list(fit.samples),
            "design": {"obs_names": list(d.obs_names), "genes": list(d.genes), "perturbations": list(d.perturbations),
                       "targets": list(d.targets), "control": d.control,
                       "batches": None if d.batches is None else list(d.batches), "is_counts": d.is_counts,
                       "target_sep": d.target_sep}}
    (path / "meta.json").write_text(json.dumps(meta, indent=1))


def load(path, *, spec=None):
    """Load a fit written by ``Fit.save``; ``spec`` is needed only for unregistered models."""
    from semimech.infer.fit import Fit

    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path} is not a saved semimech fit (no meta.json).")
    meta = json.loads((path / "meta.json").read_text())
    if spec is None:
        from semimech import models

        spec = models.get(meta["model"])
    arr = dict(np.load(path / "design.npz"))
    m = meta["design"]
    if "y_data" in arr:
        y = sp.csr_matrix((arr.pop("y_data"), arr.pop("y_indices"), arr.pop("y_indptr")), shape=tuple(arr.pop("y_shape")))
    else:
        y = arr.pop("y", None)
    design = Design(y=y, obs_names=tuple(m["obs_names"]), genes=tuple(m["genes"]),
                    perturbations=tuple(m["perturbations"]), perturbation_index=arr["perturbation_index"],
                    targets=tuple(m["targets"]), target_matrix=arr["target_matrix"], control=m["control"],
                    batches=None if m["batches"] is None else tuple(m["batches"]),
                    batch_index=arr.get("batch_index"), size_factors=arr["size_factors"],
                    is_counts=m["is_counts"], n_cells=arr["n_cells"], target_sep=m["target_sep"],
                    y_ss=arr.get("y_ss"))
    dt = _arviz.read(path / "posterior.nc")
    post = dt["posterior"]
    # the saved order of sites: predict draws fresh labels' keys in this order
    order = meta.get("sample_order") or [k for k in meta["dims"] if k in post]
    samples = {k: np.asarray(post[k].values) for k in order}
    stats = {k[5:]: v for k, v in arr.items() if k.startswith("stat_")} or None
    options = _join_options(meta["options"], meta.get("option_kinds", {}), path / "options.npz")
    return Fit(spec=spec, design=design, samples=samples, dims={k: tuple(v) for k, v in meta["dims"].items()},
               method=meta["method"], options=options, losses=arr.get("losses"), sample_stats=stats,
               idata=dt)


def _split_options(options) -> tuple[dict, dict, dict]:
    """``(json values, arrays for npz, kind per non-JSON option)``; raises on what cannot be kept."""
    plain, arrays, kinds = {}, {}, {}
    for k, v in options.items():
        if isinstance(v, pd.DataFrame):
            kinds[k] = {"kind": "frame", "columns": [str(c) for c in v.columns]}
            arrays[f"{k}::index"] = np.asarray(v.index)
            for i, c in enumerate(v.columns):
                arrays[f"{k}::{i}"] = _plain_array(v[c].to_numpy(), k)
        elif isinstance(v, np.generic):
            plain[k] = v.item()
        elif isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype")):  # numpy or JAX array
            kinds[k] = {"kind": "array"}
            arrays[k] = _plain_array(np.asarray(v), k)
        elif isinstance(v, tuple):
            kinds[k] = {"kind": "tuple"}
            plain[k] = list(v)
        else:
            plain[k] = v
        if k in plain:
            try:
                json.dumps(plain[k])
            except TypeError:
                raise InferenceError(
                    f"model option {k!r} ({type(v).__name__}) cannot be saved: options must be JSON values, "
                    "numpy arrays or DataFrames. Convert it (e.g. network_matrix(...) for a network) before fitting."
                ) from None
    return plain, arrays, kinds


def _plain_array(a: np.ndarray, key: str) -> np.ndarray:
    if a.dtype == object:
        try:
            return a.astype(str)
        except (TypeError, ValueError):
            raise InferenceError(f"model option {key!r} holds Python objects that cannot be saved.") from None
    return a


def _join_options(plain: dict, kinds: dict, npz) -> dict:
    out = dict(plain)
    if not kinds:
        return out
    arr = dict(np.load(npz)) if npz.exists() else {}
    for k, info in kinds.items():
        if info["kind"] == "array":
            out[k] = arr[k]
        elif info["kind"] == "tuple":
            out[k] = tuple(out[k])
        elif info["kind"] == "frame":
            cols = {c: arr[f"{k}::{i}"] for i, c in enumerate(info["columns"])}
            out[k] = pd.DataFrame(cols, index=arr[f"{k}::index"], columns=info["columns"])
    return out
