"""Time points for :mod:`semimech.models.signalling_network`: the same network, relaxed in time.

With the model option ``times`` (one time per design context, e.g. minutes after the ligand),
every node's activation ``z`` relaxes towards what its regulators' continuous logic asks for:

    dz_i/dt = (B_i(keep * z; stim) - z_i) / tau_i

``B`` is the static model's activation (:func:`semimech.models._logic.activation`), ``keep * z``
the activity passed downstream (an inhibitor scales it), ``tau_i`` a per-node time constant.
Its fixed point ``z = B(keep z)`` is the static model's steady state, so one set of network
parameters (edges, Hill thresholds, basal activities, inhibitor efficacies, readout scales)
describes every time point, early and late; only ``tau`` is new. A phospho-readout measures
``z`` at its condition's time.

Protocol: inhibitors are present before the ligands (pretreatment), so a condition starts at
the steady state with its inhibitors and without its ligands (closed form on a DAG, the
:mod:`semimech.dynamics` fixed point with feedback); its ligands switch on at ``t = 0`` and
stay. Each condition is one :func:`semimech.dynamics.trajectory` solve (diffrax Tsit5, the
integrator behind :class:`semimech.protocol.Evolve`; gradients by discretise-then-optimise),
vmapped over conditions and saving every distinct time; a failed solve is reported in ``ok``.

What this cannot do: on an acyclic network a node can only overshoot through an incoherent
feed-forward path (a slow inhibiting branch); transient peaks made by feedback (receptor
internalisation, ERK -| SOS) need ``cycles="solve"`` when compiling the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from semimech.errors import DesignError
from semimech.models import _logic

#: Tolerances of the time-course solve (float32; readouts are compared on a log scale at ~0.05).
RTOL, ATOL, MAX_STEPS = 1e-4, 1e-6, 2048


def time_grid(times: Sequence[float], n_contexts: int) -> tuple[np.ndarray, np.ndarray]:
    """Check the ``times`` option: ``(grid, context_to_grid)``, the sorted distinct times and each
    context's index into them. One finite, non-negative time per design context is required."""
    try:
        t = np.asarray(times, dtype=float)
    except (TypeError, ValueError):
        raise DesignError(f"times must be numbers, one per design context; got {times!r}.") from None
    if t.ndim != 1 or t.size != n_contexts:
        raise DesignError(f"times gives {t.size} time(s) but the design has {n_contexts} context(s): give one time "
                          "per context, in the design's context order (design.contexts), e.g. "
                          "times=[float(c) for c in design.contexts].")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise DesignError(f"times must be finite and >= 0 (time since the ligand); got {t.tolist()}.")
    grid = np.unique(t)
    return grid, np.searchsorted(grid, t).astype(np.int32)


def relaxation_field(st: _logic.Structure):
    """``f(z, (logic params, rate), *, media=stim, intervention=keep)`` for :func:`semimech.dynamics.trajectory`."""

    def field(z, params, *, media=None, intervention=None):
        p, rate = params
        keep = 1.0 if intervention is None else intervention.production
        stim = jnp.zeros_like(z) if media is None else media
        return rate * (_logic.activation(keep * z, p, stim, st) - z)

    return field


def start_state(p: _logic.LogicParams, stim0, keep, st: _logic.Structure):
    """Activation before the ligands, ``(z0, ok)`` per condition: the steady state under ``stim0``."""
    if st.levels:
        _, z0 = _logic.compiled(st)(p, stim0, keep)
        return z0, jnp.ones(jnp.shape(z0)[0], bool)
    _, z0, ok = _logic.compiled(st, kind="fixed_point")(p, stim0, keep)
    return jnp.where(ok[:, None], z0, 0.0), ok


def activation_at(p: _logic.LogicParams, stim, keep, z0, rate, grid, st: _logic.Structure):
    """Activation of every condition at every time of ``grid``: ``(z (P, times, N), ok (P,))``.

    ``p`` broadcasts over conditions (leading axis of ``stim``/``keep``/``z0``); ``rate = 1 / tau``
    per node. Starts at ``t = 0`` from ``z0``.
    """
    from semimech.dynamics import Intervention, trajectory

    field = relaxation_field(st)
    P, N = jnp.shape(stim)
    E = st.src.size
    full = _logic.LogicParams(w=jnp.broadcast_to(p.w, (P, E)), k=jnp.broadcast_to(p.k, (P, E)),
                              n=jnp.broadcast_to(p.n, (P,) + jnp.shape(p.n)[-1:] if jnp.ndim(p.n) else (P,)),
                              basal=jnp.broadcast_to(p.basal, (P, N)))
    ts = jnp.asarray(grid, jnp.result_type(float))

    def one(pp, s, kp, x0):
        tr = trajectory(field, (pp, rate), x0=x0, ts=ts, t0=0.0, media=s, intervention=Intervention.scale(kp),
                        rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS)
        return jnp.where(tr.ok, jnp.clip(tr.xs, 0.0, 1.0), 0.0), tr.ok

    return jax.vmap(one)(full, stim, jnp.broadcast_to(keep, (P, N)), z0)
