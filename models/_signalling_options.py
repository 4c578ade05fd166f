"""The ``network`` option of :mod:`semimech.models.signalling_network`: a compiled PKN aligned with a design.

A model sees arrays only, and a fit's options must be JSON values, arrays or tables (they are
saved with the fit), so the option is a JSON dict: node names, edge index lists, each design
target's role (the nodes it stimulates or inhibits) and each readout's node, plus the
per-readout centre and spread of the training data that scale the measurement priors (a fit of
continuous readouts takes them from its own rows instead, :func:`readout_scales`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from semimech.data._aggregate import readout_summaries
from semimech.errors import DesignError
from semimech.models import _logic
from semimech.models._pkn import Network, as_arrays

KINDS = {"pkn": 0, "and": 1, "extra": 2}


def network_option(net: Network, *, design=None, targets: Sequence[str] | None = None,
                   genes: Sequence[str] | None = None, y=None) -> dict:
    """The model's ``network`` option for ``net`` and a design (or its ``targets``, ``genes``, ``y``).

    Each target must be a stimulus or an inhibitor of ``net`` and each gene (readout) must be in
    ``net.readouts``; otherwise a :class:`~semimech.errors.DesignError` names it. ``y`` (rows x
    genes, the model's scale: log values for ``normal``) sets each readout's centre and spread; a fit of
    continuous readouts uses its own rows' instead (``Design.model_data``'s ``readout_center`` and
    ``readout_spread``: the same numbers for the design the option was built on, a fold's kept rows' in
    cross-validation), so the option's are used for count designs only.
    """
    if design is not None:
        targets, genes = design.targets, design.genes
        y = None if design.y is None else design.dense_y()
        if design.is_counts:
            y = np.log1p(y / np.asarray(design.size_factors)[:, None])
    if targets is None or genes is None:
        raise DesignError("network_option needs a design, or targets= and genes=.")
    idx = {n: i for i, n in enumerate(net.nodes)}
    stim, inh, wd = [], [], []
    for t in targets:
        if t not in net.stimuli and t not in net.inhibitors and t not in net.withdraws:
            raise DesignError(f"target {t!r} is neither a stimulus nor an inhibitor of the network; give it a node "
                              f"when compiling (stimuli={{{t!r}: '<node>'}} or inhibitors={{{t!r}: '<node>'}}).")
        stim.append([idx[n] for n in net.stimuli.get(t, ())])
        inh.append([idx[n] for n in net.inhibitors.get(t, ())])
        wd.append([idx[n] for n in net.withdraws.get(t, ()) if n in idx])
    rnode, rsign = [], []
    for g in genes:
        if g not in net.readouts:
            raise DesignError(f"readout {g!r} has no node in the network; map it when compiling "
                              f"(readouts={{{g!r}: '<node>'}}, or None to model it by its offset only).")
        n = net.readouts[g]
        rnode.append(-1 if n is None or n not in idx else idx[n])
        rsign.append(int(net.readout_signs.get(g, 1)))
    if y is not None:
        center, spread = readout_summaries(y)
    else:
        center, spread = np.zeros(len(genes)), np.ones(len(genes))
    a = as_arrays(net)
    kind = np.where(a["extra"], KINDS["extra"], np.where(a["is_and"], KINDS["and"], KINDS["pkn"]))
    return {"nodes": list(net.nodes), "src": a["src"].tolist(), "dst": a["dst"].tolist(),
            "partner": a["partner"].tolist(), "sign": a["sign"].astype(int).tolist(), "kind": kind.tolist(),
            "via": net.edges.via.tolist(), "acyclic": bool(net.acyclic), "targets": list(targets),
            "stimulus_nodes": stim, "inhibitor_nodes": inh, "withdraw_nodes": wd,
            "background_nodes": [idx[n] for n in net.background], "genes": list(genes), "readout_node": rnode,
            "readout_sign": rsign, "center": center.tolist(), "spread": spread.tolist()}


def default_network(data) -> dict:
    """The PKN-free default: each target stimulates its own input node; each readout is a node
    regulated by every target with either sign (all candidate edges at the PKN prior).

    The structure comes from static shapes; ``center``/``spread`` are arrays from the control
    summaries (``baseline_loc``, ``baseline_scale``), which may be traced (a cross-validation fold's
    priors), so this dict is for the model's own use, not a JSON option."""
    T = int(np.shape(data["target_matrix"])[1])
    G = int(data["n_genes"])
    nodes = [f"target{t}" for t in range(T)] + [f"readout{g}" for g in range(G)]
    src, dst, sign = [], [], []
    for t in range(T):
        for g in range(G):
            for s in (1, -1):
                src.append(t)
                dst.append(T + g)
                sign.append(s)
    # the control summaries may be traced (a cross-validation fold's priors, computed from the kept rows):
    # jnp keeps them arrays; everything else comes from static shapes
    loc = jnp.asarray(data["baseline_loc"], jnp.float32) if data.get("baseline_loc") is not None else jnp.zeros(G)
    scale = jnp.asarray(data["baseline_scale"], jnp.float32) if data.get("baseline_scale") is not None \
        else jnp.ones(G)
    scale = jnp.where(jnp.isfinite(scale) & (scale > 0), scale, 1.0)
    return {"nodes": nodes, "src": src, "dst": dst, "partner": [-1] * len(src), "sign": sign, "kind": [0] * len(src),
            "via": [f"{nodes[a]}>{nodes[b]}" for a, b in zip(src, dst)], "acyclic": True,
            "targets": [f"target{t}" for t in range(T)], "stimulus_nodes": [[t] for t in range(T)],
            "inhibitor_nodes": [[] for _ in range(T)], "genes": [f"readout{g}" for g in range(G)],
            "readout_node": list(range(T, T + G)), "readout_sign": [1] * G, "center": loc + scale, "spread": scale}


def readout_scales(arr: dict, data: dict, *, given: bool):
    """``(center, spread)`` (genes,) of the measurement priors: the data's ``readout_center`` and
    ``readout_spread`` where a network option was ``given`` and the design has them (continuous
    readouts: every kept row's mean and sd, recomputed by each cross-validation fold from its own
    rows, so a held-out condition never sets them), else the option's (counts: computed when the
    option was built; the PKN-free default: from the control summaries, fold-wise already)."""
    if given and data.get("readout_center") is not None and data.get("readout_spread") is not None:
        return jnp.asarray(data["readout_center"], jnp.float32), jnp.asarray(data["readout_spread"], jnp.float32)
    return jnp.asarray(arr["center"], jnp.float32), jnp.asarray(arr["spread"], jnp.float32)


def network_arrays(net: dict, *, n_targets: int, n_genes: int) -> dict:
    """Arrays the model uses: :class:`~semimech.models._logic.Structure`, ``stim_map`` and
    ``inh_map`` (targets x nodes; a prediction design's extra targets get zero rows), ``wd_map``
    (targets x nodes: background stimuli a target withdraws), ``background`` (nodes,), ``off_pairs``
    (inhibitor target, node) candidates for off-target inhibition, ``readout_pairs`` (inhibitor
    target, gene) candidates for a direct readout block,
    ``readout_node``, ``readout_sign``, ``edge_kind``, ``center``, ``spread``."""
    N = len(net["nodes"])
    if len(net["readout_node"]) != n_genes:
        raise DesignError(f"the network option was built for {len(net['readout_node'])} readouts but the data have "
                          f"{n_genes}; build it with network_option(net, design=<this design>).")
    if len(net["stimulus_nodes"]) > n_targets:
        raise DesignError(f"the network option lists {len(net['stimulus_nodes'])} targets but the data have "
                          f"{n_targets}; build it from the training design (its targets, in order).")
    st = _logic.structure({k: np.asarray(net[k]) for k in ("src", "dst", "partner", "sign")}, N, acyclic=net["acyclic"])
    stim_map = np.zeros((n_targets, N), np.float32)
    inh_map = np.zeros((n_targets, N), np.float32)
    for t, nodes in enumerate(net["stimulus_nodes"]):
        stim_map[t, nodes] = 1.0
    for t, nodes in enumerate(net["inhibitor_nodes"]):
        inh_map[t, nodes] = 1.0
    wd_map = np.zeros((n_targets, N), np.float32)
    for t, nodes in enumerate(net.get("withdraw_nodes", ())):
        wd_map[t, nodes] = 1.0
    background = np.zeros(N, np.float32)
    background[net.get("background_nodes", [])] = 1.0
    is_inh = inh_map.any(1)
    off_pairs = np.array([(t, n) for t in range(n_targets) if is_inh[t] for n in range(N) if inh_map[t, n] == 0],
                         np.int32).reshape(-1, 2)
    rnode = np.asarray(net["readout_node"], np.int32)
    readout_pairs = np.array([(t, g) for t in range(n_targets) if is_inh[t] for g in range(n_genes) if rnode[g] >= 0],
                             np.int32).reshape(-1, 2)
    return {"structure": st, "stim_map": stim_map, "inh_map": inh_map, "wd_map": wd_map, "background": background,
            "off_pairs": off_pairs,
            "readout_pairs": readout_pairs,
            "readout_node": np.asarray(net["readout_node"], np.int32),
            "readout_sign": np.asarray(net.get("readout_sign", [1] * n_genes), np.float32),
            "edge_kind": np.asarray(net["kind"], np.int32),
            "center": jnp.asarray(net["center"], jnp.float32), "spread": jnp.asarray(net["spread"], jnp.float32)}


def prepare_network(options: dict, design) -> dict:
    """``ModelSpec.prepare_options`` of the signalling model: its numeric options checked
    (:func:`check_numbers`), and the ``network`` option against the design it fits.

    A compiled :class:`~semimech.models._pkn.Network` becomes :func:`network_option` of the design. An
    option (a dict) must list the design's targets and readouts in the design's order: the model sees
    index arrays, so an option built for another design would put readouts on the wrong nodes and
    treatments on the wrong inputs without a word.
    """
    check_numbers(options)
    options = _context_times(options, design)
    net = options.get("network")
    if net is None:
        return options
    if isinstance(net, Network):
        return {**options, "network": network_option(net, design=design)}
    if not isinstance(net, dict) or not {"readout_node", "stimulus_nodes", "nodes"} <= set(net):
        raise DesignError(f"network= takes a compiled network (compile_network(...)) or its option "
                          f"(network_option(net, design=design)); got {type(net).__name__}.")
    for what, built, have in (("targets", net.get("targets"), design.targets), ("readouts", net.get("genes"), design.genes)):
        if built is None or list(built) == list(have):
            continue
        built, have = list(built), list(have)
        diff = next((i for i, (a, b) in enumerate(zip(built, have)) if a != b), min(len(built), len(have)))
        first = (f"position {diff}: {built[diff]!r} in the option, {have[diff]!r} in the design"
                 if diff < min(len(built), len(have)) else f"{len(built)} in the option, {len(have)} in the design")
        raise DesignError(f"the network option was built for other {what} than this design's ({first}); the model "
                          f"would put them on the wrong nodes. Build it for this design: "
                          f"network_option(net, design=design), or pass the compiled network itself (network=net).")
    return options


def _context_times(options: dict, design) -> dict:
    """``times="contexts"``: each design context's name read as its time (``Design.from_midas(table,
    time="contexts")`` names them ``"0"``, ``"30"``, ...)."""
    times = options.get("times")
    if not isinstance(times, str):
        return options
    if times != "contexts":
        raise DesignError(f"times takes one time per design context, or 'contexts' (each context's name is its time), "
                          f"got {times!r}.")
    if not design.contexts:
        raise DesignError("times='contexts' needs a design whose contexts are time points, e.g. "
                          "Design.from_midas(table, time='contexts'); this design has no contexts.")
    try:
        return {**options, "times": [float(c) for c in design.contexts]}
    except ValueError:
        bad = next(c for c in design.contexts if not _is_number(c))
        raise DesignError(f"times='contexts' reads each context's name as its time, but context {bad!r} is not a "
                          f"number; give times= one number per context (design.contexts: "
                          f"{list(design.contexts)}).") from None


def _is_number(text) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: The ``(location, scale)`` prior options of the signalling model.
PRIOR_PAIRS = ("edge_prior", "and_prior", "extra_prior", "off_target_prior", "basal_prior", "hill_prior", "tau_prior")


def check_numbers(options: dict) -> None:
    """A :class:`~semimech.errors.DesignError` naming a prior pair, ``noise_sd``, ``misfit`` or ``context_scale``
    that is not what the model reads (a negative scale was taken as its absolute value, a NaN or a
    negative ``noise_sd`` failed every initial point, a bare number for a pair was a ``TypeError``)."""
    from semimech.infer import _args

    for name in PRIOR_PAIRS:
        if name in options:
            _args.prior_pair(name, options[name], error=DesignError)
    if options.get("context_scale") is not None:
        _args.number("context_scale", options["context_scale"], error=DesignError)
    if options.get("misfit") is not None:
        _args.number("misfit", options["misfit"], error=DesignError)
    sd = options.get("noise_sd")
    if sd is not None:
        if np.ndim(sd) == 0:
            _args.number("noise_sd", sd, error=DesignError)
        elif np.ndim(sd) == 1 and np.size(sd) == 2:
            _args.number("noise_sd's sd", sd[0], error=DesignError)
            _args.number("noise_sd's log-sd", sd[1], error=DesignError)
        else:
            raise DesignError(f"noise_sd must be a known sd or a pair (sd, log-sd), got {sd!r}.")
