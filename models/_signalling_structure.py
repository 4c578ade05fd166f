"""Structure answers of a fitted signalling-network model: edge posteriors, a plot, the pruned SIF."""

from __future__ import annotations

import numpy as np
import pandas as pd

from semimech.errors import PredictionError

KIND_NAMES = ("pkn", "and", "extra")


def _network(fit) -> dict:
    net = fit.options.get("network")
    if net is None or "edge_weight" not in fit.samples:
        raise PredictionError(f"the fit of {fit.spec.name!r} has no network edges; edge posteriors need a "
                              "signalling_network fit with a network option (network_option(...)).")
    return net


def _probability(name: str, value) -> float:
    from semimech.infer import _args

    if not _args.is_finite_number(value) or not 0.0 <= value <= 1.0:
        raise PredictionError(f"{name} must be a number in [0, 1] (an edge weight or a probability), got {value!r}.")
    return float(value)


def _contexts(fit, n: int) -> list[str]:
    labels = getattr(fit.design, "contexts", None)
    if labels is not None and len(labels) == n:
        return [str(c) for c in labels]
    return ["all"] if n == 1 else [f"context{i}" for i in range(n)]


def edge_posteriors(fit, *, threshold: float = 0.5) -> pd.DataFrame:
    """One row per model edge and context: the posterior probability that the edge is active.

    Columns: ``source``, ``target``, ``sign``, ``gate`` (``single``/``and``), ``partner`` (second
    source of an AND pair), ``prior`` (``pkn``/``and``/``extra``), ``via`` (the PKN path of a
    compressed edge), ``context``, ``p_active`` (posterior probability of ``weight > threshold``),
    ``weight_mean``, ``weight_q05``, ``weight_q95``.
    """
    threshold = _probability("threshold", threshold)
    net = _network(fit)
    w = fit.flat("edge_weight")  # (draws, contexts, edges)
    nodes = net["nodes"]
    base = pd.DataFrame({
        "source": [nodes[i] for i in net["src"]], "target": [nodes[i] for i in net["dst"]], "sign": net["sign"],
        "gate": ["and" if p >= 0 else "single" for p in net["partner"]],
        "partner": [nodes[p] if p >= 0 else "" for p in net["partner"]],
        "prior": [KIND_NAMES[k] for k in net["kind"]], "via": net["via"]})
    rows = []
    for c, label in enumerate(_contexts(fit, w.shape[1])):
        wc = w[:, c, :]
        rows.append(base.assign(context=label, p_active=(wc > threshold).mean(0), weight_mean=wc.mean(0),
                                weight_q05=np.quantile(wc, 0.05, axis=0), weight_q95=np.quantile(wc, 0.95, axis=0)))
    return pd.concat(rows, ignore_index=True)


def pruned_sif(fit, *, threshold: float = 0.5, context: str | None = None, min_probability: float = 0.5) -> str:
    """SIF text of the edges active with posterior probability >= ``min_probability`` (in one
    ``context``, or in any context when None). AND pairs are written as CellNOpt hyperedges."""
    min_probability = _probability("min_probability", min_probability)
    table = edge_posteriors(fit, threshold=threshold)
    if context is not None:
        if context not in set(table.context):
            raise PredictionError(f"unknown context {context!r}; contexts: {sorted(set(table.context))}.")
        table = table[table.context == context]
    keep = table[table.p_active >= min_probability].drop_duplicates(["source", "target", "sign", "partner"])
    lines = []
    for r in keep.itertuples():
        if r.gate == "and":
            hyper = f"{r.source}+{r.partner}"
            lines += [f"{r.source}\t1\t{hyper}", f"{r.partner}\t1\t{hyper}", f"{hyper}\t1\t{r.target}"]
        else:
            lines.append(f"{r.source}\t{int(r.sign)}\t{r.target}")
    return "\n".join(lines) + ("\n" if lines else "")


def plot_edge_posteriors(table, *, ax=None, max_edges: int = 60):
    """Heat map of ``p_active`` (edges x contexts) from :func:`edge_posteriors` (its table, or the fit
    itself); returns the axes.

    Edges are sorted by their largest probability over contexts; at most ``max_edges`` shown.
    """
    import matplotlib.pyplot as plt

    from semimech.infer import _args

    if hasattr(table, "samples") and hasattr(table, "options"):  # a fit: its edge table
        table = edge_posteriors(table)
    need = {"source", "target", "sign", "gate", "partner", "context", "p_active"}
    if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
        raise PredictionError(f"plot_edge_posteriors takes edge_posteriors(fit)'s table (or the fit), got "
                              f"{type(table).__name__}.")
    max_edges = _args.count("max_edges", max_edges, what="edges to show", error=PredictionError)
    if table.empty:
        raise PredictionError("the edge table is empty: nothing to plot.")
    t = table.assign(edge=lambda d: np.where(d.gate == "and", d.source + "&" + d.partner, d.source)
                     + np.where(d.sign > 0, " -> ", " -| ") + d.target)
    grid = t.pivot_table(index="edge", columns="context", values="p_active", sort=False)
    grid = grid.loc[grid.max(axis=1).sort_values(ascending=False).index[:max_edges]]
    if ax is None:
        _, ax = plt.subplots(figsize=(2.0 + 0.9 * grid.shape[1], 0.6 + 0.22 * grid.shape[0]))
    im = ax.imshow(grid.to_numpy(), aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right", fontsize=8)
    ax.figure.colorbar(im, ax=ax, label="P(edge active)")
    ax.set_title("posterior probability of each network edge")
    return ax
