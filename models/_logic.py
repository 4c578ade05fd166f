"""Continuous logic on a signed network: the pure math of the signalling model (JAX, no NumPyro).

Each node's activity lies in [0, 1]. Following CNORode (Wittmann et al., BMC Syst Biol 3:98,
2009; MacNamara et al., Phys Biol 9:045003, 2012), a regulator's activity passes through a
normalised Hill function

    f(x) = x^n / (x^n + k^n) * (1 + k^n)          (f(0) = 0, f(1) = 1),

and an edge ``e`` of weight ``w_e`` in [0, 1] contributes ``a_e = w_e f(x_src)`` (an AND pair:
``w_e f(x_a) f(x_b)``: both inputs needed). A node combines its inputs as

    A_i = 1 - (1 - basal_i) * prod_{activating e} (1 - a_e)     (OR of the activators and a basal input)
    B_i = A_i * prod_{inhibiting e} (1 - a_e)                    (inhibiting edges gate the activity)

with ``A_i = 1`` for a node whose only inputs inhibit it (constitutively active unless
inhibited) and ``A_i = basal_i`` for a root. A stimulus of node ``i`` is one more OR input at
full strength: ``A_i <- 1 - (1 - A_i)(1 - s_i)``. An inhibitor scales the node's *activity*:
``x_i = keep_i * B_i`` with ``keep_i = prod (1 - efficacy)`` over the inhibitors of ``i``; what
propagates downstream is ``x_i``. ``B_i`` is the node's activation by its regulators, which is
what a phospho-readout of an inhibited kinase measures (an allosteric block leaves the kinase's
own phosphorylation untouched; with feedback it may rise, as U0126 raises p-MEK in Sachs 2005).

Steady state: with ``dx/dt = tau (keep * B(x) - x)``, ``tau`` drops out. On a DAG the steady
state is one pass in topological order (:func:`closed_form`): exact, differentiable, and cheap
enough for NUTS. With feedback, :func:`fixed_point` solves ``x = keep * B(x)`` with
:func:`semimech.dynamics.steady_state` (Newton with implicit derivatives, ODE fallback, failures
reported in ``ok``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

_EPS = 1e-6


class LogicParams(NamedTuple):
    """Parameters of one condition (or broadcastable over conditions).

    ``w``, ``k``: ``(..., edges)`` weight in [0, 1] and Hill threshold in (0, 1); ``n``: Hill
    exponent, a scalar or ``(..., edges)`` (>= 1); ``basal``: ``(..., nodes)`` basal activity in [0, 1].
    """

    w: Float[Array, "... edges"]
    k: Float[Array, "... edges"]
    n: Float[Array, "..."]
    basal: Float[Array, "... nodes"]


def hill(x, k, n):
    """Normalised Hill function on [0, 1]: ``x^n / (x^n + k^n) * (1 + k^n)``.

    Computed as ``sigmoid(n (log x - log k)) * (1 + k^n)``, the same value without forming
    ``x^n + k^n``, which underflows to 0 in float32 for steep switches (``n`` in the tens) with
    small ``x`` and ``k`` and made the ratio 0 / 0 = NaN (LiverDREAM fits reached n ~ 30).
    """
    x = jnp.clip(x, 0.0, 1.0)
    log_k = jnp.log(k)
    return jax.nn.sigmoid(n * (jnp.log(jnp.maximum(x, 1e-12)) - log_k)) * (1.0 + jnp.exp(n * log_k))


class Structure(NamedTuple):
    """Static index arrays of a network (numpy): see :func:`structure`."""

    src: np.ndarray
    dst: np.ndarray
    partner: np.ndarray
    sign: np.ndarray
    n_nodes: int
    has_act: np.ndarray
    has_neg: np.ndarray
    levels: tuple  # ((node indices, edge indices), ...) in topological levels; () if cyclic


def _key(st: Structure):
    return (st.src.tobytes(), st.dst.tobytes(), st.partner.tobytes(), st.sign.tobytes(), st.n_nodes, bool(st.levels))


_COMPILED: dict = {}


def compiled(st: Structure, *, kind: str = "closed_form"):
    """A jitted ``closed_form`` or ``fixed_point`` for this structure (cached by its arrays).

    NumPyro runs a model eagerly while it initialises; one compiled call per forward pass keeps
    those runs cheap (the unrolled levels are many small operations).
    """
    key = (kind, _key(st))
    if key not in _COMPILED:
        fn = closed_form if kind == "closed_form" else fixed_point
        _COMPILED[key] = jax.jit(lambda p, stim, keep: fn(p, stim, keep, st))
    return _COMPILED[key]


def structure(arrays: dict, n_nodes: int, *, acyclic: bool) -> Structure:
    """Static structure from :func:`semimech.models._pkn.as_arrays`; ``levels`` when acyclic."""
    src, dst, partner, sign = (np.asarray(arrays[k]) for k in ("src", "dst", "partner", "sign"))
    has_act = np.zeros(n_nodes, bool)
    has_neg = np.zeros(n_nodes, bool)
    has_act[dst[sign > 0]] = True
    has_neg[dst[sign < 0]] = True
    levels = ()
    if acyclic:
        depth = np.zeros(n_nodes, int)
        for _ in range(n_nodes):  # longest-path depth (Bellman-Ford on a DAG)
            new = depth.copy()
            for s, p, t in zip(src, partner, dst):
                new[t] = max(new[t], depth[s] + 1, depth[p] + 1 if p >= 0 else 0)
            if np.array_equal(new, depth):
                break
            depth = new
        levels = tuple((np.flatnonzero(depth == d), np.flatnonzero(depth[dst] == d)) for d in range(depth.max() + 1))
    return Structure(src, dst, partner, sign, n_nodes, has_act, has_neg, levels)


def _edge_terms(x, p: LogicParams, st: Structure, edges):
    """``log(1 - a_e)`` of ``edges`` given activities ``x`` (..., nodes)."""
    w, k = p.w[..., edges], p.k[..., edges]
    n = p.n[..., edges] if jnp.ndim(p.n) and jnp.shape(p.n)[-1] == st.src.size else p.n
    a = hill(x[..., st.src[edges]], k, n)
    part = st.partner[edges]
    if np.any(part >= 0):
        a = a * jnp.where(part >= 0, hill(x[..., np.maximum(part, 0)], k, n), 1.0)
    return jnp.log1p(-jnp.clip(w * a, 0.0, 1.0 - _EPS))


def _combine(terms, edges, nodes, p: LogicParams, stim, st: Structure):
    """``B`` of ``nodes`` from the edge terms of ``edges`` (all into ``nodes``)."""
    local = {int(n): i for i, n in enumerate(nodes)}
    dst_local = np.array([local[int(t)] for t in st.dst[edges]], int)
    act = np.zeros((edges.size, nodes.size), np.float32)
    neg = np.zeros((edges.size, nodes.size), np.float32)
    pos = st.sign[edges] > 0
    act[np.flatnonzero(pos), dst_local[pos]] = 1.0
    neg[np.flatnonzero(~pos), dst_local[~pos]] = 1.0
    basal = p.basal[..., nodes]
    l_act = terms @ act if edges.size else 0.0
    l_neg = terms @ neg if edges.size else 0.0
    A = jnp.where(st.has_act[nodes], 1.0 - (1.0 - basal) * jnp.exp(l_act),
                  jnp.where(st.has_neg[nodes], 1.0, basal))
    s = stim[..., nodes]
    A = 1.0 - (1.0 - A) * (1.0 - s)
    return A * jnp.exp(l_neg)


def closed_form(p: LogicParams, stim: Float[Array, "... nodes"], keep: Float[Array, "... nodes"], st: Structure):
    """Steady state on a DAG, level by level: ``(x, B)``, activity and activation, each (..., nodes).

    ``stim``: stimulus input per node in [0, 1]; ``keep``: activity scale per node (1 - inhibition).
    """
    if not st.levels:
        raise ValueError("closed_form needs an acyclic structure (levels); use fixed_point for feedback networks.")
    shape = jnp.broadcast_shapes(jnp.shape(stim), jnp.shape(keep), jnp.shape(p.basal))
    x = jnp.zeros(shape)
    B = jnp.zeros(shape)
    for nodes, edges in st.levels:
        terms = _edge_terms(x, p, st, edges) if edges.size else None
        b = _combine(terms, edges, nodes, p, stim, st)
        B = B.at[..., nodes].set(b)
        x = x.at[..., nodes].set(keep[..., nodes] * b)
    return x, B


def activation(x, p: LogicParams, stim, st: Structure):
    """``B(x)`` for every node at once (any network): the right-hand side of the fixed point."""
    edges = np.arange(st.src.size)
    nodes = np.arange(st.n_nodes)
    terms = _edge_terms(x, p, st, edges)
    return _combine(terms, edges, nodes, p, stim, st)


def make_field(st: Structure, *, tau=None):
    """A vector field ``f(x, params, *, media, intervention)`` for :mod:`semimech.dynamics`:
    ``tau * (keep * B(x; params, stim=media) - x)``, ``keep = intervention.production``."""

    def field(x, params, *, media=None, intervention=None):
        stim = jnp.zeros_like(x) if media is None else media
        keep = 1.0 if intervention is None else intervention.production
        rate = 1.0 if tau is None else tau
        return rate * (keep * activation(x, params, stim, st) - x)

    return field


def fixed_point(p: LogicParams, stim, keep, st: Structure, *, picard: int = 30, max_steps: int = 32,
                fallback: bool = True):
    """Steady state of a network with feedback: ``(x, B, ok)`` per condition (leading axis).

    ``p``'s leaves carry the same leading ``conditions`` axis as ``stim``/``keep`` (or none).
    A damped fixed-point iteration from zero gives the start (not differentiated), then
    :func:`semimech.dynamics.steady_state` (Newton, implicit derivatives, ODE fallback).
    ``ok`` is False where the solve failed; the caller rejects those draws.
    """
    from semimech.dynamics import Intervention, steady_state

    field = make_field(st)

    def one(pp, s, kp):
        def step(x, _):
            return 0.5 * x + 0.5 * kp * activation(x, pp, s, st), None

        x0, _ = jax.lax.scan(step, jnp.zeros_like(s), None, length=picard)
        ss = steady_state(field, pp, media=s, intervention=Intervention.scale(kp), x0=jax.lax.stop_gradient(x0),
                          max_steps=max_steps, fallback=fallback)
        x = jnp.clip(ss.x, 0.0, 1.0)
        return x, activation(x, pp, s, st), ss.ok

    P, N = jnp.shape(stim)
    E = st.src.size
    full = LogicParams(w=jnp.broadcast_to(p.w, (P, E)), k=jnp.broadcast_to(p.k, (P, E)),
                       n=jnp.broadcast_to(p.n, (P, E)),
                       basal=jnp.broadcast_to(p.basal, (P, N)))
    return jax.vmap(one)(full, stim, jnp.broadcast_to(keep, (P, N)))
