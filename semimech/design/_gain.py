r"""Expected-gain estimators behind :func:`semimech.design.recommend` (arrays only).

Every estimator works on posterior (predictive) draws aligned draw by draw:

- ``mean`` ``(S, C, G)``: population means of the candidate conditions, draw ``i``;
- ``var`` ``(S, C, G)``: variance of an observed mean of the planned cells given draw ``i``
  (the measurement model; Gaussian for ``normal``, the negative binomial's variance for counts);
- ``outcome`` ``(S, C, G)``: one simulated observed mean per draw (draw ``j`` simulates what the
  experiment would show if draw ``j`` were the truth);
- quantities ``phi`` ``(S, K, G)`` (or ``(S, K, 1)`` for quantities without a gene axis, e.g.
  a network's edges): what the user wants to learn about, computed from the same draws.

Two ways to condition the draws on a batch's simulated outcomes:

``gaussian`` (ensemble / Kalman update). The draws define a covariance; observing candidate
``c`` (variance ``R_c`` averaged over draws) updates it as a linear-Gaussian model would:
``Sigma' = Sigma - Sigma[:, c] Sigma[c, :] / (Sigma[c, c] + R_c)``. Stored as
``Sigma = D^T W D / S`` with ``D`` the centred draws and ``W`` an ``S x S`` matrix per gene, each
pick is a rank-one update of ``W``. Exact for linear-Gaussian models (the outcome does not change a
Gaussian posterior's covariance, so conditioning on simulated outcomes and on the covariance is
the same); it uses the posterior's real (possibly skewed, correlated) covariance but cannot see a
hyperparameter being learned (e.g. the interaction scale). No Monte Carlo error beyond the draws'.

``reweight`` (importance reweighting of posterior draws, a nested Monte Carlo estimator). For
outer draw ``j = 1..J`` simulate the batch's outcome ``y_j`` from draw ``j``; weight every other
draw ``i != j`` by its likelihood ``p(y_j | theta_i)`` (self-normalised; draw ``j`` itself is left
out because it generated ``y_j``); the weighted draws are the posterior after the experiment.
Per outer draw we take the weighted variance of each quantity, corrected for the weights' finite
effective sample size (``/(1 - sum w^2)``), and average over ``j``:
``V_k = mean_j Var_w_j(phi_k)``, the expected posterior variance. Genes are independent
observations (gene ``g``'s readout reweights gene ``g``'s quantities; quantities without a gene
axis use the product over genes). Gains:

- variance reduction: ``sum_k (Var(phi_k) - V_k)``;
- information (nats): ``sum_k 0.5 log(Var(phi_k) / V_k)`` — the information gain of each
  component under a Gaussian with the same variances, summed over components (exact for
  Gaussian posteriors with independent components; components that share information are
  counted once each).

Error and bias of ``reweight``: the standard error reported is the outer Monte Carlo error (the
delta method over the ``J`` simulated outcomes; the prior variances use all ``S`` draws). The
inner estimate is biased when the weights degenerate: with an effective sample size ``n_eff`` the
weighted draws miss the posterior's tails, so ``V_k`` is too small and the gain too large, by a
relative amount of order ``1 / n_eff`` (the ``1 - sum w^2`` factor removes the leading term for
independent draws); the smallest mean ``n_eff`` over candidates is reported, and the gain is
capped at ``0.5 log S`` per component (no estimate from ``S`` draws can resolve more). Bias falls
as ``S`` grows; ``J`` sets the standard error.

Model discrimination (``mixture``): the predictive density of a batch's outcome under each
model is the mixture of its draws' likelihoods, ``p_m(y) = mean_i prod_c p(y_c | theta_i^m)``
(leaving out draw ``j`` of both models for the outcome draw ``j`` simulated); the gain is the expected log Bayes factor in favour
of the true model, averaged over which model is true (Jeffreys divergence of the two predictive
distributions): ``0.5 E_{y~A}[log p_A(y) - log p_B(y)] + 0.5 E_{y~B}[log p_B(y) - log p_A(y)]``.
Its standard error is the outer Monte Carlo error; the log of a finite mixture is biased low
(Jensen) for both models, by an amount that shrinks as the mixtures' effective sizes grow.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

LOG2PI = float(np.log(2 * np.pi))


@dataclasses.dataclass(frozen=True)
class Pick:
    """One greedy pick: the candidate's index, its marginal gain given the earlier picks, and the
    gain's Monte Carlo standard error (NaN for the Gaussian update)."""

    index: int
    gain: float
    se: float


@dataclasses.dataclass(frozen=True)
class Ranking:
    """The result of a greedy selection."""

    picks: tuple[Pick, ...]
    alone: np.ndarray  # (C,) each candidate's gain measured on its own
    alone_se: np.ndarray  # (C,)
    total_before: float  # the objective's total before the experiment (variance, or nan)
    min_ess: float  # smallest mean effective sample size of the reweighting (nan for gaussian)


def _loglik(y, mean, var):
    """log N(y_j | mean_i, var_i) per (j, i, g): y (J, G), mean/var (S, G) -> (J, S, G)."""
    return -0.5 * (LOG2PI + jnp.log(var)[None] + (y[:, None, :] - mean[None]) ** 2 / var[None])


# ------------------------------------------------------------------------------ gaussian update
def gaussian_predictive(mean_c, var_c, mean_q, *, budget: int, greedy: bool = True) -> Ranking:
    """Greedy expected reduction of ``sum over targets and genes`` of the population-mean variance.

    ``mean_c`` (S, C, G) candidate means, ``var_c`` (S, C, G) observation variances, ``mean_q``
    (S, Q, G) the targets' means. See the module docstring (``gaussian``).
    """
    S = mean_c.shape[0]
    dc = jnp.transpose(mean_c - mean_c.mean(0), (2, 0, 1))  # (G, S, C)
    dq = jnp.transpose(mean_q - mean_q.mean(0), (2, 0, 1))  # (G, S, Q)
    r = jnp.mean(var_c, axis=0).T  # (G, C)
    u = dc  # W D_C with W = I
    k = jnp.einsum("gsq,gtq->gst", dq, dq)  # D_Q D_Q^T (G, S, S)
    ku = jnp.einsum("gst,gtc->gsc", k, u)
    total = float(jnp.sum(dq**2) / (S - 1))
    state = (u, ku)
    alone = np.asarray(_gauss_gain(dc, u, ku, r, S))
    picks, chosen = [], []
    for _ in range(budget):
        g = alone if not picks else np.asarray(_gauss_gain(dc, *state, r, S))
        if not greedy:
            g = alone
        g = np.where(np.isin(np.arange(g.size), chosen), -np.inf, g)
        c = int(np.argmax(g))
        picks.append(Pick(c, float(g[c]), float("nan")))
        chosen.append(c)
        state = _gauss_update(dc, *state, r, c, S)
    return Ranking(tuple(picks), alone, np.full(alone.shape, np.nan), total, float("nan"))


@partial(jax.jit, static_argnums=(4,))
def _gauss_gain(dc, u, ku, r, S):
    num = jnp.sum(u * ku, axis=1) / S**2  # sum over targets of Cov(t, c)^2, (G, C)
    var = jnp.sum(dc * u, axis=1) / S  # current Var(c), (G, C)
    return jnp.sum(num / (var + r), axis=0) * (S / (S - 1))


@partial(jax.jit, static_argnums=(5,))
def _gauss_update(dc, u, ku, r, c, S):
    """Condition on observing candidate ``c``: W <- W - W d d^T W / (S (Var_c + R_c)), carried on
    U = W D_C and KU = K W D_C as rank-one updates."""
    uc = u[:, :, c]  # W d_c, (G, S)
    var = jnp.sum(dc[:, :, c] * uc, axis=1) / S  # (G,)
    alpha = 1.0 / (S * (var + r[:, c]))  # (G,)
    proj = jnp.einsum("gs,gsc->gc", uc, dc)  # u^T D_C, (G, C)
    kuc = ku[:, :, c]
    u = u - alpha[:, None, None] * uc[:, :, None] * proj[:, None, :]
    ku = ku - alpha[:, None, None] * kuc[:, :, None] * proj[:, None, :]
    return u, ku


# ------------------------------------------------------------------------------ reweighting
def reweight(mean_c, var_c, outcome_c, phi, *, budget: int, kind: str, num_outcomes: int,
             joint: bool = False, greedy: bool = True, chunk: int = 8) -> Ranking:
    """Greedy expected variance reduction (``kind="variance"``) or information (``"information"``)
    about ``phi`` by importance reweighting; see the module docstring.

    ``joint``: the quantities have no gene axis (``phi`` (S, K, 1)); weights use the product of
    the genes' likelihoods.
    """
    S, C, G = mean_c.shape
    J = min(num_outcomes, S)
    phi = jnp.asarray(phi)
    prior = jnp.var(phi, axis=0, ddof=1)  # (K, Gq)
    logw = jnp.zeros((J, S, 1 if joint else G)).at[jnp.arange(J), jnp.arange(J)].set(-jnp.inf)
    args = dict(kind=kind, joint=joint)
    base = _rw_eval(logw, prior, phi, **args)
    alone, alone_se, ess = _rw_all(mean_c, var_c, outcome_c, phi, prior, logw, base, J, chunk, args)
    picks, chosen = [], []
    min_ess = float(np.min(ess))
    for step in range(budget):
        if step == 0 or not greedy:
            g, se = alone, alone_se
        else:
            g, se, e = _rw_all(mean_c, var_c, outcome_c, phi, prior, logw, base, J, chunk, args)
            min_ess = min(min_ess, float(np.min(np.where(np.isin(np.arange(C), chosen), np.inf, e))))
        g = np.where(np.isin(np.arange(C), chosen), -np.inf, g)
        c = int(np.argmax(g))
        picks.append(Pick(c, float(g[c]), float(se[c])))
        chosen.append(c)
        logw = logw + _ll(mean_c[:, c], var_c[:, c], outcome_c[:J, c], joint)
        base = _rw_eval(logw, prior, phi, **args)
    total = float(jnp.sum(prior)) if kind == "variance" else float("nan")
    return Ranking(tuple(picks), alone, alone_se, total, min_ess)


def _ll(mean, var, y, joint):
    ll = _loglik(y, mean, var)
    return ll.sum(-1, keepdims=True) if joint else ll


def _rw_all(mean_c, var_c, outcome_c, phi, prior, logw, base, J, chunk, args):
    """Marginal gain (over the current batch) of every candidate, in chunks of candidates."""
    C = mean_c.shape[1]
    gains, ses, esss = [], [], []
    for s in range(0, C, chunk):
        idx = np.arange(s, min(C, s + chunk))
        if idx.size < chunk:  # pad to one compiled shape
            idx = np.concatenate([idx, np.full(chunk - idx.size, idx[-1])])
        n = min(C, s + chunk) - s
        g, se, ess = _rw_chunk(mean_c[:, idx], var_c[:, idx], outcome_c[:J, idx], phi, prior, logw, base, **args)
        gains.append(np.asarray(g)[:n])
        ses.append(np.asarray(se)[:n])
        esss.append(np.asarray(ess)[:n])
    return np.concatenate(gains), np.concatenate(ses), np.concatenate(esss)


@partial(jax.jit, static_argnames=("kind", "joint"))
def _rw_chunk(mean, var, y, phi, prior, logw, base, *, kind, joint):
    base_gain, base_infl = base[0], base[1]

    def one(m, v, yy):
        ll = _ll(m, v, yy, joint)
        gain, infl, ess = _rw_eval(logw + ll, prior, phi, kind=kind, joint=joint)
        d = infl - base_infl  # common simulated outcomes: the difference's own error
        return gain - base_gain, jnp.std(d, ddof=1) / jnp.sqrt(d.shape[0]), ess

    return jax.vmap(one, in_axes=(1, 1, 1))(mean, var, y)


@partial(jax.jit, static_argnames=("kind", "joint"))
def _rw_eval(logw, prior, phi, *, kind, joint):
    """Gain of the batch whose log-weights are ``logw`` (J, S, Gw): total, per-outcome influence
    values (their spread gives the standard error), mean effective sample size."""
    S = logw.shape[1]
    w = jax.nn.softmax(logw, axis=1)  # (J, S, Gw)
    sw2 = jnp.sum(w**2, axis=1)  # (J, Gw)
    ess = jnp.mean(1.0 / sw2)
    m1 = jnp.einsum("jig,ikg->jkg", w, phi)
    m2 = jnp.einsum("jig,ikg->jkg", w, phi**2)
    corr = jnp.maximum(1.0 - sw2, 1.0 / S)[:, None, :]
    vw = jnp.maximum(m2 - m1**2, 0.0) / corr  # (J, K, Gq)
    vbar = jnp.mean(vw, axis=0)
    if kind == "variance":
        return jnp.sum(prior - vbar), -jnp.sum(vw, axis=(1, 2)), ess
    ok = prior > 0
    vb = jnp.where(ok, jnp.maximum(vbar, prior / S), 1.0)  # no estimate from S draws resolves more
    gain = jnp.sum(jnp.where(ok, 0.5 * jnp.log(jnp.where(ok, prior, 1.0) / vb), 0.0))
    infl = -0.5 * jnp.sum(jnp.where(ok[None], vw / vb[None], 0.0), axis=(1, 2))
    return gain, infl, ess


# ------------------------------------------------------------------------------ discrimination
def discriminate(a, b, *, budget: int, num_outcomes: int, greedy: bool = True, chunk: int = 8) -> Ranking:
    """Greedy expected log Bayes factor between two models' predictive distributions.

    ``a`` and ``b`` are ``(mean, var, outcome)`` triples of ``(S, C, G)`` arrays (the two fits'
    draws for the same candidates); see the module docstring (``mixture``).
    """
    ma, va, oa = a
    mb, vb, ob = b
    S, C, _ = ma.shape
    Sb = mb.shape[0]
    J = min(num_outcomes, S, Sb)
    eye_a = jnp.zeros((J, S)).at[jnp.arange(J), jnp.arange(J)].set(-jnp.inf)
    eye_b = jnp.zeros((J, Sb)).at[jnp.arange(J), jnp.arange(J)].set(-jnp.inf)
    # outcomes simulated by A (rows) under A's and B's draws, and those simulated by B; draw j of
    # both models is left out for outcome j (it simulated it, or may share its randomness)
    state = (eye_a, eye_b, eye_a, eye_b)
    base = 0.0
    alone, alone_se = _disc_all(a, b, state, base, J, chunk)
    picks, chosen = [], []
    for step in range(budget):
        g, se = (alone, alone_se) if step == 0 or not greedy else _disc_all(a, b, state, base, J, chunk)
        g = np.where(np.isin(np.arange(C), chosen), -np.inf, g)
        c = int(np.argmax(g))
        picks.append(Pick(c, float(g[c]), float(se[c])))
        chosen.append(c)
        state = _disc_add(state, ma[:, c], va[:, c], oa[:J, c], mb[:, c], vb[:, c], ob[:J, c])
        base = float(_disc_value(*state)[0])
    return Ranking(tuple(picks), alone, alone_se, float("nan"), float("nan"))


def _disc_add(state, ma, va, oa, mb, vb, ob):
    laa, lab, lba, lbb = state
    s = lambda y, m, v: _loglik(y, m, v).sum(-1)  # noqa: E731
    return laa + s(oa, ma, va), lab + s(oa, mb, vb), lba + s(ob, ma, va), lbb + s(ob, mb, vb)


def _disc_value(laa, lab, lba, lbb):
    lse = jax.scipy.special.logsumexp
    S, Sb = laa.shape[1], lbb.shape[1]
    la = lse(laa, axis=1) - jnp.log(S - 1) - (lse(lab, axis=1) - jnp.log(Sb - 1))
    lb = lse(lbb, axis=1) - jnp.log(Sb - 1) - (lse(lba, axis=1) - jnp.log(S - 1))
    infl = 0.5 * la + 0.5 * lb
    return jnp.mean(infl), infl


def _disc_all(a, b, state, base, J, chunk):
    C = a[0].shape[1]
    gains, ses = [], []
    for s in range(0, C, chunk):
        idx = np.arange(s, min(C, s + chunk))
        n = idx.size
        idx = np.concatenate([idx, np.full(chunk - n, idx[-1])])  # one compiled shape
        g, se = _disc_chunk(*(x[:, idx] for x in a), *(x[:, idx] for x in b), state, base, J)
        gains.append(np.asarray(g)[:n])
        ses.append(np.asarray(se)[:n])
    return np.concatenate(gains), np.concatenate(ses)


@partial(jax.jit, static_argnums=(8,))
def _disc_chunk(ma, va, oa, mb, vb, ob, state, base, J):
    def one(ma, va, oa, mb, vb, ob):
        val, infl = _disc_value(*_disc_add(state, ma, va, oa[:J], mb, vb, ob[:J]))
        return val - base, jnp.std(infl, ddof=1) / jnp.sqrt(J)

    return jax.vmap(one, in_axes=(1,) * 6)(ma, va, oa, mb, vb, ob)
