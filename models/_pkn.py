"""Prior-knowledge networks (PKN, SIF) for :mod:`semimech.models.signalling_network`: pure Python.

:func:`compile_network` turns a signed SIF edge table plus the experiment's vocabulary (which
treatment stimulates which node, which inhibitor blocks which node, which readout measures which
node) into a :class:`Network`: the nodes the data can inform, in topological order when acyclic,
the model's edges (PKN edges, optional non-PKN candidates, AND pairs) and, for a compressed
edge, the PKN path it stands for. The CellNOpt preprocessing (Saez-Rodriguez et al., Mol Syst
Biol 5:331, 2009; Terfve et al., BMC Syst Biol 6:133, 2012), as we implement it:

- **Check** the vocabulary against the nodes: a stimulus, inhibitor or readout naming a node the
  SIF lacks is a :class:`~semimech.errors.DesignError` naming it.
- **Prune**: nodes neither reachable from a stimulus nor inhibited nor measured carry no
  information (their activity is a constant the basal terms absorb), and nodes that reach no
  readout are never observed; both are dropped with one warning naming them.
- **Compress** (``compress=True``): a latent node (not stimulated, inhibited or measured) with a
  single input or a single output is replaced by direct edges (sign = product), unless that
  would create a self-loop. Chains of Hill transfers become one transfer: fewer, better
  identified parameters; the table keeps the PKN path (``via``).
- **AND pairs** (``and_gates=True``): for a node with 2..``max_and_inputs`` activating inputs,
  each pair is a candidate AND hyperedge (both inputs needed), combined by OR with the single
  edges, as CellNOpt expands gates.
- **Cycles**: the closed-form steady state needs a DAG. ``cycles="solve"`` keeps feedback (the
  model then solves ``x = s * B(x)`` with :mod:`semimech.dynamics`); ``"drop"`` removes the
  feedback edges found by a depth-first search from the stimuli, with a warning naming them;
  ``"error"`` refuses, naming the nodes of a cycle.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from semimech.errors import DesignError

CYCLES = ("error", "drop", "solve")


class NetworkWarning(UserWarning):
    """A PKN node or edge was dropped (unobservable, uncontrollable, feedback)."""


@dataclasses.dataclass(frozen=True)
class Network:
    """A compiled signed network: what the signalling model needs, by node index.

    Attributes
    ----------
    nodes
        Node names; topological order when ``acyclic``.
    edges
        One row per model edge: ``source``, ``target`` (names), ``sign`` (+1/-1), ``prior``
        (``"pkn"`` or ``"extra"``), ``gate`` (``"single"`` or ``"and"``), ``partner`` (the
        second source of an AND pair, else ``""``), ``via`` (the PKN path of a compressed edge,
        ``"a>b>c"``).
    stimuli, inhibitors
        Treatment name -> node names it acts on.
    background
        Nodes stimulated in every condition (the control included) unless a treatment withdraws them.
    withdraws
        Treatment name -> background nodes it removes (a condition without the common stimulus).
    readouts
        Readout name -> node name (``None``: a readout with no node, modelled by its offset).
    readout_signs
        Readout name -> +1, or -1 for a readout that falls as its node is active (every readout named).
    acyclic
        Whether ``edges`` form a DAG (the closed form applies).
    dropped
        Dropped node -> reason; dropped feedback edges as ``"a>b"`` -> ``"feedback"``.
    """

    nodes: tuple[str, ...]
    edges: pd.DataFrame
    stimuli: Mapping[str, tuple[str, ...]]
    inhibitors: Mapping[str, tuple[str, ...]]
    background: tuple[str, ...]
    withdraws: Mapping[str, tuple[str, ...]]
    readouts: Mapping[str, str | None]
    readout_signs: Mapping[str, int]
    acyclic: bool
    dropped: Mapping[str, str]

    def node_index(self, name: str) -> int:
        return self.nodes.index(name)

    def __repr__(self) -> str:
        kinds = self.edges["gate"].eq("and").map({True: "AND", False: "single"}).where(self.edges["prior"] == "pkn",
                                                                                        "extra")
        counts = ", ".join(f"{n} {k}" for k, n in kinds.value_counts().items())
        return (f"Network({len(self.nodes)} nodes, {len(self.edges)} edges ({counts}), "
                f"{'acyclic' if self.acyclic else 'with feedback'}; stimuli {sorted(self.stimuli)}, "
                f"inhibitors {sorted(self.inhibitors)}, {len(self.readouts)} readouts, {len(self.dropped)} dropped: "
                ".edges, .dropped, .to_sif())")

    def to_sif(self, edges: pd.DataFrame | None = None) -> str:
        """SIF text (``source<TAB>sign<TAB>target``) of ``edges`` (default: all single edges).

        AND pairs are written CellNOpt-style as a hyperedge node ``a+b``: ``a 1 a+b``,
        ``b 1 a+b``, ``a+b 1 target``.
        """
        e = self.edges if edges is None else edges
        lines = []
        for r in e.itertuples():
            if r.gate == "and":
                hyper = f"{r.source}+{r.partner}"
                lines += [f"{r.source}\t1\t{hyper}", f"{r.partner}\t1\t{hyper}", f"{hyper}\t1\t{r.target}"]
            else:
                lines.append(f"{r.source}\t{int(r.sign)}\t{r.target}")
        return "\n".join(lines) + ("\n" if lines else "")


def _as_list(v) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def _closest(name: str, known) -> str:
    """`` (did you mean 'egf'?)`` for a node name written another way (case first), else ``""``."""
    import difflib

    by_case = sorted(k for k in known if k.lower() == str(name).lower())
    close = by_case or difflib.get_close_matches(str(name), sorted(known), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _as_mapping(value, what: str) -> dict:
    """``value`` as a name -> node(s) dict: a mapping as given, or a list of names each its own node."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple, set, frozenset, pd.Index, np.ndarray, pd.Series)) and not isinstance(value, str):
        names = [str(v) for v in value]
        if len(set(names)) != len(names):
            raise DesignError(f"{what} lists a name twice: {sorted({n for n in names if names.count(n) > 1})}.")
        return {n: n for n in names}
    raise DesignError(f"{what} must map each name to its PKN node ({{'name': 'node'}}) or list names that are "
                      f"themselves PKN nodes; got {type(value).__name__}.")


def _clean_edges(edges: pd.DataFrame) -> pd.DataFrame:
    missing = {"source", "sign", "target"} - set(edges.columns)
    if missing:
        raise DesignError("the PKN table needs columns source, sign, target (read_sif's output); "
                          f"missing {sorted(missing)}.")
    table = edges[["source", "sign", "target"]]
    empty = table.isna() | table.astype(str).apply(lambda c: c.str.strip() == "")
    if empty.any(axis=None):
        i = int(np.flatnonzero(empty.any(axis=1).to_numpy())[0])
        col = empty.columns[empty.iloc[i].to_numpy()][0]
        raise DesignError(f"PKN row {i} ({' '.join(str(v) for v in table.iloc[i])}) has no {col}; every edge needs a source, a sign "
                          "and a target. Drop or complete the row.")
    sign = pd.to_numeric(table["sign"].astype(str).str.strip(), errors="coerce")
    e = pd.DataFrame({"source": table["source"].astype(str).str.strip(), "sign": sign,
                      "target": table["target"].astype(str).str.strip()})
    bad = ~e["sign"].isin([1, -1])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        r = e.iloc[i]
        raise DesignError(f"PKN edge {r.source} -> {r.target} has sign '{table['sign'].iloc[i]}'; signs must be 1 "
                          "(activation) or -1 (inhibition).")
    e["sign"] = e["sign"].astype(int)
    return e.drop_duplicates().reset_index(drop=True)


def _reach(start, succ) -> set:
    seen, stack = set(start), list(start)
    while stack:
        for t in succ.get(stack.pop(), ()):
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return seen


def _adjacency(e: pd.DataFrame, *, reverse: bool = False) -> dict:
    out: dict = {}
    a, b = ("target", "source") if reverse else ("source", "target")
    for s, t in zip(e[a], e[b]):
        out.setdefault(s, []).append(t)
    return out


def topological_order(nodes: Sequence[str], edges: pd.DataFrame) -> list[str] | None:
    """Kahn's order of ``nodes`` under ``edges`` (ties in the given order); None if cyclic."""
    indeg = {n: 0 for n in nodes}
    for t in edges["target"]:
        indeg[t] += 1
    succ = _adjacency(edges)
    ready = [n for n in nodes if indeg[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for t in succ.get(n, ()):
            indeg[t] -= 1
            if indeg[t] == 0:
                ready.append(t)
    return order if len(order) == len(nodes) else None


def find_cycle(nodes: Sequence[str], edges: pd.DataFrame) -> list[str]:
    """One directed cycle as a node list (empty if acyclic)."""
    succ = _adjacency(edges)
    colour = {n: 0 for n in nodes}
    for root in nodes:
        if colour[root]:
            continue
        stack, path = [(root, iter(succ.get(root, ())))], [root]
        colour[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(succ.get(nxt, ()))))
                path.append(nxt)
    return []


def _distances(start, succ) -> dict:
    """Breadth-first distance from ``start`` (0 for its members)."""
    dist = {n: 0 for n in start}
    frontier = list(start)
    while frontier:
        nxt = []
        for n in frontier:
            for t in succ.get(n, ()):
                if t not in dist:
                    dist[t] = dist[n] + 1
                    nxt.append(t)
        frontier = nxt
    return dist


def _feedback_edges(nodes, edges: pd.DataFrame, roots) -> set:
    """Edges to drop until acyclic: on each cycle, the edge pointing furthest back towards the
    stimuli (smallest distance of its target from them; ties: inhibiting edges first, then the
    source furthest away), so that feed-forward signalling paths are kept."""
    dist = _distances(roots, _adjacency(edges))
    far = len(nodes) + 1
    back = set()
    e = edges
    while True:
        cyc = find_cycle(nodes, e)
        if not cyc:
            return back
        pairs = list(zip(cyc[:-1], cyc[1:]))

        def score(st):
            s, t = st
            neg = bool((e[(e.source == s) & (e.target == t)].sign < 0).any())
            return (dist.get(t, far), not neg, -dist.get(s, far))

        s, t = min(pairs, key=score)
        back.add((s, t))
        e = e[~((e.source == s) & (e.target == t))]


def _compress(e: pd.DataFrame, protected: set) -> pd.DataFrame:
    """Remove latent nodes with a single input or output (see the module docstring)."""
    e = e.copy()
    changed = True
    while changed:
        changed = False
        nodes = sorted(set(e.source) | set(e.target))
        for n in nodes:
            if n in protected:
                continue
            ins, outs = e[e.target == n], e[e.source == n]
            if not (len(ins) == 1 or len(outs) == 1) or len(ins) == 0 or len(outs) == 0:
                continue
            new = [(i.source, i.sign * o.sign, o.target, f"{i.via}>{o.via.split('>', 1)[1]}")
                   for i in ins.itertuples() for o in outs.itertuples()]
            if any(s == t for s, _, t, _ in new):
                continue
            rest = e[(e.source != n) & (e.target != n)]
            add = pd.DataFrame(new, columns=["source", "sign", "target", "via"])
            e = pd.concat([rest, add], ignore_index=True).drop_duplicates(["source", "sign", "target"])
            changed = True
            break
    return e.reset_index(drop=True)


def compile_network(edges: pd.DataFrame, *, stimuli: Mapping[str, str | Sequence[str]] | Sequence[str],
                    inhibitors: Mapping[str, str | Sequence[str]] | Sequence[str],
                    readouts: Mapping[str, str | None] | Sequence[str],
                    readout_signs: Mapping[str, int] | None = None, background: Sequence[str] = (),
                    withdraws: Mapping[str, str | Sequence[str]] | None = None, extra_edges: pd.DataFrame | str | None = None,
                    compress: bool = True, and_gates: bool = True,
                    max_and_inputs: int = 4, cycles: str = "error") -> Network:
    """Check, prune and compress a PKN for the signalling model (see the module docstring).

    Parameters
    ----------
    edges
        Signed edges: columns ``source``, ``sign``, ``target`` (:func:`semimech.datasets.read_sif`).
    stimuli, inhibitors
        Treatment name -> the node (or nodes) it stimulates / whose activity it scales; or a list
        of treatment names that are themselves PKN nodes.
    readouts
        Readout name -> its node (``None``: no node; the readout is modelled by its offset only);
        or a list of readout names that are themselves PKN nodes (ToyMMB's ``Akt``, ``Erk``, ...).
    readout_signs
        Readout name -> -1 for a readout that falls as its node is active (default +1 each).
    background, withdraws
        Nodes stimulated in every condition (e.g. CD3/CD28 in Sachs 2005), and treatment name ->
        background nodes that condition lacks (PMA and b2cAMP were given without CD3/CD28).
    extra_edges
        Candidate edges outside the PKN (a much smaller prior in the model): a table like
        ``edges`` (sign required); ``"stimuli"``: every stimulus node -> readout node, both signs
        (a stimulus acting on a readout through a route the PKN lacks); or ``"forward"``: every
        ordered pair of kept nodes consistent with the PKN's topological order, both signs
        (keeps a DAG a DAG).
    compress
        Merge latent single-input / single-output nodes into direct edges.
    and_gates
        Add AND pairs of activating inputs for nodes with at most ``max_and_inputs`` of them.
    cycles
        ``"error"``, ``"drop"`` or ``"solve"`` (see the module docstring).
    """
    if cycles not in CYCLES:
        raise DesignError(f"cycles must be one of {CYCLES}, got {cycles!r}.")
    e = _clean_edges(edges)
    known = set(e.source) | set(e.target)
    stim = {str(k): _as_list(v) for k, v in _as_mapping(stimuli, "stimuli").items()}
    inh = {str(k): _as_list(v) for k, v in _as_mapping(inhibitors, "inhibitors").items()}
    wd = {str(k): _as_list(v) for k, v in _as_mapping(withdraws or {}, "withdraws").items()}
    readouts = _as_mapping(readouts, "readouts")
    bg = _as_list(background)
    for name, nodes in wd.items():
        for n in nodes:
            if n not in bg:
                raise DesignError(f"treatment {name!r} withdraws {n!r}, which is not a background node ({list(bg)}).")
    for n in bg:
        if n not in known:
            raise DesignError(f"background node {n!r} is not a node of the PKN{_closest(n, known)}; add its edges or "
                              "remove it.")
    for kind, table in (("stimulus", stim), ("inhibitor", inh)):
        for name, nodes in table.items():
            for n in nodes:
                if n not in known:
                    raise DesignError(f"{kind} {name!r} targets node {n!r}, which is not a node of the PKN"
                                      f"{_closest(n, known)}. "
                                      f"Map it to one of the SIF's nodes ({kind}s={{{name!r}: ...}}) or add the node.")
    for r, n in readouts.items():
        if n is not None and n not in known:
            raise DesignError(f"readout {r!r} maps to node {n!r}, which is not a node of the PKN{_closest(n, known)}. "
                              f"Map it to a PKN node (readouts={{{r!r}: ...}}), or to None to model it by its offset "
                              "only.")
    signs = {r: 1 for r in readouts}
    for r, sg in (readout_signs or {}).items():
        if r not in readouts or sg not in (1, -1):
            raise DesignError(f"readout_signs[{r!r}] = {sg!r}: give +1 or -1 for a readout named in readouts.")
        signs[r] = int(sg)
    stim_nodes = {n for v in stim.values() for n in v} | set(bg)
    inh_nodes = {n for v in inh.values() for n in v}
    read_nodes = {n for n in readouts.values() if n is not None}
    dropped: dict[str, str] = {}
    controllable = _reach(stim_nodes, _adjacency(e))
    keep = controllable | inh_nodes | read_nodes
    for n in sorted(known - keep):
        dropped[n] = "neither a readout nor reachable from a stimulus (nor inhibited)"
    e = e[e.source.isin(keep) & e.target.isin(keep)]
    observable = _reach(read_nodes, _adjacency(e, reverse=True))
    for n in sorted(keep - observable):
        dropped[n] = "reaches no readout"
    keep &= observable
    e = e[e.source.isin(keep) & e.target.isin(keep)].assign(via=lambda d: d.source + ">" + d.target)
    if dropped:
        warnings.warn("PKN nodes dropped: " + "; ".join(f"{n} ({why})" for n, why in dropped.items()),
                      NetworkWarning, stacklevel=2)
    if compress:
        e = _compress(e, stim_nodes | inh_nodes | read_nodes)
    nodes = sorted(set(e.source) | set(e.target) | (stim_nodes & keep) | (inh_nodes & keep) | read_nodes)
    order = topological_order(nodes, e)
    if order is None:
        if cycles == "error":
            cyc = find_cycle(nodes, e)
            raise DesignError(f"the PKN has a feedback cycle {' -> '.join(cyc)} (node {cyc[0]!r}), so the closed-form "
                              "steady state does not apply. Use cycles='solve' (fixed point by the dynamics "
                              "solvers) or cycles='drop' (remove feedback edges).")
        if cycles == "drop":
            back = _feedback_edges(nodes, e, sorted(stim_nodes & set(nodes)))
            e = e[[(s, t) not in back for s, t in zip(e.source, e.target)]]
            for s, t in sorted(back):
                dropped[f"{s}>{t}"] = "feedback"
            warnings.warn("feedback edges dropped for the closed form: "
                          + ", ".join(f"{s}->{t}" for s, t in sorted(back)), NetworkWarning, stacklevel=2)
            order = topological_order(nodes, e)
    acyclic = order is not None
    nodes = order if acyclic else nodes
    e = e.assign(prior="pkn", gate="single", partner="")
    if extra_edges is not None:
        e = pd.concat([e, _extra(extra_edges, e, nodes, acyclic, sorted(stim_nodes & set(nodes)),
                                 sorted(read_nodes))], ignore_index=True)
    if and_gates:
        e = pd.concat([e, _and_pairs(e, max_and_inputs)], ignore_index=True)
    rank = {n: i for i, n in enumerate(nodes)}
    e = e.assign(_t=e.target.map(rank), _s=e.source.map(rank)).sort_values(["_t", "gate", "_s"], kind="stable")
    e = e.drop(columns=["_t", "_s"]).reset_index(drop=True)
    e = e[["source", "target", "sign", "prior", "gate", "partner", "via"]]
    return Network(nodes=tuple(nodes), edges=e, stimuli={k: tuple(n for n in v if n in rank) for k, v in stim.items()},
                   inhibitors={k: tuple(n for n in v if n in rank) for k, v in inh.items()},
                   background=tuple(n for n in bg if n in rank), withdraws={k: tuple(v) for k, v in wd.items()},
                   readouts=dict(readouts), readout_signs=signs, acyclic=acyclic, dropped=dropped)


def _extra(extra, e: pd.DataFrame, nodes, acyclic: bool, stim_nodes=(), read_nodes=()) -> pd.DataFrame:
    have = set(zip(e.source, e.target, e.sign))
    if isinstance(extra, str):
        if extra not in ("forward", "stimuli"):
            raise DesignError(f"extra_edges must be a table of edges, 'forward' or 'stimuli', got {extra!r}.")
        if extra == "stimuli":
            pos = {n: i for i, n in enumerate(nodes)}
            rows = [(a, b, s) for a in stim_nodes for b in read_nodes for s in (1, -1)
                    if a != b and (not acyclic or pos[a] < pos[b])]
        else:
            if not acyclic:
                raise DesignError("extra_edges='forward' needs an acyclic network (a topological order); pass a table.")
            rows = [(a, b, s) for i, a in enumerate(nodes) for b in nodes[i + 1:] for s in (1, -1)]
    else:
        x = _clean_edges(extra)
        unknown = sorted((set(x.source) | set(x.target)) - set(nodes))
        if unknown:
            raise DesignError(f"extra edges name node {unknown[0]!r}, which is not a kept node of the network "
                              f"(kept: {list(nodes)}).")
        rows = list(zip(x.source, x.target, x.sign))
    rows = [(a, b, int(s)) for a, b, s in rows if (a, b, s) not in have and a != b]
    out = pd.DataFrame(rows, columns=["source", "target", "sign"])
    out = out.assign(via=out.source + ">" + out.target, prior="extra", gate="single", partner="")
    if acyclic and topological_order(nodes, pd.concat([e, out])) is None:
        raise DesignError("extra edges create a cycle; the closed form needs a DAG (use cycles='solve').")
    return out


def _and_pairs(e: pd.DataFrame, max_inputs: int) -> pd.DataFrame:
    rows = []
    act = e[(e.sign > 0) & (e.gate == "single") & (e.prior == "pkn")]
    for target, grp in act.groupby("target", sort=False):
        srcs = list(dict.fromkeys(grp.source))
        if 2 <= len(srcs) <= max_inputs:
            rows += [(a, target, 1, "pkn", "and", b, f"{a}&{b}>{target}") for a, b in combinations(srcs, 2)]
    return pd.DataFrame(rows, columns=["source", "target", "sign", "prior", "gate", "partner", "via"])


def default_readouts(readouts: Sequence[str], nodes: Sequence[str], aliases: Mapping[str, str] | None = None) -> dict:
    """Map readout names to PKN nodes: ``aliases`` first, then a case-insensitive match of the name
    without a trailing ``" (...)"`` (``"AKT (75)"`` -> ``akt``). A readout with no match is a
    :class:`~semimech.errors.DesignError` naming it (map it in ``aliases``, to ``None`` for no node).
    """
    aliases = dict(aliases or {})
    lower = {n.lower(): n for n in nodes}
    out = {}
    for r in readouts:
        if r in aliases:
            out[r] = aliases[r]
            continue
        base = r.split(" (")[0].strip()
        if base in aliases:
            out[r] = aliases[base]
        elif base.lower() in lower:
            out[r] = lower[base.lower()]
        else:
            raise DesignError(f"readout {r!r} has no node in the PKN (no node named {base.lower()!r}). Map it: "
                              f"readouts={{{r!r}: '<node>'}}, or {{{r!r}: None}} to model it by its offset only.")
    return out


def as_arrays(net: Network) -> dict:
    """Index arrays of a network: ``src``, ``dst``, ``partner`` (-1 if none), ``sign``, ``extra``, ``is_and``."""
    idx = {n: i for i, n in enumerate(net.nodes)}
    e = net.edges
    return {"src": np.array([idx[s] for s in e.source], np.int32),
            "dst": np.array([idx[t] for t in e.target], np.int32),
            "partner": np.array([idx.get(p, -1) for p in e.partner], np.int32),
            "sign": e.sign.to_numpy(np.float32), "extra": (e.prior == "extra").to_numpy(),
            "is_and": (e.gate == "and").to_numpy()}
