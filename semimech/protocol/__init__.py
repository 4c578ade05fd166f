"""Experiment protocols: operators, their ordered composition, and piecewise integration.

``Media(m0) >> Perturb(p) >> Evolve(24.0) >> Measure()`` reads left to right in time order
(first applied first); FRAMEWORK.md writes the same experiment right-to-left as
``Measure . Evolve . Perturb . Media``. ``>>`` is the only composition operator.

Example (not executed)::

    from semimech.dynamics import Intervention, production_decay_field
    from semimech.protocol import Evolve, Measure, Media, Perturb, run, run_many, schedule

    knockdown = Perturb(Intervention.scale(jnp.array([0.3, 1.0, 1.0])))
    cue = Media(jnp.array([1.0]))
    before = knockdown >> Evolve(2.0) >> cue >> Evolve(6.0) >> Measure()      # perturb, then cue
    after = schedule([(0.0, cue), (2.0, knockdown)], measure_at=8.0)          # cue, then perturb
    res = run_many([before, after], production_decay_field, params,
                   x0="steady", media0=jnp.zeros(1), x_guess=jnp.ones(3))
    res.state, res.ok       # (2, 3) states at Measure; False where a solve failed (never raises)

From a sample table (one row per cell or well): :func:`protocols_from_frame` reads time since
perturbation, medium and order-of-events columns into deduplicated protocol groups, and
:func:`run_protocols` runs them (one vmapped solve per number of Evolves) with interventions and
media vectors that may be traced model parameters.
"""

from semimech.protocol.frame import ORDERS, ProtocolGroup, Protocols, protocols_from_frame
from semimech.protocol.groups import build_group, run_protocols
from semimech.protocol.operators import Evolve, Experiment, Measure, Media, Perturb, schedule, simultaneous, stack
from semimech.protocol.many import run_many
from semimech.protocol.run import ProtocolResult, run

__all__ = [
    "Media",
    "Perturb",
    "Evolve",
    "Measure",
    "Experiment",
    "schedule",
    "simultaneous",
    "stack",
    "ProtocolResult",
    "run",
    "run_many",
    "ORDERS",
    "ProtocolGroup",
    "Protocols",
    "protocols_from_frame",
    "build_group",
    "run_protocols",
]
