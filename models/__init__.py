"""The model zoo: one module per model, each a NumPyro function plus a ``SPEC`` record.

The registry is explicit: add a model by importing its module here and listing its SPEC.
"""

from semimech.models import additive

REGISTRY = {
    additive.SPEC.name: additive.SPEC,
}


def get(name: str):
    """Return the ``ModelSpec`` registered under ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no model named {name!r}; registered: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "additive", "get"]
