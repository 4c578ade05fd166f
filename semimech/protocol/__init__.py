"""Experiment protocols: operators, their ordered composition, and piecewise integration.

``Media(m0) >> Perturb(p) >> Evolve(24.0) >> Measure()`` reads left to right in time order
(first applied first); FRAMEWORK.md writes the same experiment right-to-left as
``Measure . Evolve . Perturb . Media``.
"""

from semimech.protocol.frame import ORDERS, ProtocolGroup, Protocols, protocols_from_frame
from semimech.protocol.groups import build_group, run_protocols
from semimech.protocol.operators import Evolve, Experiment, Measure, Media, Perturb, schedule, simultaneous, stack
from semimech.protocol.run import ProtocolResult, run, run_many

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
