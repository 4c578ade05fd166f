"""Site dims from plates: plate name = dim name = ``Design.coords`` key."""

from __future__ import annotations

import jax
import numpyro
from numpyro import handlers


def trace(model, data, y=None, *, rng_key=0):
    """Trace a model once (with observations) and return the NumPyro trace."""
    with handlers.seed(rng_seed=rng_key):
        return handlers.trace(model).get_trace(data, y=y)


def site_dims(model, data, y=None) -> dict[str, tuple[str, ...]]:
    """Map each sample/deterministic site (except ``y``) to its dim names.

    Each axis counted from the right is named by the plate at that ``dim``; axes not covered
    by a plate are named ``<site>_dim_<i>``.
    """
    tr = trace(model, data, y)
    out = {}
    for name, site in tr.items():
        if site["type"] not in ("sample", "deterministic") or name == "y":
            continue
        shape = jax.numpy.shape(site["value"])
        by_dim = {f.dim: f.name for f in site.get("cond_indep_stack", ())}
        names = []
        for axis in range(len(shape)):
            neg = axis - len(shape)
            names.append(by_dim.get(neg, f"{name}_dim_{axis}"))
        out[name] = tuple(names)
    return out


def plates(model, data, y=None) -> dict[str, int]:
    """Plate name -> size."""
    tr = trace(model, data, y)
    return {n: s["args"][0] for n, s in tr.items() if s["type"] == "plate"}


__all__ = ["plates", "site_dims", "trace"]
_ = numpyro  # keep the import explicit for readers: traces come from numpyro.handlers
