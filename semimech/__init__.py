"""semimech: semi-mechanistic Bayesian models of perturbation experiments.

Public surface, re-exported explicitly. Models live in :mod:`semimech.models`.

Names are imported on first use (PEP 562 module ``__getattr__``): ``import semimech`` is
instant and does not load JAX, so ``semimech --help`` answers at once; ``semimech.Design``,
``from semimech import fit_svi`` etc. work as usual. To export a name, add it to
``_EXPORTS`` under the module that defines it.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# module -> public names it defines (imported on first access)
_EXPORTS = {
    "semimech.data": ("Design",),
    "semimech.infer": (
        "Fit",
        "ModelSpec",
        "Prediction",
        "add_log_likelihood",
        "add_posterior_predictive",
        "add_predictions",
        "add_prior",
        "choose_method",
        "diagnostics",
        "fit_nuts",
        "fit_svi",
        "fit_svi_minibatch",
        "fit_svi_sharded",
        "load",
        "pointwise_log_likelihood",
        "predict",
        "sample_prior",
    ),
    "semimech.infer.auto": ("fit",),  # the default fit (semimech.infer.fit is a module)
}
_ATTRIBUTES = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = ("checks", "datasets", "errors", "evaluate", "plots")

__all__ = sorted(_ATTRIBUTES) + list(_SUBMODULES)


def __getattr__(name: str):
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    elif name in _SUBMODULES or (not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}")):
        value = importlib.import_module(f"{__name__}.{name}")  # any subpackage, e.g. semimech.infer
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
