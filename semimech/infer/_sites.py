"""Site dims from plates: plate name = dim name = ``Design.coords`` key."""

from __future__ import annotations

import jax
import numpyro
from numpyro import handlers


def trace(model, data, y=None, *, rng_key=0):
    """Trace a model once (with observations) and return the NumPyro trace (concrete values)."""
    with handlers.seed(rng_seed=rng_key):
        return handlers.trace(model).get_trace(data, y=y)


def abstract_trace(model, data, y=None) -> dict:
    """Site name -> (kind, shape, plate frames, fn args), from an abstract evaluation.

    ``kind`` is the site type (``sample``, ``deterministic``, ``plate``), or ``observed`` for
    observed sample sites and factors.

    Runs the model under ``jax.eval_shape``: nothing is computed or compiled, which keeps
    structural queries (dims, deterministic names) free.
    """
    out = {}

    def run():
        tr = trace(model, data, y)
        for name, site in tr.items():
            shape = jax.numpy.shape(site["value"]) if site["type"] != "plate" else ()
            kind = "observed" if site.get("is_observed", False) else site["type"]
            out[name] = (kind, shape, tuple(site.get("cond_indep_stack", ())), site.get("args", ()))
        return 0

    jax.eval_shape(run)
    return out


def site_dims(model, data, y=None) -> dict[str, tuple[str, ...]]:
    """Map each latent sample and deterministic site to its dim names.

    Each axis counted from the right is named by the plate at that ``dim``; axes not covered
    by a plate are named ``<site>_dim_<i>``.
    """
    out = {}
    for name, (kind, shape, stack, _) in abstract_trace(model, data, y).items():
        if kind not in ("sample", "deterministic"):
            continue
        by_dim = {f.dim: f.name for f in stack}
        names = []
        for axis in range(len(shape)):
            neg = axis - len(shape)
            names.append(by_dim.get(neg, f"{name}_dim_{axis}"))
        out[name] = tuple(names)
    return out


def plates(model, data, y=None) -> dict[str, int]:
    """Plate name -> size."""
    return {n: int(args[0]) for n, (kind, _, _, args) in abstract_trace(model, data, y).items() if kind == "plate"}


__all__ = ["abstract_trace", "plates", "site_dims", "trace"]
_ = numpyro  # keep the import explicit for readers: traces come from numpyro.handlers
