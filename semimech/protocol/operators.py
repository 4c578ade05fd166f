"""Experiment operators and their ordered composition (FRAMEWORK.md section 1).

An experiment acts on the triple ``(x, m, g)``: state, environment (media) and edit state.
Four operators, each a frozen record:

- :class:`Media` ``(m)`` sets the environment vector (changes the vector field, not ``x``);
- :class:`Perturb` ``(p)`` composes the edit ``p`` with the current one (instantaneous);
- :class:`Evolve` ``(duration)`` integrates ``x`` under the current ``(m, g)``;
- :class:`Measure` ``(batch)`` records ``x``; destructive, so nothing may follow it.

Order convention
----------------
An :class:`Experiment` stores its operators **in time order** (first applied first), and is
built either from that tuple or with ``>>`` read as "then"::

    Media(m0) >> Perturb(p) >> Evolve(24.0) >> Measure()

is the experiment FRAMEWORK.md writes right-to-left as
``F = Measure . Evolve(24) . Perturb(p) . Media(m0)``. ``>>`` is the only composition operator
(there is no ``@``), so there is one reading of every expression.

Every operator and :class:`Experiment` is a JAX pytree: the numbers (media vectors,
interventions, durations, batch indices) are leaves that may be traced, the sequence of
operator kinds is static structure. Experiments with the same structure can be stacked
(:func:`stack`) and run under ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semimech.dynamics.intervention import Intervention, compose
from semimech.errors import DesignError

__all__ = ["Media", "Perturb", "Evolve", "Measure", "Experiment", "schedule", "simultaneous", "stack"]


def _is_concrete(value) -> bool:
    """True when ``value`` holds numbers we can inspect now (not a tracer inside jit/vmap)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def _unchecked(cls, *values):
    """Build an operator or experiment from its field values without validation (batched leaves)."""
    obj = object.__new__(cls)
    for f, value in zip(dataclasses.fields(cls), values):
        object.__setattr__(obj, f.name, value)
    return obj


def _register(cls, fields: tuple[str, ...]):
    """Register a frozen dataclass as a pytree whose unflatten bypasses ``__init__`` validation.

    Transformations rebuild pytrees with tracers, batch axes or sentinel objects as leaves;
    validation belongs to user construction only.
    """

    def flatten(obj):
        return tuple(getattr(obj, f) for f in fields), None

    def unflatten(_, children):
        return _unchecked(cls, *children)

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls


class _Op:
    """Mixin: ``a >> b`` means "a, then b"."""

    def __rshift__(self, other):
        return Experiment(_ops_of(self) + _ops_of(other))

    def __rrshift__(self, other):
        return Experiment(_ops_of(other) + _ops_of(self))


@dataclasses.dataclass(frozen=True, eq=False)
class Media(_Op):
    """Set the environment vector ``m`` (medium, stimulus, niche covariates).

    Parameters
    ----------
    m
        ``Float[Array, "media"]``; replaces the current environment (it does not add to it).
    """

    m: Any

    def __post_init__(self):
        if _is_concrete(self.m):
            m = np.asarray(self.m)
            if m.ndim != 1 or not np.issubdtype(m.dtype, np.number):
                raise DesignError(
                    f"Media(m) needs a 1-D numeric environment vector, got shape {m.shape} and dtype "
                    f"{m.dtype}; pass e.g. Media(jnp.array([1.0, 0.0]))."
                )
            if not np.all(np.isfinite(m)):
                raise DesignError(f"Media(m) has non-finite entries {m}; replace NaN/inf by numbers.")


@dataclasses.dataclass(frozen=True, eq=False)
class Perturb(_Op):
    """An instantaneous edit ``g -> compose(g, p)`` (knockout, knockdown, activation, drug).

    Parameters
    ----------
    p
        An :class:`~semimech.dynamics.intervention.Intervention`. Later edits compose with
        earlier ones: production scales multiply, the later clamp wins where both clamp.
    """

    p: Intervention

    def __post_init__(self):
        if not isinstance(self.p, Intervention):
            raise DesignError(
                f"Perturb(p) needs an Intervention, got {type(self.p).__name__}; build one with "
                "Intervention.scale(production) or Intervention(production, clamp_mask, clamp_value)."
            )
        if _is_concrete(self.p):
            shapes = {np.shape(leaf) for leaf in self.p}
            if len(shapes) != 1 or len(next(iter(shapes))) != 1:
                raise DesignError(
                    f"Perturb(p): production, clamp_mask and clamp_value must be 1-D of the same "
                    f"length (one entry per state variable), got shapes {[np.shape(v) for v in self.p]}."
                )


@dataclasses.dataclass(frozen=True, eq=False)
class Evolve(_Op):
    """Integrate the state for ``duration`` (time units of the vector field's rates, e.g. h).

    Parameters
    ----------
    duration
        A non-negative scalar (Python number or 0-d array; may be traced inside ``jit``).
        A traced negative duration is not raised on; :func:`~semimech.protocol.run` reports
        ``ok=False`` instead.
    """

    duration: Any

    def __post_init__(self):
        if _is_concrete(self.duration):
            d = np.asarray(self.duration)
            if d.ndim != 0 or not np.issubdtype(d.dtype, np.number):
                raise DesignError(f"Evolve(duration) needs a scalar number, got shape {d.shape}, dtype {d.dtype}.")
            if not np.isfinite(d) or d < 0:
                raise DesignError(
                    f"Evolve(duration={float(d)}): durations must be finite and >= 0; an event "
                    "scheduled before the previous one means the protocol's times are out of order."
                )


@dataclasses.dataclass(frozen=True, eq=False)
class Measure(_Op):
    """Destructive observation of the state; the last operator of an experiment.

    Parameters
    ----------
    batch
        Integer batch index (e.g. from ``Design.batch_index``) passed through to the result
        for the measurement model, or None.
    """

    batch: Any = None

    def __post_init__(self):
        if self.batch is not None and _is_concrete(self.batch):
            b = np.asarray(self.batch)
            if not np.issubdtype(b.dtype, np.integer):
                raise DesignError(
                    f"Measure(batch={self.batch!r}): batch must be an integer index (or None); map "
                    "batch labels to codes first, e.g. with Design.batch_index."
                )


_OPS = (Media, Perturb, Evolve, Measure)
_register(Media, ("m",))
_register(Perturb, ("p",))
_register(Evolve, ("duration",))
_register(Measure, ("batch",))


def _ops_of(obj) -> tuple:
    if isinstance(obj, Experiment):
        return obj.ops
    if isinstance(obj, _OPS):
        return (obj,)
    raise DesignError(
        f"Cannot compose {type(obj).__name__} into an experiment; use Media, Perturb, Evolve, "
        "Measure or an Experiment."
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """An ordered composition of operators, **first applied first**.

    Build it from a tuple, ``Experiment((Media(m0), Perturb(p), Evolve(24.0), Measure()))``, or
    with ``>>`` ("then"): ``Media(m0) >> Perturb(p) >> Evolve(24.0) >> Measure()``.

    Parameters
    ----------
    ops
        Operators in time order. :class:`Measure` is destructive: it may appear once, last.
        An experiment without a Measure is a protocol prefix that can be extended with ``>>``.
    """

    ops: tuple

    def __post_init__(self):
        ops = tuple(self.ops) if isinstance(self.ops, (list, tuple)) else None
        if ops is None:
            raise DesignError(f"Experiment(ops) needs a tuple of operators, got {type(self.ops).__name__}.")
        for i, op in enumerate(ops):
            if not isinstance(op, _OPS):
                raise DesignError(
                    f"Experiment operator {i} is a {type(op).__name__}; only Media, Perturb, Evolve "
                    "and Measure can be composed (for simultaneous edits use simultaneous(...))."
                )
        for i, op in enumerate(ops[:-1]):
            if isinstance(op, Measure):
                after = ", ".join(type(o).__name__ for o in ops[i + 1 :])
                raise DesignError(
                    f"Measure is destructive, but operator {i} (Measure) is followed by {after}. "
                    "End the experiment at the Measure; to observe the same culture at several "
                    "times, write one experiment per measurement time."
                )
        object.__setattr__(self, "ops", ops)

    def __rshift__(self, other):
        return Experiment(self.ops + _ops_of(other))

    def __rrshift__(self, other):
        return Experiment(_ops_of(other) + self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def structure(self) -> tuple[str, ...]:
        """The static sequence of operator kinds, e.g. ``("Media", "Perturb", "Evolve", "Measure")``."""
        return tuple(type(op).__name__ for op in self.ops)

    @property
    def measured(self) -> bool:
        """Whether the experiment ends with a :class:`Measure`."""
        return bool(self.ops) and isinstance(self.ops[-1], Measure)


_register(Experiment, ("ops",))


def simultaneous(*perturbs: Perturb) -> Perturb:
    """Combine several edits applied at the same instant into one :class:`Perturb`.

    Simultaneous edits commute as edits (production scales multiply, clamps unite), so the
    result is the same for every argument order (up to rounding of the products). Two clamps of
    the same variable to different values do not commute and are rejected (when the values are
    concrete).
    """
    if not perturbs:
        raise DesignError("simultaneous() needs at least one Perturb.")
    for i, op in enumerate(perturbs):
        if not isinstance(op, Perturb):
            raise DesignError(
                f"simultaneous() combines Perturb edits only; argument {i} is {type(op).__name__} "
                "(a Media change at the same instant needs no combining: write Media(m) >> Perturb(p))."
            )
    if all(_is_concrete(op.p) for op in perturbs):
        masks = [np.asarray(op.p.clamp_mask, dtype=bool) for op in perturbs]
        values = [np.asarray(op.p.clamp_value) for op in perturbs]
        for i in range(len(perturbs)):
            for j in range(i + 1, len(perturbs)):
                both = masks[i] & masks[j]
                if np.any(both & (values[i] != values[j])):
                    raise DesignError(
                        f"simultaneous(): edits {i} and {j} clamp state variables "
                        f"{np.flatnonzero(both & (values[i] != values[j])).tolist()} to different values, "
                        "which does not commute; apply them in sequence with >> if one overrides the other."
                    )
    p = perturbs[0].p
    for op in perturbs[1:]:
        p = compose(p, op.p)
    # canonical form: clamp values are meaningless where nothing is clamped, so zero them there
    # (otherwise they would depend on the argument order)
    return Perturb(p._replace(clamp_value=jnp.where(p.clamp_mask, p.clamp_value, jnp.zeros_like(p.clamp_value))))


def stack(experiments: Sequence[Experiment]) -> Experiment:
    """Stack experiments of identical structure into one with a leading batch axis on every leaf.

    The result is meant for ``jax.vmap`` (see :func:`~semimech.protocol.run_many`); it is built
    without validation because its leaves are no longer single-experiment values.
    """
    experiments = list(experiments)
    if not experiments:
        raise DesignError("stack() needs at least one Experiment.")
    for i, e in enumerate(experiments):
        if not isinstance(e, Experiment):
            raise DesignError(f"stack(): item {i} is a {type(e).__name__}, not an Experiment.")
    ref = jax.tree.structure(experiments[0])
    for i, e in enumerate(experiments[1:], start=1):
        if jax.tree.structure(e) != ref:
            raise DesignError(
                f"stack(): experiment {i} has structure {e.structure} (or None/array leaves that differ), "
                f"but experiment 0 has {experiments[0].structure}; only experiments of identical "
                "structure can be stacked (group them first, e.g. with protocols_from_frame)."
            )
    leaves = [jax.tree.leaves(e) for e in experiments]
    for k in range(len(leaves[0])):
        shapes = {np.shape(ls[k]) for ls in leaves}
        if len(shapes) != 1:
            raise DesignError(f"stack(): leaf {k} has differing shapes {sorted(shapes)} across experiments.")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *experiments)


def schedule(events: Sequence[tuple[Any, Media | Perturb]], *, measure_at, start=None, batch=None) -> Experiment:
    """An experiment from timed events on one clock: ``[(t, Perturb(p)), (t2, Media(m))]``.

    Parameters
    ----------
    events
        ``(time, operator)`` pairs in non-decreasing time order (ties keep their order); the
        operators are the instantaneous ones, :class:`Media` and :class:`Perturb`.
    measure_at
        Clock time of the :class:`Measure`; not before the last event.
    start
        Clock time of the initial state; adds a leading ``Evolve`` up to the first event.
        Default: the initial state is the state at the first event.
    batch
        Passed to :class:`Measure`.

    Returns
    -------
    ``event >> Evolve(gap) >> event >> ... >> Evolve(until measure_at) >> Measure(batch)``.
    """
    events = list(events)
    for i, ev in enumerate(events):
        if not (isinstance(ev, tuple) and len(ev) == 2 and isinstance(ev[1], (Media, Perturb))):
            raise DesignError(f"schedule(): event {i} must be a (time, Media | Perturb) pair, got {ev!r}.")
    times = [t for t, _ in events] + [measure_at]
    if start is not None:
        times = [start] + times
    if all(_is_concrete(t) for t in times):
        arr = np.asarray(times, dtype=float)
        if not np.all(np.isfinite(arr)):
            raise DesignError(f"schedule(): times must be finite, got {arr.tolist()}.")
        back = np.flatnonzero(np.diff(arr) < 0)
        if back.size:
            j = int(back[0])
            raise DesignError(
                f"schedule(): times are not sorted ({arr[j]} then {arr[j + 1]}; "
                + ("start, events, measure_at" if start is not None else "events, then measure_at")
                + "). List events in time order, with no event after the measurement"
                + (" and none before start." if start is not None else ".")
            )
    ops: list = []
    if start is not None and events:
        ops.append(Evolve(_diff(events[0][0], start)))
    for i, (t, op) in enumerate(events):
        ops.append(op)
        t_next = events[i + 1][0] if i + 1 < len(events) else measure_at
        ops.append(Evolve(_diff(t_next, t)))
    if not events:
        ops.append(Evolve(_diff(measure_at, 0.0 if start is None else start)))
    return Experiment(tuple(ops) + (Measure(batch),))


def _diff(a, b):
    if _is_concrete(a) and _is_concrete(b):
        return float(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    return jnp.asarray(a) - jnp.asarray(b)
