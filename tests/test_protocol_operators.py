"""Operators, composition order, validation and pytree behaviour of semimech.protocol."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semimech.dynamics.intervention import Intervention
from semimech.errors import DesignError
from semimech.protocol import Evolve, Experiment, Measure, Media, Perturb, schedule, simultaneous, stack


def _clamp(n, idx, value):
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    vals = np.zeros(n)
    vals[idx] = value
    return Intervention(production=jnp.ones(n), clamp_mask=jnp.asarray(mask), clamp_value=jnp.asarray(vals))


def test_rshift_reads_left_to_right_in_time_order():
    m0, p = jnp.array([1.0, 0.0]), Intervention.scale(jnp.array([0.5, 1.0, 2.0]))
    e = Media(m0) >> Perturb(p) >> Evolve(24.0) >> Measure()
    assert e.structure == ("Media", "Perturb", "Evolve", "Measure")
    assert e.measured and len(e) == 4
    same = Experiment((Media(m0), Perturb(p), Evolve(24.0), Measure()))
    assert jax.tree.structure(e) == jax.tree.structure(same)
    # associativity: composing prefixes and suffixes gives the same sequence
    left = (Media(m0) >> Perturb(p)) >> (Evolve(24.0) >> Measure())
    assert left.structure == e.structure
    assert (Experiment((Media(m0),)) >> Evolve(1.0)).structure == ("Media", "Evolve")


def test_prefix_without_measure_is_allowed_and_extendable():
    pre = Media(jnp.zeros(1)) >> Evolve(1.0)
    assert not pre.measured
    assert (pre >> Measure()).measured


@pytest.mark.parametrize(
    "build",
    [
        lambda: Measure() >> Measure(),
        lambda: Evolve(1.0) >> Measure() >> Evolve(2.0),
        lambda: (Evolve(1.0) >> Measure()) >> Perturb(Intervention.none(2)),
        lambda: Experiment((Measure(), Media(jnp.zeros(2)))),
    ],
)
def test_anything_after_measure_is_a_clear_error(build):
    with pytest.raises(DesignError, match="Measure is destructive"):
        build()


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Evolve(-1.0), ">= 0"),
        (lambda: Evolve(float("nan")), "finite"),
        (lambda: Evolve(np.array([1.0, 2.0])), "scalar"),
        (lambda: Media(np.zeros((2, 2))), "1-D"),
        (lambda: Media(np.array([np.nan])), "non-finite"),
        (lambda: Perturb(np.ones(3)), "Intervention"),
        (lambda: Perturb(Intervention(jnp.ones(2), jnp.zeros(3, bool), jnp.zeros(3))), "same"),
        (lambda: Measure(batch="plate1"), "integer"),
        (lambda: Experiment((Evolve(1.0), "Measure")), "only Media, Perturb"),
        (lambda: Evolve(1.0) >> 3, "Cannot compose"),
    ],
)
def test_bad_operator_input_names_the_problem(build, match):
    with pytest.raises(DesignError, match=match):
        build()


def test_simultaneous_edits_commute_as_edits():
    a = Perturb(Intervention.scale(jnp.array([0.0, 1.0, 0.7])))
    b = Perturb(Intervention.scale(jnp.array([1.0, 3.0, 0.5])))
    c = Perturb(_clamp(3, 0, 2.0))
    ab, ba = simultaneous(a, b, c), simultaneous(c, b, a)
    for x, y in zip(jax.tree.leaves(ab), jax.tree.leaves(ba)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_allclose(ab.p.production, [0.0, 3.0, 0.35], rtol=1e-6)
    assert bool(ab.p.clamp_mask[0]) and float(ab.p.clamp_value[0]) == 2.0


def test_simultaneous_rejects_conflicting_clamps_and_non_edits():
    with pytest.raises(DesignError, match="different values"):
        simultaneous(Perturb(_clamp(3, 1, 1.0)), Perturb(_clamp(3, 1, 2.0)))
    # the same clamp twice is fine
    simultaneous(Perturb(_clamp(3, 1, 1.0)), Perturb(_clamp(3, 1, 1.0)))
    with pytest.raises(DesignError, match="Perturb edits only"):
        simultaneous(Perturb(Intervention.none(2)), Media(jnp.zeros(1)))
    with pytest.raises(DesignError, match="at least one"):
        simultaneous()


def test_stack_adds_a_leading_axis_and_checks_structure():
    es = [Perturb(Intervention.scale(jnp.full(2, s))) >> Evolve(t) >> Measure(batch=b) for s, t, b in [(0.5, 1.0, 0), (2.0, 3.0, 1)]]
    st = stack(es)
    assert st.structure == es[0].structure
    assert st.ops[0].p.production.shape == (2, 2)
    np.testing.assert_array_equal(st.ops[1].duration, [1.0, 3.0])
    np.testing.assert_array_equal(st.ops[2].batch, [0, 1])
    with pytest.raises(DesignError, match="identical structure"):
        stack([es[0], Evolve(1.0) >> Measure()])
    with pytest.raises(DesignError, match="differing shapes"):
        stack([Media(jnp.zeros(1)) >> Measure(), Media(jnp.zeros(2)) >> Measure()])
    with pytest.raises(DesignError, match="at least one"):
        stack([])


def test_operators_are_pytrees_that_transformations_can_rebuild():
    e = Media(jnp.array([1.0])) >> Evolve(2.0) >> Measure(batch=3)
    leaves, treedef = jax.tree.flatten(e)
    assert len(leaves) == 3
    # Rebuilding with values that would fail validation (a negative duration, a 2-D media) must
    # not raise: transformations rebuild pytrees with tracers and batched leaves.
    rebuilt = jax.tree.unflatten(treedef, [jnp.ones((2, 1)), jnp.array(-1.0), jnp.array(3)])
    assert rebuilt.structure == e.structure

    @jax.jit
    def total(exp):
        return sum(op.duration for op in exp.ops if isinstance(op, Evolve))

    assert float(total(Evolve(1.0) >> Evolve(2.5) >> Measure())) == 3.5


def test_operators_built_inside_jit_with_traced_values_skip_validation():
    @jax.jit
    def make(d, m):
        e = Media(m) >> Evolve(d) >> Measure()
        return e.ops[1].duration * 2.0

    assert float(make(jnp.array(-1.0), jnp.ones(2))) == -2.0


def test_schedule_turns_timed_events_into_an_experiment():
    p, m = Perturb(Intervention.none(2)), Media(jnp.ones(1))
    e = schedule([(0.0, p), (1.5, m)], measure_at=24.0, batch=2)
    assert e.structure == ("Perturb", "Evolve", "Media", "Evolve", "Measure")
    assert [op.duration for op in e.ops if isinstance(op, Evolve)] == [1.5, 22.5]
    assert e.ops[-1].batch == 2
    lead = schedule([(2.0, m), (2.0, p)], measure_at=3.0, start=-1.0)
    assert lead.structure == ("Evolve", "Media", "Evolve", "Perturb", "Evolve", "Measure")
    assert [op.duration for op in lead.ops if isinstance(op, Evolve)] == [3.0, 0.0, 1.0]
    assert schedule([], measure_at=4.0).structure == ("Evolve", "Measure")

    @jax.jit
    def traced(t):
        e = schedule([(0.0, p), (t, m)], measure_at=t + 2.0)
        return e.ops[1].duration + e.ops[3].duration

    assert float(traced(jnp.array(1.0))) == 3.0


@pytest.mark.parametrize(
    "events, kw, match",
    [
        ([(2.0, "P"), (1.0, "M")], {}, r"not sorted \(2.0 then 1.0"),
        ([(0.0, "P"), (5.0, "M")], dict(measure_at=4.0), r"not sorted \(5.0 then 4.0.*no event after the measurement"),
        ([(0.0, "P")], dict(start=1.0), "none before start"),
        ([(float("nan"), "P")], {}, "finite"),
        ([(0.0, "E")], {}, "pair"),
        ([0.0], {}, "pair"),
    ],
)
def test_schedule_rejects_unsorted_or_bad_times(events, kw, match):
    ops = {"P": Perturb(Intervention.none(2)), "M": Media(jnp.ones(1)), "E": Evolve(1.0)}
    events = [(ev[0], ops[ev[1]]) if isinstance(ev, tuple) else ev for ev in events]
    with pytest.raises(DesignError, match=match):
        schedule(events, **({"measure_at": 10.0} | kw))
