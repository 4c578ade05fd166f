"""Linear cyclic structural causal model with interventions, as the steady state of linear dynamics.

Each gene's dimensionless state ``u`` (``loc = floor + scale * u``, see
:mod:`semimech.models._network`) follows ``du/dt = s_p * (W u + b) - u`` (decay rate 1 sets the
time unit). With no edit the fixed point is the linear SCM ``u = W u + b``; ``b`` is chosen so
that the control state is a fixed point, ``b = (I - W) u_ctrl``. A perturbation ``p`` scales
production, ``s_p = exp(log_s)``: a target gene's own production by its efficacy, a non-gene
target's direct effect on every gene. The perturbed fixed point ``u_p = (I - diag(s_p) W)^{-1} diag(s_p) b`` is solved for all
conditions with one LU of the control Jacobian ``W - I``
(:func:`semimech.dynamics.steady_states`: chord iterations from the control state and a
preconditioned implicit derivative; a condition whose iterations stall is solved exactly on its
own); ``solver="closed_form"`` instead factorises ``I - diag(s_p) W`` per condition (same values
to the solver tolerance, ~10x slower at 500 genes on CPU). Draws where a condition has no
solution are rejected. Edits propagate through ``W``: a modelled gene
never perturbed in training can be predicted (fresh ``target_z``), and combinations compose
their production scales, which is not additive in ``u`` whenever ``W`` links the targets.

Assumption (checked by :func:`semimech.checks.steady_state_check`): each condition sits at the
stable fixed point; the closed form does not check stability unless ``check_stability=True``.

Sample sites
------------
control_state : (genes,)
    Dimensionless control state ``u_ctrl`` (about 1; ``loc = floor + scale * u``).
bias : (genes,), deterministic
    Basal production ``b = (I - W) u_ctrl``.
log_scale : (perturbations, genes), deterministic
    Log production scale of each condition (the edit).
w_scale : ()
    Global scale of ``W`` (dimensionless: state per state).
w_local, w_z : (regulators, genes)
    Horseshoe local scales and standardised weights (``w_prior="horseshoe"``; ``laplace`` and
    ``normal`` sample only ``w_z``).
W : (regulators, genes), deterministic
    ``W[j, i]``: effect of regulator ``j``'s state on gene ``i``'s production (zero diagonal).
efficacy_loc, efficacy_sd : ()
    Hierarchical mean and sd of the log production scale of an edited target gene
    (negative: knockdown, positive: activation).
direct_scale : (), direct_sd : (genes,)
    Scale of the direct log production scales of targets that are not modelled genes.
target_z : (targets, genes)
    Standardised target effects: entry ``[t, g_t]`` is the efficacy of a gene target ``t``
    (``efficacy_loc + efficacy_sd * z``); a non-gene target's row is its direct effect.
context_log_sd : (), context_log_z : (contexts, genes)
    Designs with contexts only: each context's log production scale of every gene, pooled
    (:func:`semimech.models._network.context_log_scales`).
shared_z, guide_sd, context_sd
    Only with ``variant_of``/``shared_gene_index``: the effect shared by a target's variants (guides
    of a gene, one drug across contexts) and their spread, see
    :func:`semimech.models._network.target_log_scales`.
effect_mean, program_scale, program_loadings, program_z, embedding_scale, embedding_coef, effect_scale,
effect_sd, effect_z
    The misfit of the dynamics (``residual="population"``, the default): a per-target effect from a learned
    population (:mod:`semimech.models._effects`; ``effect_programs``, ``embedding``, ``effect_deviation``), so an
    unseen target gets the response the dynamics do not explain from it, and a combination its targets' misfits summed
    (see :func:`semimech.models._network.residual`).
residual_scale, residual_sd, residual_z
    With ``residual=True`` instead: a fresh misfit per perturbed condition (the default until 2026-12-06;
    an unseen combination then gets none of its targets' misfits).
ok_fraction : (), deterministic
    Fraction of conditions whose steady state was solved (draws with any failure are rejected).
mean : (perturbations, genes), deterministic
    Population mean per condition on the data scale.
noise_sd / concentration, batch_sd, batch_z, y
    Measurement sites, see :mod:`semimech.measurement`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpyro

from semimech.dynamics import Intervention, LinearParams, linear_field, linear_steady_state, steady_states
from semimech.dynamics._linalg import dense_solve
from semimech.errors import DesignError
from semimech.infer.spec import ModelSpec
from semimech.measurement import gene_noise
from semimech.models import _effects
from semimech.models import _network as net


@functools.partial(jax.jit, static_argnames="check_stability")
def steady_states_closed_form(W, b, log_s, *, check_stability: bool = False):
    """Fixed points ``(I - diag(s) W)^{-1} diag(s) b`` for each row of ``log_s`` (vmapped).

    Returns the :class:`semimech.dynamics.SteadyState` batch (``x``: conditions x genes).
    Jitted: NumPyro runs a model eagerly several times while setting up inference, and an
    eager vmapped solve costs seconds.
    """
    n = b.shape[-1]
    params = LinearParams(W=W, b=b, gamma=jnp.ones((n,), b.dtype))

    def one(ls):
        edit = Intervention.scale(jnp.exp(ls))
        return linear_steady_state(params, intervention=edit, check_stability=check_stability)

    return jax.vmap(one)(log_s)


@functools.partial(jax.jit, static_argnames="check_stability")
def steady_states_shared(W, b, log_s, x0=None, *, check_stability: bool = False):
    """The fixed points of :func:`steady_states_closed_form` with one LU of the control Jacobian.

    :func:`semimech.dynamics.steady_states` on :func:`~semimech.dynamics.linear_field` from
    ``x0`` (default: the control state ``(I - W)^{-1} b``; the model passes ``u_ctrl``, which is
    that state by construction of ``b``): chord iterations for every condition at once, the implicit
    derivative by Richardson iterations preconditioned with the same LU; a condition whose
    iterations stall falls back to its own closed form. Values agree with the closed form to the
    solver tolerance (1e-9 in float64, 1e-4 in float32).
    """
    n = b.shape[-1]
    params = LinearParams(W=W, b=b, gamma=jnp.ones((n,), b.dtype))
    if x0 is None:
        x0 = dense_solve(jnp.eye(n, dtype=b.dtype) - jax.lax.stop_gradient(W), jax.lax.stop_gradient(b))
    return steady_states(linear_field, params, interventions=Intervention.scale(jnp.exp(log_s)),
                         x0=jax.lax.stop_gradient(x0), check_stability=check_stability)


SOLVERS = {"shared": steady_states_shared, "closed_form": steady_states_closed_form}


def system(draw: dict):
    """The dynamics of one draw: ``(field, params, x0, log_scale)`` for :mod:`semimech.checks`.

    ``draw`` holds the sites ``W`` (regulators x genes), ``bias`` and ``control_state`` (genes);
    the edit of a condition is ``Intervention.scale(exp(log_scale[p]))``.
    """
    W = jnp.asarray(draw["W"]).T
    b = jnp.asarray(draw["bias"])
    params = LinearParams(W=W, b=b, gamma=jnp.ones_like(b))
    return linear_field, params, jnp.asarray(draw["control_state"]), jnp.asarray(draw["log_scale"])


@net.with_shared_options
def model(data, *, likelihood: str = "normal", w_prior: str = "horseshoe", w_scale: float = 0.1, network=None,
          network_mode: str = "mask", check_stability: bool = False, solver: str = "shared", y=None, **shared):
    """The linear steady-state model; sites: the module docstring.

    The options every steady-state model shares (``efficacy_prior_scale``, ``direct_prior_scale``,
    ``variant_of``, ``shared_gene_index``, ``direct_mask``, ``residual``, ``embedding``, ``gene_embedding``,
    ``effect_programs``, ``effect_deviation``): :class:`semimech.models._network.SharedOptions`.
    ``likelihood``: ``"normal"`` or ``"negbin"``, as in :func:`semimech.models.additive.model`.
    ``w_prior``: the prior of the weights ``W``, ``"horseshoe"`` (default), ``"laplace"`` or ``"normal"``;
    ``w_scale`` (default 0.1): half-normal scale of their global scale (site ``w_scale``).
    ``network`` is a signed ``[regulator, gene]`` matrix from
    :func:`semimech.models._network.network_matrix` (``mask`` or ``scale`` by ``network_mode``), or the
    edges table / ``.sif`` path itself (a fit makes the matrix for its design's genes, in their order).
    ``solver`` is ``"shared"`` (one LU for all conditions, default) or ``"closed_form"`` (one LU
    per condition); both give the same fixed points.
    """
    opts = net.shared_options(shared)
    if solver not in SOLVERS:
        raise DesignError(f"linear_steady_state: solver={solver!r} is not one of {sorted(SOLVERS)}; "
                          "use 'shared' (default) or 'closed_form'.")
    n = data["n_genes"]
    genes = numpyro.plate("genes", n, dim=-1)
    unit = net.unit_scale(data, likelihood)
    floor, scale = net.state_map(data, likelihood)
    with genes:
        noise = gene_noise(data, likelihood=likelihood)
    u_ctrl = net.control_state(genes)
    W = net.network_weights(data, n=n, regulators_plate=numpyro.plate("regulators", n, dim=-2), genes_plate=genes,
                            w_prior=w_prior, w_scale=w_scale, network=network, network_mode=network_mode)
    b = u_ctrl - W @ u_ctrl
    with genes:
        numpyro.deterministic("bias", b)
    log_s = net.gene_log_scales(data, genes, opts)
    net.record_scales(log_s, genes)
    if solver == "shared":
        ss = steady_states_shared(W, b, log_s, u_ctrl, check_stability=check_stability)
    else:
        ss = steady_states_closed_form(W, b, log_s, check_stability=check_stability)
    loc_p = floor + scale * net.solved(ss, u_ctrl, data)
    net.observe(loc_p, noise, data, genes, opts, likelihood=likelihood, y=y, unit=unit)


SPEC = ModelSpec(
    name="linear_steady_state",
    model=model,
    assumes="each condition is the fixed point of linear dynamics dx/dt = s_p (W x + b) - x (a linear cyclic SCM); "
    "edits scale production and propagate through W; combinations compose edits",
    predicts_unseen_targets=True,
    side_information=_effects.has_embedding,
    prediction_sites=_effects.prediction_sites,
    resolve_options=net.resolve_options,
    prepare_options=net.prepare_options,
)
