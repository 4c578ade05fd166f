"""Real-data benchmark of the steady-state models against the additive model and baselines.

Tasks (data in ``../shared/data``; see its README for what each can and cannot show):

- ``norman``: Norman 2019 K562 CRISPRa (shipped subset), hold out the 5 combinable doubles; the
  genes detected in >= 0.5% of training cells (as ``semimech demo``). L2, Pearson-delta, 90%
  coverage vs additive and no-change baselines (reference = training controls).
- ``hepg2``: HepG2CancerRes2011 at t = 30 min, log10(x+1), every cell line x stimulus context;
  train on no/single inhibitors, predict double/triple (RMSE; baselines incl. ``min_single``).
- ``hepg2_pkn``: the same fold, mechanistic version: each inhibitor acts directly only on the
  readouts it reaches first in the PKN (``PKN-HepG2CancerRes2011.sif``; ``direct_mask``), one
  drug's effect is shared across the 50 contexts with a hierarchical context deviation
  (``shared_targets``), and ``W`` among the readouts has the PKN's readout-to-readout paths as a
  prior (``network``; signs where every path agrees). The additive model runs as in ``hepg2``.
- ``sachs``: Sachs 2005 (natural log), leave one intervention condition out (RMSE); the
  network models get the consensus graph as a prior scale on ``W``. A held-out inhibitor of a
  measured protein is an unseen target predicted through ``W``.

Models are fitted by SVI on the training pseudobulk. HepG2 and Sachs folds and the scoring
(predictions anchored to each context's observed training control) are shared with
``benchmarks/accuracy.py``.

    python benchmarks/steady_state.py --tasks norman --steps 2000
    python benchmarks/steady_state.py --smoke

Writes ``benchmarks/results/steady_state_<task>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import semimech as sm  # noqa: E402
from accuracy import contexts, score_model  # noqa: E402
from accuracy_tasks import Fold, hepg2_combinations, sachs_loco  # noqa: E402
from semimech import checks as sm_checks  # noqa: E402
from semimech import evaluate as ev  # noqa: E402
from semimech.datasets import shared_data_dir  # noqa: E402
from semimech.models import REGISTRY  # noqa: E402

COLUMNS = ["l2", "rmse", "pearson_delta", "mse_top_de", "direction", "coverage_50", "coverage_90", "crps"]
OUT = pathlib.Path(__file__).resolve().parent / "results"


def norman_fold() -> list[Fold]:
    """Norman 2019: train on control, 19 singles and 9 doubles; predict the 5 combinable doubles."""
    from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel

    adata = norman19_devel()
    full = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    train, _ = ev.split_combinations(full, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    detected = np.asarray((train.y > 0).mean(axis=0)).ravel() >= 0.005
    genes = [g for g, keep in zip(full.genes, detected) if keep]
    d = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control", genes=genes)
    train, test = ev.split_combinations(d, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    return [Fold("norman", "5 doubles", train, test, train.pseudobulk(), (None,), ("no_change", "additive"), "l2")]


TASKS = {"norman": lambda quick: norman_fold(),
         "hepg2": lambda quick: hepg2_combinations(max_genes=None, quick=quick),
         "hepg2_pkn": lambda quick: hepg2_combinations(max_genes=None, quick=quick),
         "sachs": lambda quick: sachs_loco(max_genes=None, quick=quick)}


NETWORK_MODELS = ("linear_steady_state", "production_decay")


def model_options(task: str, name: str, fold, *, pkn_parts=("mask", "shared", "network"),
                  network_mode: str = "scale") -> dict:
    """Sachs: the consensus graph as a prior scale on W (edges off the graph shrunk 10x).

    HepG2 with the PKN (``hepg2_pkn``): the ``pkn_parts`` of :func:`hepg2_pkn_options`.
    """
    if task == "sachs" and name in NETWORK_MODELS:
        from semimech.datasets import read_sachs2005_graph
        from semimech.models._network import network_matrix

        return {"network": network_matrix(read_sachs2005_graph(), genes=fold.fit_design.genes),
                "network_mode": "scale"}
    if task == "hepg2_pkn" and name in NETWORK_MODELS:
        return hepg2_pkn_options(fold.fit_design, parts=pkn_parts, network_mode=network_mode)
    return {}


#: HepG2 inhibitors and readouts -> their PKN nodes (readouts "AKT (75)" -> "akt", ...)
HEPG2_INHIBITOR_NODES = {"PI3Ki": "pi3k", "MEK12i": "mek", "IKKi": "ikk"}
_HEPG2_READOUT_NODES = {"ERK12": "erk", "JNK12": "jnk", "MEK12": "mek"}


def readout_node(readout: str) -> str:
    base = readout.split(" (")[0]
    return _HEPG2_READOUT_NODES.get(base, base.lower())


def first_readouts(edges: pd.DataFrame, source: str, readouts: set[str]) -> dict[str, set[int]]:
    """Readout nodes reached from ``source`` by PKN paths through non-readout nodes only, with
    the sign of each such path (product of edge signs)."""
    out: dict[str, set[int]] = {}
    succ: dict[str, list] = {}
    for s_, sign, t in zip(edges.source, edges.sign, edges.target):
        succ.setdefault(s_, []).append((t, int(sign)))
    stack, seen = [(t, sg) for t, sg in succ.get(source, [])], set()
    while stack:
        node, sign = stack.pop()
        if (node, sign) in seen:
            continue
        seen.add((node, sign))
        if node in readouts:
            out.setdefault(node, set()).add(sign)
            continue
        stack.extend((t, sign * sg) for t, sg in succ.get(node, []))
    return out


def hepg2_pkn_options(design, *, parts=("mask", "shared", "network"), network_mode: str = "scale") -> dict:
    """Model options placing the HepG2 inhibitors on their PKN nodes.

    ``mask``: an inhibitor acts directly on its node if that is a readout (MEK12i on MEK12) and on
    the readouts its node reaches first; ``shared``: ``"PI3Ki@<context>"`` are variants of one
    drug ``PI3Ki``; ``network``: readout -> readout edges where the PKN links them through
    non-readout nodes (sign kept where all such paths agree, unknown otherwise).
    """
    from semimech.datasets import read_sif
    from semimech.models._network import network_matrix, shared_targets, target_gene_mask

    edges = read_sif(shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" / "PKN-HepG2CancerRes2011.sif")
    edges = edges.assign(source=edges.source.str.strip(), target=edges.target.str.strip())
    node_of = {g: readout_node(g) for g in design.genes}
    readout_of = {v: k for k, v in node_of.items()}
    nodes = set(readout_of)
    opts: dict = {}
    if "mask" in parts:
        target_genes = {}
        for t in design.targets:
            node = HEPG2_INHIBITOR_NODES[t.split("@")[0]]
            reach = set(first_readouts(edges, node, nodes)) | ({node} & nodes)
            target_genes[t] = sorted(readout_of[n] for n in reach)
        opts["direct_mask"] = target_gene_mask(design, target_genes)
    if "shared" in parts:
        opts.update(shared_targets(design, r"(.+?)@.+"))
    if "network" in parts:
        rows = [(readout_of[a], readout_of[b], signs.pop() if len(signs) == 1 else np.nan)
                for a in sorted(nodes) for b, signs in first_readouts(edges, a, nodes).items() if b != a]
        net = pd.DataFrame(rows, columns=["source", "target", "sign"])
        opts.update(network=network_matrix(net, genes=design.genes), network_mode=network_mode)
    return opts


def run_task(task, models, *, seed, steps, draws, quick, checks_draws=0, log=print, pkn=None):
    folds = TASKS[task](quick)
    rows, notes, timings = [], [], []
    for fold in folds:
        log(f"[{task}] fold {fold.name}: {fold.fit_design!r}")
        for ctx in contexts(fold):
            t = ev.score_baselines(fold.train, fold.test, baselines=fold.baselines, batch=ctx, reference=fold.train)
            t = t.assign(model="baseline:" + t["model"].astype(str))
            rows.append(t[t.perturbation != "mean"].assign(fold=fold.name, context=str(ctx)))
        for name in models:
            t0 = time.time()
            try:
                fit = sm.fit_svi(REGISTRY[name], fold.fit_design, rng_key=seed, num_steps=steps, num_samples=draws,
                                 progress_bar=False, **model_options(task, name, fold, **(pkn or {})))
                tables, note = score_model(fit, fold, seed=seed)
                if "ok_fraction" in fit.samples:
                    note = (note + " " if note else "") + f"ok_fraction={float(np.mean(fit.flat('ok_fraction'))):.3f}"
                    if checks_draws:
                        held = [lab for ctx in contexts(fold)
                                for lab in ev._align.held_out_labels(fold.test, None, batch=ctx)]
                        labels = [fold.train.control] + list(dict.fromkeys(held))
                        table, frac = sm_checks.steady_state_check(fit, labels, rng_key=seed, num_draws=checks_draws,
                                                                   num_starts=4)
                        note += (f" stable_unique_all={frac:.2f} stable={table.stable.mean():.2f} "
                                 f"unique={table.unique.mean():.2f} (held-out conditions, {checks_draws} draws)")
            except Exception as err:  # report, keep going
                tables, note = [], f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            dt = time.time() - t0
            timings.append({"fold": fold.name, "model": name, "seconds": dt})
            if note:
                notes.append({"fold": fold.name, "model": name, "note": note})
            for t in tables:
                rows.append(t.assign(fold=fold.name, model=name))
            log(f"  {fold.name} {name}: {dt:.0f}s {note}")
    per = pd.concat(rows, ignore_index=True)
    summary = per.groupby("model")[COLUMNS].mean().sort_values(folds[0].metric)
    return per, summary, notes, timings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--models", nargs="+", default=["additive", "linear_steady_state", "production_decay"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="50 steps, 30 draws, quick folds")
    p.add_argument("--quick", action="store_true", help="quick folds (Sachs: akt and mek held out) at full steps")
    p.add_argument("--checks", type=int, default=0, metavar="DRAWS",
                   help="steady-state checks (stable, unique attractor) of held-out conditions on DRAWS draws")
    p.add_argument("--pkn-parts", nargs="+", default=["mask", "shared", "network"],
                   choices=["mask", "shared", "network"], help="hepg2_pkn: which PKN pieces the network models get")
    p.add_argument("--network-mode", default="scale", choices=["mask", "scale"], help="hepg2_pkn: W prior mode")
    a = p.parse_args(argv)
    pkn = {"pkn_parts": tuple(a.pkn_parts), "network_mode": a.network_mode}
    steps, draws = (50, 30) if a.smoke else (a.steps, a.draws)
    OUT.mkdir(exist_ok=True)
    for task in a.tasks:
        t0 = time.time()
        per, summary, notes, timings = run_task(task, a.models, seed=a.seed, steps=steps, draws=draws,
                                                quick=a.smoke or a.quick, checks_draws=a.checks, pkn=pkn)
        print(f"\n{task}: mean over held-out perturbations (and contexts)")
        print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
        for n in notes:
            print("  note:", n)
        variant = ""
        if task == "hepg2_pkn" and (set(a.pkn_parts) != {"mask", "shared", "network"} or a.network_mode != "scale"):
            variant = "_" + "_".join(sorted(a.pkn_parts)) + f"_{a.network_mode}"
        name = (f"steady_state_{task}{variant}{'_smoke' if a.smoke else '_quick' if a.quick else ''}"
                f"{f'_seed{a.seed}' if a.seed else ''}.json")
        (OUT / name).write_text(json.dumps({
            "task": task, "steps": steps, "draws": draws, "seed": a.seed,
            "pkn": {"parts": list(a.pkn_parts), "network_mode": a.network_mode} if task == "hepg2_pkn" else None,
            "seconds": time.time() - t0,
            "machine": platform.platform(), "summary": summary.reset_index().to_dict(orient="records"),
            "per_perturbation": per.to_dict(orient="records"), "notes": notes, "timings": timings,
        }, indent=1, default=float))
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
