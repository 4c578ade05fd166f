"""Signalling-network model: continuous logic on a prior-knowledge network (PKN).

Nodes are the species of a signed PKN (SIF), measured or latent (PI3K, IKK, RAS, ...). Each
node's steady-state activity in [0, 1] is a normalised-Hill combination of its regulators
(CNORode's continuous logic, OR of single edges and AND pairs, inhibiting edges gating; see
:mod:`semimech.models._logic`); stimuli switch their input nodes on; an inhibitor scales the
*activity* of its target node, so a readout upstream of the block is untouched and the blocked
kinase's own phosphorylation is its activation ``B``, not its activity
(``inhibitor_readout="input"``, default). Each readout ``r`` measures node ``i(r)`` on the log scale:

    loc[p, r] = offset[c, r] + scale[c, r] * B[p, i(r)]        (c: the condition's context)

Edges shrink hard: an edge weight is ``w = sigmoid(mu + s z)``, a logit-normal with a large
``s`` — a continuous spike-and-slab with mass near 0 (absent) and near 1 (active); PKN edges
(``edge_prior``), AND pairs (``and_prior``) and optional non-PKN edges (``extra_prior``, much
smaller) differ in ``mu``. Contexts (cell lines) share the structure and pool edge logits,
basal activities, inhibitor efficacies and readout offsets/scales around shared values
(non-centred, sd learned). With one context no context sites are sampled.

Steady state: on an acyclic network the closed form in topological order (one pass, exact,
differentiable, cheap enough for NUTS); with feedback (``cycles="solve"`` when compiling the
network) the fixed point ``x = keep * B(x)`` by :func:`semimech.dynamics.steady_state`
(implicit derivatives; a failed solve rejects the draw, ``ok_fraction`` records it). Build the
``network`` option with :func:`network_option` (from a SIF table and the treatment/readout
vocabulary); without it every target is a stimulus of its own input node and every
target -> readout edge of either sign is a candidate (a PKN-free default).

Sample sites
------------
edge_z : (edges,)
    Standardised edge logits; ``logit w = mu + s * edge_z`` by edge kind.
edge_context_sd, edge_context_z : (), (contexts, edges)
    Context deviations of the edge logits (only with several contexts).
edge_weight : (contexts, edges), deterministic
    Edge weight in [0, 1] per context (``P(edge_weight > 0.5)`` is an edge's posterior probability of being active).
hill_k : (edges,)
    Normalised-Hill threshold in (0, 1).
hill_excess : ()
    Hill exponent ``n = 1 + hill_excess``.
basal_z, basal_context_sd, basal_context_z
    Basal activity logits per node (and context); ``basal`` : (contexts, nodes), deterministic.
efficacy_z, efficacy_context_sd, efficacy_context_z
    Inhibitor efficacy logits per target (and context); ``efficacy`` : (contexts, targets), deterministic.
offset_z, scale_z, offset_context_sd, scale_context_sd, offset_context_z, scale_context_z
    Readout measurement (see above), per gene (and context): ``offset`` around the readout's
    training centre, ``scale = sign * spread * exp(log 2.5 + 0.6 scale_z)`` with the readout's
    sign fixed (``readout_signs`` of :func:`compile_network`) and its spread from the training data.
activity : (perturbations, nodes), deterministic
    Steady-state activation ``B`` of every node per condition.
off_target_z, off_target : (off_targets,)
    Off-target inhibition logit and fraction for each (inhibitor, other node) pair
    (``off_target=True``; pairs listed by :func:`semimech.models._signalling_options.network_arrays`).
readout_block_z, readout_block : (readout_blocks,)
    Direct block of a readout's measurement by an inhibitor (``readout_block=True``).
residual_scale, residual_sd, residual_z
    Per-condition misfit (``residual=True``).
assay_sd, misfit_sd : (genes,)
    With a given measurement noise (``noise_sd`` option or the design's noise model) and a
    ``misfit`` scale (default): the measurement part (sampled for replicate priors and the option) and
    the learned structural error; ``noise_sd`` is then their total, ``sqrt(assay^2 + misfit^2)``.
misfit_cut : factor
    ``misfit_cut=True`` (default): the residuals' likelihood that alone informs ``misfit_sd`` (cut posterior).
ok_fraction : (), deterministic
    Fraction of conditions whose fixed-point solve converged (feedback networks only).
mean : (perturbations, genes), deterministic
    Population mean per condition on the data scale.
noise_sd / concentration, batch_sd, batch_z, y
    Measurement sites, see :mod:`semimech.measurement`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from semimech.errors import DesignError
from semimech.infer.spec import ModelSpec
from semimech.measurement import BOUND_TOLERANCE, ClippedNormal, gene_noise, observe_conditions, to_data_scale
from semimech.measurement.likelihoods import total_sd
from semimech.models import _logic
from semimech.models import _network as net_helpers
from semimech.models import _signalling_time as _time
from semimech.models._pkn import Network, NetworkWarning, compile_network, default_readouts
from semimech.models._signalling_options import (default_network, network_arrays, network_option, prepare_network,
                                                 readout_scales)
from semimech.models._signalling_structure import edge_posteriors, plot_edge_posteriors, pruned_sif

__all__ = ["BOUND_TOLERANCE", "SPEC", "ClippedNormal", "Network", "NetworkWarning", "compile_network",
           "default_readouts", "edge_posteriors", "model", "network_option", "plot_edge_posteriors", "pruned_sif"]


def _logit_normal(name, mu, s, z_shape_plate, *, ctx, ctx_scale, plate_ctx):
    """Non-centred logit ``mu + s z`` with optional context deviations; returns (contexts, ...) logits."""
    with z_shape_plate:
        z = numpyro.sample(f"{name}_z", dist.Normal(0.0, 1.0))
    logit = mu + s * z
    if ctx > 1:
        sd = numpyro.sample(f"{name}_context_sd", dist.HalfNormal(ctx_scale))
        with plate_ctx, z_shape_plate:
            cz = numpyro.sample(f"{name}_context_z", dist.Normal(0.0, 1.0))
        return logit + sd * cz
    return logit[None]


def _noise(data, genes, spread, *, likelihood: str, noise_sd, misfit, cut: bool = False):
    """Per-readout sd of one observation: ``(sd the rows are observed with, cut)``.

    The measurement part: the ``noise_sd`` option's prior, else the design's noise model
    (:mod:`semimech.measurement.noise`: known, xMAP, from replicates), else learned (half-normal on
    the readout's spread). When the measurement part is given (by the option or the design) and
    ``misfit`` is a number, the network's structural error is learned on top, in quadrature:
    ``misfit_sd ~ HalfNormal(misfit * spread)`` per readout (site ``assay_sd`` then holds the
    measurement part, ``noise_sd`` the total). A learned noise already absorbs the misfit.
    With ``cut`` the rows are observed with the measurement part only and ``cut`` is
    ``(assay, misfit_sd)`` for :func:`_misfit_cut`; otherwise ``cut`` is None.
    """
    kind = data.get("noise_kind", "learned")
    if data.get("noise_batch_group") is not None:
        raise DesignError("signalling_network does not model noise per group of batches (NoiseModel.by_batch); "
                          "attach the replicate prior without by_batch (one sd per readout).")
    known = noise_sd is not None or kind != "learned"
    add_misfit = likelihood == "normal" and known and misfit is not None and not (
        noise_sd is None and kind in ("fixed", "xmap") and data.get("noise_extra", False))
    if likelihood != "normal" or (noise_sd is None and kind != "learned" and not add_misfit):
        with genes:
            return gene_noise(data, likelihood=likelihood), None
    with genes:
        if noise_sd is None and not known:
            return numpyro.sample("noise_sd", dist.HalfNormal(spread)), None
        if noise_sd is None and kind == "replicates":
            assay = numpyro.sample("assay_sd", dist.LogNormal(jnp.asarray(data["noise_prior_loc"]),
                                                              jnp.asarray(data["noise_prior_scale"])))
        elif noise_sd is None:  # fixed / xMAP: the known part enters through total_sd
            assay = jnp.zeros_like(spread)
        else:
            loc, rel = (noise_sd, 0.3) if np.ndim(noise_sd) == 0 else noise_sd
            assay = numpyro.sample("assay_sd" if add_misfit else "noise_sd", dist.LogNormal(jnp.log(loc), rel))
            if not add_misfit:
                return assay, None
        mis = numpyro.sample("misfit_sd", dist.HalfNormal(misfit * spread))
        total = numpyro.deterministic("noise_sd", jnp.sqrt(assay**2 + mis**2))
    return (assay, (assay, mis)) if cut else (total, None)


def _input_nodes(st, arr) -> np.ndarray:
    """(nodes,) bool: input nodes, without incoming edges and switched on by a stimulus (or the background)."""
    has_in = np.zeros(st.n_nodes, bool)
    has_in[st.dst] = True
    stimulated = (np.asarray(arr["stim_map"]).sum(0) > 0) | (np.asarray(arr["background"]) > 0)
    return ~has_in & stimulated


def _readout_state(inhibitor_readout, B, x, nodes):
    """What a readout of each node measures: its activation ``B``, its activity ``x``, or per node."""
    if isinstance(inhibitor_readout, str):
        return B if inhibitor_readout == "input" else x
    names = [str(n) for n in inhibitor_readout]
    unknown = [n for n in names if n not in nodes]
    if unknown:
        raise DesignError(f"inhibitor_readout names {unknown}, which are not nodes of the network "
                          f"({list(nodes)}); list node names whose readout measures the activity.")
    as_activity = np.isin(np.asarray(nodes, dtype=object), names)
    return jnp.where(jnp.asarray(as_activity)[None, :], x, B)


def _check_bounds(bounds, likelihood, y, n_cells=None):
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise DesignError(f"bounds must be None or (low, high), got {bounds!r}.") from None
    if not lo < hi:
        raise DesignError(f"bounds must satisfy low < high, got {bounds!r}.")
    if likelihood != "normal":
        raise DesignError(f"bounds need likelihood='normal' (a clipped Gaussian), got {likelihood!r}.")
    if y is not None and not hasattr(y, "todense") and not isinstance(y, jax.core.Tracer):
        v = np.asarray(y)
        out = v[np.isfinite(v) & ((v < lo - 1e-9) | (v > hi + 1e-9))]
        if out.size:
            raise DesignError(f"bounds {(lo, hi)}: {out.size} observed values lie outside them (e.g. {out[:3].tolist()}); "
                              "the bounds are the data's normalised range, which every value must respect.")
    if n_cells is not None and not isinstance(n_cells, jax.core.Tracer) and np.any(np.asarray(n_cells) > 1):
        raise DesignError(f"bounds treat each row as one observation, but some rows are means of up to "
                          f"{int(np.max(np.asarray(n_cells)))} observations (a pseudobulk): a mean of clipped values "
                          "is not a clipped normal. Fit the individual rows (replicates as rows, not "
                          "design.pseudobulk()), or drop bounds.")
    return lo, hi


def _misfit_cut(loc_p, assay, mis, data, y, bounds=None):
    """The structural error's likelihood, cut from the network (modular inference).

    The rows' residuals from the fitted network (``stop_gradient``: no feedback into the
    network's parameters or the measurement part) observed with ``sqrt(measurement^2 +
    misfit_sd^2)``; only ``misfit_sd`` learns from this factor. Batch offsets are not removed.
    """
    if y is None:
        return
    pidx = jnp.asarray(data["perturbation_index"])
    loc = jax.lax.stop_gradient(loc_p)[pidx]
    meas = jax.lax.stop_gradient(total_sd(assay, data, loc))
    sd = jnp.sqrt(meas**2 + mis**2) / jnp.sqrt(jnp.asarray(data["n_cells"]))[:, None]
    lp = (dist.Normal(loc, sd) if bounds is None else ClippedNormal(loc, sd, *bounds)).log_prob(jnp.asarray(y))
    if data.get("row_mask") is not None:
        lp = jnp.where(jnp.asarray(data["row_mask"], bool)[:, None], lp, 0.0)
    numpyro.factor("misfit_cut", jnp.sum(lp))


def model(data, *, likelihood: str = "normal", network: dict | None = None, edge_prior=(-1.0, 2.5),
          and_prior=(-2.0, 2.5), extra_prior=(-5.0, 2.0), off_target: bool = True, readout_block: bool = True,
          off_target_prior=(-4.0, 2.0),
          basal_prior=(-2.0, 2.0), hill_prior=(-0.5, 1.0), context_scale: float = 1.0, noise_sd=None,
          residual: bool = False, misfit: float | None = 1.0, misfit_cut: bool = True,
          inhibitor_readout="input", times=None, tau_prior=(20.0, 1.0), bounds=None,
          parametrisation: str = "cnorode", y=None):
    """The signalling-network model; see the module docstring for the sites.

    Parameters
    ----------
    data
        ``Design.model_data()`` or the same keys as plain arrays: ``target_matrix``
        (perturbations x targets), ``perturbation_index`` (rows,), ``n_obs``, ``n_genes``,
        ``size_factors``, ``n_cells``; optional ``perturbation_context`` (perturbations,) and
        ``n_contexts`` (factorial designs).
    likelihood
        ``"normal"`` (Gaussian readouts) or ``"negbin"`` (negative binomial; the design's readouts must
        be counts; not with ``bounds``); ``"normal"`` when the model is called directly, while a fit
        defaults to ``"negbin"`` for a count design and ``"normal"`` otherwise (see :mod:`semimech.measurement`).
    network
        :func:`network_option` output (JSON), or the compiled :class:`Network` (a fit turns it into its
        option for the design it fits); default: :func:`default_network` of ``data``.
    edge_prior, and_prior, extra_prior
        ``(mu, s)`` of the logit-normal edge-weight prior for PKN edges, AND pairs, non-PKN edges.
    off_target, off_target_prior
        Let each inhibitor also scale other nodes' activity (kinase inhibitors are rarely
        specific), with a logit-normal ``(mu, s)`` prior that keeps such effects absent unless
        the data need them (sites ``off_target_z``, deterministic ``off_target``, over the
        ``off_targets`` plate: every inhibitor x node pair but its named node(s)).
    readout_block
        Let each inhibitor also lower a readout's measured value directly (a block of the
        phospho-site itself, or of an unmodelled route to it): ``m_r <- m_r * prod (1 - d)``,
        same prior as off-targets (sites ``readout_block_z``, ``readout_block`` over the
        ``readout_blocks`` plate: inhibitor x readout pairs).
    basal_prior
        ``(mu, s)``: logit-normal prior of each node's basal activity (cell lines often signal
        without a stimulus; inhibitors then act in unstimulated cells too).
    hill_prior
        ``(mu, s)``: log-normal prior of ``n - 1`` (the Hill exponent, shared by all edges).
    context_scale
        Half-normal scale of the context sds (logit units; readout spreads for offsets).
    noise_sd
        ``None``: the design's noise model (``Design.with_noise``: known, xMAP, from replicates),
        or a half-normal sd per readout scaled by its spread; a number, or ``(sd, log-sd)``: a
        log-normal prior around a known measurement sd (data units), for designs with one
        measurement per condition where the noise cannot be estimated.
    residual
        Add a per-condition misfit (sites ``residual_scale``, ``residual_sd``, ``residual_z``, see
        :func:`semimech.models._network.residual`; scale: the readouts' spreads): an unseen
        condition's interval then includes the misfit of the network seen in training. Useful
        when conditions are measured precisely (many cells), where noise cannot absorb it.
    misfit
        Half-normal scale (in readout spreads) of a per-readout structural-error sd added in
        quadrature to a *given* measurement noise (the ``noise_sd`` option, or the design's
        known / xMAP / replicate noise model; sites ``assay_sd`` (the measurement part, when
        sampled), ``misfit_sd``, and ``noise_sd`` (deterministic total)). Technical replicates
        describe the assay, not how far the network's steady states are from the data; without
        this term an unseen condition's interval is as narrow as the assay's (HepG2 inhibitor
        combinations: 90% intervals covered 0.82; with the default cut misfit 0.85, same RMSE).
        ``None``: the given noise is the whole sd.
        Each row counts as one measurement of its condition (bulk assays); for rows that are
        means of many cells use ``residual=True``, whose misfit does not shrink with ``n_cells``.
    misfit_cut
        (Default.) Estimate ``misfit_sd`` in a cut (modular) posterior: the network is fitted with the
        measurement noise alone, as if it were right, and ``misfit_sd`` from its residuals
        without feedback (factor ``misfit_cut``; Plummer, Stat Comput 25:37, 2015), so a larger
        total sd does not loosen the network's own fit; predictions use the total sd. The
        pointwise log-likelihood (LOO) then holds the measurement part only; cross-validation
        (:mod:`semimech.evaluate.cv`) scores held-out rows with the total sd, as predicted (model data
        flag ``observe_predictive``), and refits every fold. The cut lives in
        the gradient (``stop_gradient``), so it is exact for SVI (``fit_svi``); under NUTS the
        factor would enter the target density itself: use ``misfit_cut=False`` with ``fit_nuts``. ``False``: the
        joint model, where the wider sd also loosens the network's fit (HepG2: learning the
        whole noise cost accuracy, 0.2045 vs 0.1831).
    inhibitor_readout
        ``"input"``: a readout of an inhibited node measures its activation ``B`` (a kinase's
        phospho-site, set by its upstream kinases, which a catalytic inhibitor leaves in place);
        ``"activity"``: the scaled activity ``keep * B``; or a list of node names read as
        activity (the others as input): species whose *amount* is the readout, e.g. the lipids
        PIP2 / PIP3 in Sachs 2005, which an inhibitor of their production or a sequestering agent lowers.
    times
        One time per design context (e.g. minutes after the ligand; the design's contexts are
        then time points, not cell lines): each node's activation relaxes towards its
        regulators' logic, ``dz/dt = (B(keep z) - z) / tau``, from the pretreatment steady state
        (inhibitors on, ligands off) and is measured at its condition's time
        (:mod:`semimech.models._signalling_time`). Every other parameter is shared by all time
        points (no context pooling). Sites ``tau_z`` and deterministic ``tau`` (nodes,), and
        ``ok_fraction``. ``"contexts"``: each context's name read as its time (a fit resolves it,
        e.g. for ``Design.from_midas(table, time="contexts")``). ``None`` (default): steady state.
    tau_prior
        ``(median, log-sd)`` of the log-normal prior of each node's time constant (``times``' units).
    bounds
        ``None`` (default) or ``(low, high)``: the data are a bounded normalisation of the signal
        (CellNOpt's ``FC^h / (EC50^h + FC^h)``, small signals and decreases set to exactly 0, in
        ``[0, 1]``), observed as ``clip(loc + noise, low, high)``: a value at a bound (within
        ``BOUND_TOLERANCE`` of the range) carries the Gaussian's mass beyond it (a censored, Tobit
        likelihood, also in the cut misfit factor), so an exact 0 says "at or below 0" and a
        readout's location may sit below it. ``predict``'s ``observed_mean`` draws are clipped to
        the bounds (``ModelSpec.observed_bounds``); the ``mean`` site stays the latent location.
        Gaussian only; every training value must lie within the bounds. Each row is one
        observation (``n_cells`` 1: the clip acts on a value, not on a mean of several). The
        pointwise log-likelihood mixes masses (at the bounds) and densities (inside): compare a
        bounded fit by LOO only with other fits bounded alike.
    parametrisation
        ``"cnorode"`` (default): as above. ``"identified"``: the same logic with three
        redundancies of the default removed, for samplers (NUTS) that suffer from them:
        (1) each readout is measured relative to the untreated state of its context,
        ``loc = offset + scale * (m - m_ref)`` with ``m_ref`` the readout's node state with no
        stimulus and no inhibitor (background stimuli on), so ``offset`` is the readout's
        untreated level (prior ``Normal(centre - sign spread / 2, 1.5 spread)``) instead of a
        value that trades off against ``scale`` and the basal activities;
        (2) an input node (no incoming edge, switched on by a stimulus) has basal activity 0
        (not sampled: ``basal_z`` covers the other nodes, plate ``free_nodes``): an input's basal
        level passes through its edges' Hill functions and trades off with its children's basal
        activities and the edges' thresholds;
        (3) an edge whose inputs are all such nodes has threshold ``k = 0.5`` (not sampled:
        ``hill_k`` covers the other edges, plate ``hill_edges``): its inputs are 0 or 1 for
        on/off stimuli, where the normalised Hill function is 0 or 1 whatever ``k``.
        Steady state only (not with ``times``).
    """
    bounds = _check_bounds(bounds, likelihood, y, data.get("n_cells"))
    if parametrisation not in ("cnorode", "identified"):
        raise DesignError(f"parametrisation must be 'cnorode' or 'identified', got {parametrisation!r}.")
    identified = parametrisation == "identified"
    if identified and times is not None:
        raise DesignError("parametrisation='identified' is for steady states; with times= use 'cnorode'.")
    if isinstance(inhibitor_readout, str) and inhibitor_readout not in ("input", "activity"):
        raise DesignError(f"inhibitor_readout must be 'input', 'activity' or a list of node names, "
                          f"got {inhibitor_readout!r}.")
    tm = jnp.asarray(data["target_matrix"])
    P, T = tm.shape
    G = data["n_genes"]
    net = default_network(data) if network is None else network
    arr = network_arrays(net, n_targets=T, n_genes=G)
    st = arr["structure"]
    N, E = st.n_nodes, st.src.size
    ctx = data.get("perturbation_context")
    # jnp, not numpy: a prediction's conditions may be arguments of its compiled replay (semimech.infer.predict)
    ctx = jnp.zeros(P, jnp.int32) if ctx is None else jnp.asarray(ctx)
    C = int(data.get("n_contexts", 1) or 1)
    if times is not None:  # contexts are time points: parameters shared, not pooled
        grid, to_grid = _time.time_grid(times, C)
        time_idx = jnp.asarray(to_grid)[ctx]
        ctx, C = jnp.zeros(P, jnp.int32), 1
    genes = numpyro.plate("genes", G, dim=-1)
    edges_pl = numpyro.plate("edges", E, dim=-1)
    nodes_pl = numpyro.plate("nodes", N, dim=-1)
    targets_pl = numpyro.plate("targets", T, dim=-1)
    ctx_pl = numpyro.plate("contexts", C, dim=-2)
    kw = dict(ctx=C, ctx_scale=context_scale, plate_ctx=ctx_pl)

    # edges: logit-normal spike-and-slab by kind
    kind = arr["edge_kind"]  # 0 pkn, 1 and, 2 extra
    mus = jnp.asarray([edge_prior[0], and_prior[0], extra_prior[0]])[kind]
    ss = jnp.asarray([edge_prior[1], and_prior[1], extra_prior[1]])[kind]
    w = jax.nn.sigmoid(_logit_normal("edge", mus, ss, edges_pl, **kw))
    with ctx_pl, edges_pl:
        numpyro.deterministic("edge_weight", w)
    inputs = _input_nodes(st, arr) if identified else np.zeros(N, bool)
    k_free = ~(inputs[st.src] & np.where(st.partner >= 0, inputs[np.maximum(st.partner, 0)], True))
    with numpyro.plate("hill_edges", int(k_free.sum()), dim=-1) if identified else edges_pl:
        k = numpyro.sample("hill_k", dist.Beta(2.0, 2.0))
    if identified:
        k = jnp.full(E, 0.5).at[np.flatnonzero(k_free)].set(k)
    n_hill = 1.0 + numpyro.sample("hill_excess", dist.LogNormal(*hill_prior))
    if identified:
        free = np.flatnonzero(~inputs)
        free_pl = numpyro.plate("free_nodes", free.size, dim=-1)
        b_logit = _logit_normal("basal", basal_prior[0], basal_prior[1], free_pl, **kw)
        basal = jnp.zeros((b_logit.shape[0], N)).at[:, free].set(jax.nn.sigmoid(b_logit))
    else:
        basal = jax.nn.sigmoid(_logit_normal("basal", basal_prior[0], basal_prior[1], nodes_pl, **kw))
    with ctx_pl, nodes_pl:
        numpyro.deterministic("basal", basal)
    eff = jax.nn.sigmoid(_logit_normal("efficacy", 2.0, 1.5, targets_pl, **kw))
    with ctx_pl, targets_pl:
        numpyro.deterministic("efficacy", eff)

    # conditions -> node inputs
    withdrawn = jnp.clip(tm @ jnp.asarray(arr["wd_map"]), 0.0, 1.0)
    stim = jnp.clip(tm @ jnp.asarray(arr["stim_map"]) + arr["background"] * (1.0 - withdrawn), 0.0, 1.0)  # (P, N)
    inh_map = jnp.asarray(arr["inh_map"])  # (T, N) 0/1: each inhibitor's named node(s)
    block = eff[ctx][:, :, None] * inh_map  # (P, T, N): fraction of each node's activity removed
    pairs = arr["off_pairs"]
    if off_target and len(pairs):
        with numpyro.plate("off_targets", len(pairs), dim=-1):
            oz = numpyro.sample("off_target_z", dist.Normal(0.0, 1.0))
            off = numpyro.deterministic("off_target", jax.nn.sigmoid(off_target_prior[0] + off_target_prior[1] * oz))
        block = block + jnp.zeros((T, N)).at[pairs[:, 0], pairs[:, 1]].set(off)[None]
    log_keep = jnp.log1p(-jnp.clip(block, 0.0, 1.0 - 1e-6))  # (P, T, N)
    keep = jnp.exp(jnp.einsum("pt,ptn->pn", tm, log_keep))  # (P, N)
    if identified:  # one untreated condition per context, after the design's: the readouts' reference
        stim = jnp.concatenate([stim, jnp.broadcast_to(jnp.asarray(arr["background"]), (C, N))])
        keep = jnp.concatenate([keep, jnp.ones((C, N))])
        ctx_all = jnp.concatenate([ctx, jnp.arange(C, dtype=ctx.dtype)])
    else:
        ctx_all = ctx
    p = _logic.LogicParams(w=w[ctx_all], k=k, n=n_hill, basal=basal[ctx_all])
    if times is not None:
        with nodes_pl:
            tau_z = numpyro.sample("tau_z", dist.Normal(0.0, 1.0))
        tau = numpyro.deterministic("tau", tau_prior[0] * jnp.exp(tau_prior[1] * tau_z))
        stim0 = jnp.clip(arr["background"] * (1.0 - withdrawn), 0.0, 1.0) * jnp.ones_like(stim)
        z0, ok0 = _time.start_state(p, stim0, keep, st)
        zt, ok = _time.activation_at(p, stim, keep, z0, 1.0 / tau, grid, st)
        ok = ok & ok0
        net_helpers.guard_solves(ok, data, conditions=_condition_ok(ok, P, ctx, identified), factor="time_course_ok")
        B = zt[jnp.arange(P), time_idx]
        x = keep * B
    elif st.levels:
        x, B = _logic.compiled(st)(p, stim, keep)
    else:
        x, B, ok = _logic.compiled(st, kind="fixed_point")(p, stim, keep)
        net_helpers.guard_solves(ok, data, conditions=_condition_ok(ok, P, ctx, identified))
        B = jnp.where(ok[:, None], B, 0.0)
        x = jnp.where(ok[:, None], x, 0.0)
    m = _readout_state(inhibitor_readout, B, x, net["nodes"])
    m_ref = m[P:]  # (C, N) untreated state per context (identified), else empty
    B, m = B[:P], m[:P]
    with numpyro.plate("perturbations", P, dim=-2), nodes_pl:
        numpyro.deterministic("activity", B)

    # measurement on the log scale
    center, spread = readout_scales(arr, data, given=network is not None)
    with genes:
        off_z = numpyro.sample("offset_z", dist.Normal(0.0, 1.0))
        sc_z = numpyro.sample("scale_z", dist.Normal(0.0, 1.0))
    sign = jnp.asarray(arr["readout_sign"])
    if identified:  # the readout's untreated level
        offset = (center - 0.5 * sign * spread + 1.5 * spread * off_z)[None]
    else:
        offset = (center - sign * spread + 1.5 * spread * off_z)[None]
    scale = (sign * spread * jnp.exp(jnp.log(2.5) + 0.6 * sc_z))[None]  # sign fixed by the readout
    if C > 1:
        o_sd = numpyro.sample("offset_context_sd", dist.HalfNormal(context_scale))
        s_sd = numpyro.sample("scale_context_sd", dist.HalfNormal(0.5 * context_scale))
        with ctx_pl, genes:
            oz = numpyro.sample("offset_context_z", dist.Normal(0.0, 1.0))
            sz = numpyro.sample("scale_context_z", dist.Normal(0.0, 1.0))
        offset = offset + o_sd * spread * oz
        scale = scale * jnp.exp(s_sd * sz)
    rnode = arr["readout_node"]
    m_r = jnp.where(rnode >= 0, m[:, np.maximum(rnode, 0)], 0.0)  # (P, G)
    rpairs = arr["readout_pairs"]
    if readout_block and len(rpairs):
        with numpyro.plate("readout_blocks", len(rpairs), dim=-1):
            rz = numpyro.sample("readout_block_z", dist.Normal(0.0, 1.0))
            d = numpyro.deterministic("readout_block", jax.nn.sigmoid(off_target_prior[0] + off_target_prior[1] * rz))
        log_d = jnp.zeros((T, G)).at[rpairs[:, 0], rpairs[:, 1]].set(jnp.log1p(-jnp.clip(d, 0.0, 1.0 - 1e-6)))
        m_r = m_r * jnp.exp(tm @ log_d)
    if identified:
        m_r = m_r - jnp.where(rnode >= 0, m_ref[:, np.maximum(rnode, 0)], 0.0)[ctx]
    loc_p = offset[ctx] + scale[ctx] * m_r
    if residual:
        loc_p = net_helpers.residual(loc_p, data, genes, unit=spread, scale=0.5)
    # held-out rows scored as new observations (cross-validation) are observed with the predictive's total sd
    noise, cut = _noise(data, genes, spread, likelihood=likelihood, noise_sd=noise_sd, misfit=misfit,
                        cut=misfit_cut and not data.get("observe_predictive", False))
    if cut is not None:
        _misfit_cut(loc_p, *cut, data, y, bounds)
    with numpyro.plate("perturbations", P, dim=-2), genes:
        numpyro.deterministic("mean", to_data_scale(loc_p, likelihood))
    observe_conditions(loc_p, noise, data, genes, likelihood=likelihood, y=y, bounds=bounds)


def _condition_ok(ok, P: int, ctx, identified: bool):
    """``(P,)``: each condition's solve, and with ``identified`` its context's untreated reference solve too (the
    readouts are measured against it)."""
    return ok[:P] & ok[P + jnp.asarray(ctx)] if identified else ok[:P]


SPEC = ModelSpec(
    name="signalling_network",
    model=model,
    assumes="readouts measure nodes of a signed prior-knowledge network at steady state: continuous logic "
    "(normalised Hill, OR/AND gates), stimuli switch input nodes on, inhibitors scale their node's activity; "
    "edges shrink to absent unless the data need them",
    predicts_unseen_targets=True,
    cut_sites=("misfit_cut",),
    observed_bounds=lambda options: options.get("bounds"),
    prepare_options=prepare_network,
)
