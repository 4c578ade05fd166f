"""From a :class:`~semimech.protocol.Protocols` encoding to stacked experiments and their states.

Building is indexing: the interventions and media vectors may be traced model parameters
(e.g. a latent knockdown efficacy), so a model can call :func:`run_protocols` inside its
NumPyro function and get one vmapped solve per structure group, never one per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from semimech.dynamics.intervention import Intervention
from semimech.errors import DesignError
from semimech.protocol.frame import ProtocolGroup, Protocols
from semimech.protocol.operators import Evolve, Experiment, Measure, Media, Perturb, _unchecked
from semimech.protocol.many import _run_stacked
from semimech.protocol.run import ProtocolResult

__all__ = ["build_group", "run_protocols"]


def _stacked_interventions(interventions, labels) -> Intervention:
    if isinstance(interventions, Mapping):
        missing = [lab for lab in labels if lab not in interventions]
        if missing:
            raise DesignError(f"interventions has no entry for perturbation labels {missing[:5]}; give one per label.")
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[interventions[lab] for lab in labels])
    if not isinstance(interventions, Intervention) or jnp.ndim(interventions.production) != 2:
        raise DesignError(
            "interventions must be a mapping label -> Intervention, or an Intervention whose fields have a "
            "leading perturbation axis (one row per perturbation label)."
        )
    if jnp.shape(interventions.production)[0] != len(labels):
        raise DesignError(
            f"interventions has {jnp.shape(interventions.production)[0]} rows but there are {len(labels)} "
            "perturbation labels."
        )
    return interventions


def _stacked_media(media, labels):
    if labels is None:
        return None
    if media is None:
        raise DesignError("These protocols change media: pass media= (a mapping label -> vector, or an array labels x m).")
    if isinstance(media, Mapping):
        missing = [lab for lab in labels if lab not in media]
        if missing:
            raise DesignError(f"media has no vector for labels {missing[:5]}; give one per media label.")
        return jnp.stack([jnp.asarray(media[lab]) for lab in labels])
    media = jnp.asarray(media)
    if media.ndim != 2 or media.shape[0] != len(labels):
        raise DesignError(f"media must have shape ({len(labels)}, m), one row per media label; got {media.shape}.")
    return media


def build_group(group: ProtocolGroup, protocols: Protocols, *, interventions, media=None) -> Experiment:
    """A stacked :class:`Experiment` (leading axis = the group's protocols) for ``run_many``.

    ``interventions`` and ``media`` (mappings by label, or arrays with one row per label) may hold
    traced model parameters: building is just indexing.
    """
    g = _stacked_interventions(interventions, protocols.perturbation_labels)
    m = _stacked_media(media, protocols.media_labels)
    ops, j = [], 0
    for kind in group.structure:
        if kind == "Perturb":
            ops.append(_unchecked(Perturb, jax.tree.map(lambda a: a[group.perturbation_index], g)))
        elif kind == "Media":
            ops.append(_unchecked(Media, m[group.media_index]))
        elif kind == "Evolve":
            ops.append(_unchecked(Evolve, jnp.asarray(group.durations[:, j])))
            j += 1
        else:
            ops.append(_unchecked(Measure, None))
    return _unchecked(Experiment, tuple(ops))


def run_protocols(
    protocols: Protocols,
    field: Callable,
    params,
    *,
    interventions,
    media=None,
    x0,
    media0,
    **options,
) -> ProtocolResult:
    """Run every unique protocol: one vmapped solve for all groups with the same number of Evolves.

    Returns a :class:`ProtocolResult` whose fields have a leading ``protocols`` axis in
    ``row_protocol`` order: ``result.state[protocols.row_protocol]`` gives each row's state.
    ``x0``, ``media0`` and ``options`` are those of :func:`~semimech.protocol.run`.
    """
    experiments = [build_group(grp, protocols, interventions=interventions, media=media) for grp in protocols.groups]
    return _run_stacked(experiments, field, params, x0=x0, media0=media0, **options)
