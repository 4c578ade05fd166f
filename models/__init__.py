"""The model zoo: one module per model, each a NumPyro function plus a ``SPEC`` record.

The registry is explicit: add a model by importing its module here and listing its SPEC.
"""

from semimech.models import additive, latent_programs, linear_steady_state, production_decay

REGISTRY = {
    additive.SPEC.name: additive.SPEC,
    linear_steady_state.SPEC.name: linear_steady_state.SPEC,
    production_decay.SPEC.name: production_decay.SPEC,
    latent_programs.SPEC.name: latent_programs.SPEC,
}


def get(name: str):
    """Return the ``ModelSpec`` registered under ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no model named {name!r}; registered: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "additive", "get", "latent_programs", "linear_steady_state", "production_decay"]
