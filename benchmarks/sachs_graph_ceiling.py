"""What a blind model on the Sachs consensus graph can and cannot predict, per fold (no fitting).

For each leave-one-condition-out fold of ``sachs_loco`` (``heldout.py``'s folds and truth), the
held-out reagent changes the activity of some nodes of the ``signalling_network`` configuration's
network (``heldout_signalling.sachs_network``: an inhibitor scales its node's activity, an
activator sets its node, PMA and b2cAMP also withdraw the CD3/CD28 input). A readout can move only
if its node is downstream of a changed node (an inhibited kinase's own readout is its
activation, which the block leaves in place; ``--lipid-amounts`` reads PIP2 / PIP3 as amounts,
moved by their own block). Everything else, on any parameter values, is predicted as "no change".

Prints, per fold, the no-change error split into the readouts the graph can move and those it
cannot, and the *graph ceiling*: the RMSE of an oracle that predicts every movable readout
exactly and the others as no change, the best any blind model on this graph can score::

    cd /tmp && python /path/to/benchmarks/sachs_graph_ceiling.py [--lipid-amounts] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

import heldout_signalling as hs
import heldout_tasks as ht


def changed_nodes(net, label: str, *, lipid_amounts: bool) -> tuple[set, set]:
    """(nodes whose activity the reagent changes, nodes whose own readout it moves directly)."""
    acts, own = set(), set()
    for key in (label,):
        if key in net.inhibitors:
            acts |= set(net.inhibitors[key])
            if lipid_amounts:
                own |= {n for n in net.inhibitors[key] if n in ("pip2", "pip3")}
        if key in net.stimuli:
            acts |= set(net.stimuli[key])
            own |= set(net.stimuli[key])  # a stimulated node's activation is set: its readout moves
        acts |= set(net.withdraws.get(key, ()))
    return acts, own


def downstream(net, sources: set) -> set:
    children: dict[str, set] = {}
    for s, t in zip(net.edges.source, net.edges.target):
        children.setdefault(s, set()).add(t)
    seen, todo = set(), list(sources)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lipid-amounts", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    net = hs.sachs_network()
    task = ht.TASKS["sachs_loco"]
    folds = task.build(quick=False)
    rows, sq_nc, sq_ceil, n = [], 0.0, 0.0, 0
    for fold in folds:
        truth, ref = np.asarray(fold.truth)[0], np.asarray(fold.reference)[0]
        label = fold.labels[0]
        acts, own = changed_nodes(net, label, lipid_amounts=args.lipid_amounts)
        movable = downstream(net, acts) | own
        mask = np.array([net.readouts[r] in movable for r in fold.readouts])
        d = truth - ref
        nc = float(np.sqrt(np.mean(d**2)))
        ceil = float(np.sqrt(np.mean(np.where(mask, 0.0, d) ** 2)))
        share_fixed = float(np.sum(d[~mask] ** 2) / np.sum(d**2))
        sq_nc, sq_ceil, n = sq_nc + np.sum(d**2), sq_ceil + np.sum(np.where(mask, 0.0, d) ** 2), n + d.size
        fixed = {r: round(float(v), 2) for r, v, m in zip(fold.readouts, d, mask) if not m}
        rows.append({"fold": fold.name, "label": label, "no_change": round(nc, 3), "graph_ceiling": round(ceil, 3),
                     "share_of_no_change_sq_error_unmovable": round(share_fixed, 2),
                     "movable": [r for r, m in zip(fold.readouts, mask) if m], "unmovable_change": fixed})
        print(f"{fold.name:8s} no change {nc:.3f}  graph ceiling {ceil:.3f}  "
              f"({share_fixed:.0%} of its squared error on readouts the graph cannot move)")
        print(f"         movable: {rows[-1]['movable']}")
        print(f"         unmovable, measured change (ln): {fixed}")
    pooled = {"no_change": float(np.sqrt(sq_nc / n)), "graph_ceiling": float(np.sqrt(sq_ceil / n))}
    print(f"pooled: no change {pooled['no_change']:.3f}, graph ceiling {pooled['graph_ceiling']:.3f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"folds": rows, "pooled": pooled,
                                                       "lipid_amounts": args.lipid_amounts}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
