"""Guide-assignment benchmark: Papalexi 2021 knockouts and batch-aware minibatching.

Usage::

    python benchmarks/guides.py                 # both parts, full size (about 15-25 min on 2 cores)
    python benchmarks/guides.py --part papalexi # IFN-pathway knockouts on the real subset
    python benchmarks/guides.py --part minibatch
    python benchmarks/guides.py --smoke         # seconds-scale check that everything runs

Writes ``benchmarks/results/guides.json`` (merged per part) and prints tables.

Part ``papalexi``: fits the guide-assignment model (SVI, minibatches of 1,024 cells) to the
20,729-cell Papalexi subset and reports, with 90% posterior intervals, the effect of IFNGR1,
IFNGR2, JAK2 and STAT1 knockout on STAT1 and the other interferon-response genes of the subset,
per-guide efficacies, the escaper fraction per target and the replicate (batch) effects;
cells/s of the SVI loop (compilation excluded) and peak resident memory (``getrusage``).

Part ``minibatch``: on a simulated screen with strong batch effects and controls spread
unevenly over batches, refits with several SVI seeds using uniform vs batch-aware minibatches
and compares the across-seed variance of the effect estimates (posterior means) and their
error against the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import semimech as sm
from semimech.data.guides import GuideDesign
from semimech.models import guide_assignment as ga

RESULTS = Path(__file__).parent / "results" / "guides.json"
KNOCKOUTS = ["IFNGR1", "IFNGR2", "JAK2", "STAT1"]
IFN_GENES = ["STAT1", "UBE2L6", "PSMB9", "STAT2", "STAT3", "JAK2", "CMTM6", "IFNGR2", "TNFRSF14", "NFKBIA", "APOBEC3G"]
OTHER_GENES = ["CYBA", "BTG1", "TMA7", "LST1", "FN1", "PSMA7", "MT-ATP8", "CDC37", "KPNB1"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def papalexi_designs(*, max_cells: int | None = None, seed: int = 0):
    """Expression and guide designs of the Papalexi subset (size factors from non-IFN genes)."""
    from semimech.datasets import read_papalexi2021

    adata = read_papalexi2021()
    if max_cells is not None and max_cells < adata.n_obs:
        keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
        adata = adata[keep].copy()
    else:
        adata = adata.copy()  # we add a size-factor column: never touch the reader's object
    other = [i for i, g in enumerate(adata.var_names) if g not in IFN_GENES]
    totals = np.asarray(adata.X[:, other].sum(1)).ravel()
    adata.obs["size_factor_non_ifn"] = totals / totals.mean()  # knockouts move IFN genes: keep them out
    design = sm.Design.from_anndata(adata, perturbation_key="target", control="non-targeting", batch_key="bio_rep",
                                    size_factor_key="size_factor_non_ifn")
    guides = GuideDesign.from_anndata(adata, guide_table="grna_targets", batch_key="bio_rep")
    return design, guides


def run_papalexi(*, smoke: bool) -> dict:
    design, guides = papalexi_designs(max_cells=3000 if smoke else None)
    steps, bsz = (30, 256) if smoke else (2000, 1024)
    t0 = time.perf_counter()
    fit = ga.fit_guides(design, guides, rng_key=0, genes=IFN_GENES + OTHER_GENES, num_steps=steps, batch_size=bsz,
                        num_samples=200, placebo=True)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    probs = ga.perturbation_probabilities(fit, guides, num_draws=100)
    post_seconds = time.perf_counter() - t1
    eff = ga.effect_table(fit, targets=KNOCKOUTS, genes=IFN_GENES)
    guide_eff = ga.efficacy_table(fit)
    esc = ga.escaper_table(fit, probs)
    reps = ga.batch_effect_table(fit, genes=IFN_GENES)
    # negative control on real data: the placebo target (non-targeting guides) shows how much "efficacy"
    # the mixture finds without any editing; targets whose efficacy is not above it are not identified
    placebo = esc.set_index("target").loc[ga.PLACEBO]
    esc["efficacy_above_placebo"] = (1 - esc["hi"]) > (1 - placebo["lo"])
    assigned = probs[probs["top_guide_target"].isin(KNOCKOUTS)]
    per_target = assigned.groupby("top_guide_target").agg(n_cells=("cell", "size"),
                                                            mean_p_perturbed=("p_perturbed", "mean"),
                                                            share_p_gt_half=("p_perturbed", lambda p: float((p > 0.5).mean())))
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 200)
    print(f"\n== Papalexi: {design.n_obs} cells, {len(fit.options['genes'])} genes, {steps} steps x {bsz} cells ==")
    print(f"SVI loop {fit.options['cells_per_second']:.0f} cells/s ({fit.options['skipped_steps']} non-finite steps "
          f"skipped); fit wall {wall:.1f} s (with compilation); "
          f"per-cell posteriors {post_seconds:.1f} s; peak RSS {peak_rss_mb():.0f} MB")
    print("\nKnockout effects (log fold change, 90% interval):")
    print(eff.pivot(index="gene", columns="target", values="mean").round(2).loc[IFN_GENES])
    print(eff[eff["gene"] == "STAT1"][["target", "gene", "mean", "lo", "hi", "fold_change"]].round(3))
    print("\nPer-guide efficacy (knockout targets):")
    print(guide_eff[guide_eff["target"].isin(KNOCKOUTS)].round(3))
    print("\nEscaper fraction per target (model: 1 - mean guide efficacy; observed: posterior share among cells;"
          " placebo = non-targeting guides as a target):")
    print(esc.round(3))
    print("\nCells whose top guide targets a knockout gene:")
    print(per_target.round(3))
    print("\nReplicate effects (log scale) on STAT1, PSMB9, UBE2L6:")
    print(reps[reps["gene"].isin(["STAT1", "PSMB9", "UBE2L6"])].round(3))
    return {"n_cells": design.n_obs, "genes": list(fit.options["genes"]), "num_steps": steps, "batch_size": bsz,
            "cells_per_second": fit.options["cells_per_second"], "fit_wall_seconds": wall,
            "skipped_steps": fit.options["skipped_steps"],
            "posterior_seconds": post_seconds, "peak_rss_mb": peak_rss_mb(), "smoke": smoke,
            "effects": eff.to_dict("records"), "efficacy": guide_eff.to_dict("records"),
            "escapers": esc.to_dict("records"), "replicate_effects": reps.to_dict("records"),
            "knockout_cells": per_target.reset_index().to_dict("records")}


def run_minibatch(*, smoke: bool) -> dict:
    seeds = range(2 if smoke else 5)
    steps = 30 if smoke else 1200
    adata, truth = ga.simulate_guide_screen(7, n_cells=1000 if smoke else 4000, n_targets=3, n_genes=12, n_batches=3,
                                            batch_sd=1.0, control_share=0.15)
    design = sm.Design.from_anndata(adata, perturbation_key="top_target", control="non-targeting", batch_key="batch",
                                    size_factor_key="size_factor")
    guides = GuideDesign.from_anndata(adata, guide_table="grna_targets", batch_key="batch")
    out = {}
    for sampler in ("uniform", "batch_aware"):
        est, secs = [], []
        for s in seeds:
            fit = ga.fit_guides(design, guides, rng_key=100 + s, num_steps=steps, batch_size=256, sampler=sampler,
                                num_samples=100)
            est.append(fit.flat("effect").mean(0))
            secs.append(fit.options["fit_seconds"])
        est = np.array(est)
        nz = truth["effect"] != 0
        out[sampler] = {"across_seed_sd_all": float(np.sqrt(est.var(0, ddof=1).mean())),
                        "across_seed_sd_nonzero": float(np.sqrt(est.var(0, ddof=1)[nz].mean())),
                        "rmse_vs_truth": float(np.sqrt(((est - truth["effect"]) ** 2).mean())),
                        "loop_seconds_per_fit": float(np.mean(secs))}
    out["variance_ratio_batch_aware_over_uniform"] = (out["batch_aware"]["across_seed_sd_all"]
                                                      / out["uniform"]["across_seed_sd_all"]) ** 2
    out.update({"seeds": len(seeds), "num_steps": steps, "batch_size": 256, "n_cells": adata.n_obs, "smoke": smoke})
    print("\n== Minibatching: across-seed spread of effect estimates ==")
    print(pd.DataFrame({k: out[k] for k in ("uniform", "batch_aware")}).T.round(4))
    print(f"variance ratio (batch-aware / uniform): {out['variance_ratio_batch_aware_over_uniform']:.3f}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("papalexi", "minibatch", "all"), default="all")
    ap.add_argument("--smoke", action="store_true", default=os.environ.get("SEMIMECH_SMOKE") == "1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.part in ("papalexi", "all"):
        results["papalexi"] = run_papalexi(smoke=args.smoke)
    if args.part in ("minibatch", "all"):
        results["minibatch"] = run_minibatch(smoke=args.smoke)
    results["peak_rss_mb"] = peak_rss_mb()
    if not args.smoke or args.out != RESULTS:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=float))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
