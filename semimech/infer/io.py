"""Save and load fits: a folder with every ArviZ group (netCDF), the design (npz) and metadata (JSON).

Files:

- ``posterior.nc``: ``fit.idata``, every group (``posterior``, ``sample_stats``,
  ``log_likelihood``, ``observed_data``, ``constant_data``, and any added on request). It is an
  ArviZ/xarray DataTree file: open it with ``xarray.open_datatree(path)`` (``xarray.open_dataset``
  shows only the empty root, whose attributes say so).
- ``design.npz``: the design's arrays (readouts, indices, size factors, ...), the SVI losses
  and NUTS statistics.
- ``options.npz``: model options that are arrays or tables (a prior ``network`` matrix, an
  edges DataFrame, column by column); JSON values are kept in ``meta.json``.
- ``meta.json``: labels (genes, perturbations, targets, batches, rows), dims, options and the
  SHA-256 of every other file and of its own content. :func:`load` checks them all: a truncated
  or edited file is an error naming it, never a silently relabelled fit.

Saving is atomic: the folder is written beside the target and renamed into place, so an
interrupted save leaves the previous fit (or nothing) there, never a mix of old and new files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from semimech.data.design import Design
from semimech.errors import InferenceError, SavedFitError
from semimech.infer import _arviz

_FORMAT = 2  # 2: checksums in meta.json; 1 (read without checks): none
_FILES = ("posterior.nc", "design.npz", "options.npz")


def save(fit, path) -> None:
    """Write ``fit`` to the folder ``path`` atomically (see the module docstring).

    An existing saved fit at ``path`` is replaced; any other existing file or non-empty folder
    is refused (nothing is written).
    """
    plain, arrays_opt, kinds = _split_options(fit.options)  # first: an unsavable option writes nothing
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.saving-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write(fit, tmp, plain, arrays_opt, kinds)
        if path.exists():
            old = path.parent / f".{path.name}.replaced-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:  # also Ctrl-C: never leave a half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_target(path: Path) -> None:
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise SavedFitError(f"cannot save a fit to {path}: it is a file. Give a folder path.")
    if path.is_dir() and any(path.iterdir()) and not (path / "meta.json").is_file():
        raise SavedFitError(f"cannot save a fit to {path}: the folder holds other files and is not a saved fit. "
                            "Give a new or empty folder (an existing saved fit is replaced).")


def _write(fit, folder: Path, plain: dict, arrays_opt: dict, kinds: dict) -> None:
    _arviz.write(fit.idata, folder / "posterior.nc")
    d = fit.design
    arrays = {"perturbation_index": d.perturbation_index, "target_matrix": d.target_matrix,
              "size_factors": d.size_factors, "n_cells": d.n_cells}
    if d.batch_index is not None:
        arrays["batch_index"] = d.batch_index
    if d.y_ss is not None:
        arrays["y_ss"] = d.y_ss
    if d.perturbation_context is not None:
        arrays["perturbation_context"] = d.perturbation_context
    if fit.losses is not None:
        arrays["losses"] = fit.losses
    if fit.restarts is not None:  # fit_svi(..., restarts=k): every run's losses and scores, the chosen run
        arrays["restart_losses"] = np.asarray(fit.restarts["losses"])
        arrays["restart_scores"] = np.asarray(fit.restarts["scores"], np.float64)
    for k, v in (fit.sample_stats or {}).items():
        arrays[f"stat_{k}"] = v
    if sp.issparse(d.y):
        arrays.update(y_data=d.y.data, y_indices=d.y.indices, y_indptr=d.y.indptr, y_shape=np.array(d.y.shape))
    elif d.y is not None:
        arrays["y"] = d.y
    np.savez_compressed(folder / "design.npz", **arrays)
    np.savez_compressed(folder / "options.npz", **arrays_opt)
    meta = {"format": _FORMAT, "model": fit.spec.name, "method": fit.method, "options": plain, "option_kinds": kinds,
            "dims": {k: list(v) for k, v in fit.dims.items()}, "sample_order": list(fit.samples),
            **({"restarts": {"k": int(fit.restarts["k"]), "window": int(fit.restarts["window"]),
                             "chosen": int(fit.restarts["chosen"])}} if fit.restarts is not None else {}),
            "design": {"obs_names": list(d.obs_names), "genes": list(d.genes), "perturbations": list(d.perturbations),
                       "targets": list(d.targets), "control": d.control,
                       "batches": None if d.batches is None else list(d.batches), "is_counts": d.is_counts,
                       "target_sep": d.target_sep,
                       "noise": None if d.noise is None else d.noise.to_dict(), **_factor_meta(d)}}
    meta["checksums"] = {"files": {f: _sha256(folder / f) for f in _FILES}, "meta": _content_hash(meta)}
    with open(folder / "meta.json", "w") as fh:
        fh.write(json.dumps(meta, indent=1))
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _content_hash(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksums"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _damaged(path: Path, why: str) -> SavedFitError:
    return SavedFitError(f"this saved fit is damaged: {path} ({why}). Save the fit again, or restore the folder "
                         "from a copy; a saved fit's files must not be edited.")


def _read_meta(path: Path) -> dict:
    file = path / "meta.json"
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(file, f"not valid JSON: {err}") from None
    if not isinstance(meta, dict) or "format" not in meta:
        raise _damaged(file, "not a semimech fit's metadata")
    if meta["format"] > _FORMAT:
        raise SavedFitError(f"{path} was saved by a newer semimech (format {meta['format']}); upgrade semimech.")
    sums = meta.get("checksums")
    if meta["format"] >= 2:
        if not isinstance(sums, dict) or sums.get("meta") != _content_hash(meta):
            raise _damaged(file, "its content does not match its checksum: it was edited or is incomplete")
        for name, digest in sums["files"].items():
            f = path / name
            if not f.is_file():
                raise _damaged(f, "missing")
            if _sha256(f) != digest:
                raise _damaged(f, "checksum mismatch: truncated, overwritten or edited")
    return meta


def _read_npz(file: Path) -> dict:
    try:
        with np.load(file) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as err:
        raise _damaged(file, f"{type(err).__name__}: {err}") from None


def _read_tree(file: Path):
    try:
        return _arviz.read(file)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise _damaged(file, f"{type(err).__name__}: {err}") from None


def load(path, *, spec=None):
    """Load a fit written by ``Fit.save``; ``spec`` is needed only for unregistered models.

    Raises
    ------
    SavedFitError
        When a file is truncated, missing or edited (checksums in ``meta.json``), naming it.
    """
    from semimech.infer.fit import Fit

    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path} is not a saved semimech fit (no meta.json).")
    meta = _read_meta(path)
    if spec is None:
        from semimech import models

        spec = models.get(meta["model"])
    arr = _read_npz(path / "design.npz")
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
                    y_ss=arr.get("y_ss"), **_factor_fields(m, arr))
    if m.get("noise") is not None:  # the measurement-error model (semimech.measurement.noise)
        from semimech.measurement.noise import NoiseModel

        design = design.with_noise(NoiseModel.from_dict(m["noise"]))
    dt = _read_tree(path / "posterior.nc")
    post = dt["posterior"]
    # the saved order of sites: predict draws fresh labels' keys in this order
    order = meta.get("sample_order") or [k for k in meta["dims"] if k in post]
    samples = {k: np.asarray(post[k].values) for k in order}
    stats = {k[5:]: v for k, v in arr.items() if k.startswith("stat_")} or None
    options = _join_options(meta["options"], meta.get("option_kinds", {}), path / "options.npz")
    restarts = None
    if meta.get("restarts") is not None:
        restarts = {**meta["restarts"], "scores": tuple(float(x) for x in arr["restart_scores"]),
                    "losses": arr["restart_losses"]}
    return Fit(spec=spec, design=design, samples=samples, dims={k: tuple(v) for k, v in meta["dims"].items()},
               method=meta["method"], options=options, losses=arr.get("losses"), sample_stats=stats,
               idata=dt, restarts=restarts)


def _factor_meta(d) -> dict:
    """The factor structure of a design as JSON (absent for label designs)."""
    if d.factor_spec is None:
        return {}
    spec = d.factor_spec
    return {"target_factors": list(d.target_factors), "contexts": None if d.contexts is None else list(d.contexts),
            "factor_spec": {"factors": [[f, list(c)] for f, c in spec.factors], "context_key": spec.context_key,
                            "none": list(spec.none), "single_valued": list(spec.single_valued)}}


def _factor_fields(m: dict, arr: dict) -> dict:
    from semimech.data._factors import FactorSpec

    if m.get("factor_spec") is None:
        return {}
    fs = m["factor_spec"]
    spec = FactorSpec(factors=tuple((f, tuple(c)) for f, c in fs["factors"]), context_key=fs["context_key"],
                      none=tuple(fs["none"]), single_valued=tuple(fs["single_valued"]))
    return {"target_factors": tuple(m["target_factors"]), "contexts": None if m["contexts"] is None else tuple(m["contexts"]),
            "perturbation_context": arr.get("perturbation_context"), "factor_spec": spec}


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
    arr = _read_npz(npz) if npz.exists() else {}
    for k, info in kinds.items():
        if info["kind"] == "array":
            out[k] = arr[k]
        elif info["kind"] == "tuple":
            out[k] = tuple(out[k])
        elif info["kind"] == "frame":
            cols = {c: arr[f"{k}::{i}"] for i, c in enumerate(info["columns"])}
            out[k] = pd.DataFrame(cols, index=arr[f"{k}::index"], columns=info["columns"])
    return out
