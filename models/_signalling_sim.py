"""Simulate readouts from a known signalling network (tests, recovery studies, the notebook)."""

from __future__ import annotations

from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from semimech._rng import as_key
from semimech.models import _logic
from semimech.models._pkn import Network
from semimech.models._signalling_options import network_arrays, network_option


def factorial_labels(stimuli, inhibitors, *, max_stimuli: int = 1, max_inhibitors: int = 1, control: str = "none"):
    """Condition labels: every set of at most ``max_stimuli`` stimuli x at most ``max_inhibitors`` inhibitors."""
    stims = [()] + [c for k in range(1, max_stimuli + 1) for c in combinations(stimuli, k)]
    inhs = [()] + [c for k in range(1, max_inhibitors + 1) for c in combinations(inhibitors, k)]
    out = []
    for s in stims:
        for i in inhs:
            parts = list(s) + list(i)
            out.append("+".join(parts) if parts else control)
    return out


def simulate(net: Network, labels, *, active, rng_key, replicates: int = 1, weight: float = 0.9, k: float = 0.5,
             n: float = 3.0, basal: float = 0.05, efficacy: float = 0.9, offset: float = 2.0, scale: float = 1.5,
             noise_sd: float = 0.1, control: str = "none") -> pd.DataFrame:
    """A table of noisy readouts (one column per readout, ``label`` column) from ``net``.

    ``active``: boolean per row of ``net.edges`` — edges with weight ``weight``; the others 0.
    Readout ``r`` = ``offset + scale * B[node(r)] + noise`` (its readout sign applied to ``scale``).
    """
    targets = list(net.stimuli) + list(net.inhibitors)
    genes = list(net.readouts)
    opt = network_option(net, targets=targets, genes=genes)
    arr = network_arrays(opt, n_targets=len(targets), n_genes=len(genes))
    st = arr["structure"]
    tm = np.zeros((len(labels), len(targets)))
    for p, lab in enumerate(labels):
        for t in ([] if lab == control else lab.split("+")):
            tm[p, targets.index(t)] = 1.0
    w = np.where(np.asarray(active, bool), weight, 0.0)
    params = _logic.LogicParams(w=jnp.asarray(w), k=jnp.full(w.shape, k), n=jnp.asarray(n),
                                basal=jnp.full((st.n_nodes,), basal))
    stim = np.clip(tm @ arr["stim_map"] + arr["background"] * (1.0 - np.clip(tm @ arr["wd_map"], 0.0, 1.0)), 0.0, 1.0)
    keep = np.exp(tm @ (np.log1p(-efficacy) * arr["inh_map"]))
    if st.levels:
        _, B = _logic.closed_form(params, jnp.asarray(stim), jnp.asarray(keep), st)
    else:
        _, B, _ = _logic.fixed_point(params, jnp.asarray(stim), jnp.asarray(keep), st)
    B = np.asarray(B)
    rnode = arr["readout_node"]
    m = np.where(rnode >= 0, B[:, np.maximum(rnode, 0)], 0.0)
    loc = offset + scale * arr["readout_sign"] * m
    rows = np.repeat(np.arange(len(labels)), replicates)
    y = loc[rows] + noise_sd * np.asarray(jax.random.normal(as_key(rng_key), (rows.size, len(genes))))
    frame = pd.DataFrame(y, columns=genes)
    frame.insert(0, "label", [labels[i] for i in rows])
    frame.index = [f"s{i}" for i in range(len(frame))]
    return frame
