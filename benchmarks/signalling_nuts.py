"""Cost of a HepG2 single-context signalling_network fit by NUTS (issue 12), next to SVI in the same run.

The notebook's set-up (shipped data, no ``../shared`` needed): HepG2 cells of HepG2CancerRes2011 at
30 min, log10(x + 1), train on no and single inhibitors under 10 stimulus settings, hold out the
double and triple inhibitions. Measurement noise prior centred on 0.12 (the t = 0 duplicates).

NUTS samples the joint posterior (``misfit_cut=False``: the cut posterior that ``sm.fit`` uses
by SVI has a stopped gradient, which NUTS cannot sample). Each fit runs in this process in
order NUTS then SVI, each timed from the call (compilation and set-up included: the user's wait,
not a warm number). Printed: wall seconds, divergences, max R-hat, min bulk ESS, min bulk ESS per
second, and for both fits the held-out RMSE (pooled over held-out rows x readouts, log10 units)
and 90% / 50% coverage of intervals for an observation, beside the strongest-single rule.

    cd /tmp && nice -n 10 python /path/to/benchmarks/signalling_nuts.py --json signalling_nuts.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np


def hepg2_one_line():
    import semimech as sm
    from semimech.datasets import hepg2_cancerres2011

    tidy = hepg2_cancerres2011()
    hep = tidy[tidy.cell_line == "HepG2"]
    wide = hep.pivot_table(index=["stimuli", "inhibitors"], columns="readout", values="value").reset_index()
    wide.columns.name = None
    readouts = [c for c in wide.columns if c not in ("stimuli", "inhibitors")]
    wide[readouts] = np.log10(wide[readouts] + 1.0)
    wide["label"] = ["+".join(p for p in s.split("+") + i.split("+") if p != "none") or "none"
                     for s, i in zip(wide.stimuli, wide.inhibitors)]
    wide.index = wide.label
    design = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none")
    n_inh = np.where(wide.inhibitors == "none", 0, wide.inhibitors.str.count(r"\+") + 1)
    train = design.subset(n_inh <= 1)
    held = list(wide.label[n_inh >= 2])
    singles = wide.set_index(["stimuli", "inhibitors"])[readouts]
    rule = np.array([np.min([singles.loc[(s, i)].to_numpy() for i in inh.split("+")], axis=0)
                     for s, inh in zip(wide.loc[held, "stimuli"], wide.loc[held, "inhibitors"])])
    return train, held, wide.loc[held, readouts].to_numpy(), rule, readouts


def network(train, readouts, extra_edges="stimuli"):
    from semimech.datasets import HEPG2_NETWORK, hepg2_cancerres2011_pkn
    from semimech.models import signalling_network as sn

    pkn = hepg2_cancerres2011_pkn()
    nodes = set(pkn.source) | set(pkn.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = sn.compile_network(pkn, stimuli=HEPG2_NETWORK["stimuli"], inhibitors=HEPG2_NETWORK["inhibitors"],
                                 readouts=sn.default_readouts(readouts, nodes, HEPG2_NETWORK["readout_aliases"]),
                                 readout_signs=HEPG2_NETWORK["readout_signs"], cycles="drop", extra_edges=extra_edges)
    return sn.network_option(net, design=train)


def score(fit, held, obs, readouts, seed):
    import semimech as sm

    p = sm.predict(fit, held, rng_key=seed + 1000, num_cells=1, steady_state_draws=0)
    cols = [p.genes.index(g) for g in readouts]
    d = p.draws["observed_mean"][:, :, cols]
    out = {"rmse": float(np.sqrt(np.mean((d.mean(0) - obs) ** 2)))}
    for lvl in (0.5, 0.9):
        lo, hi = np.quantile(d, [(1 - lvl) / 2, (1 + lvl) / 2], axis=0)
        out[f"coverage_{int(lvl * 100)}"] = float(np.mean((obs >= lo) & (obs <= hi)))
    return out


def sampler_stats(fit) -> dict:
    """Where NUTS spends its gradients: step size, tree depth and leapfrog steps per draw, per chain."""
    st = fit.sample_stats
    out = {}
    for key in ("step_size", "tree_depth", "n_steps", "acceptance_rate"):
        if key in st:
            v = np.asarray(st[key], float)  # (chains, draws)
            out[f"nuts_{key}_mean"] = np.round(v.mean(1), 4).tolist()
    if "tree_depth" in st:
        td = np.asarray(st["tree_depth"])
        out["nuts_tree_depth_max"] = np.asarray(td.max(1)).tolist()
        out["nuts_fraction_at_max_depth"] = np.round((td >= td.max()).mean(1), 3).tolist()
    if "n_steps" in st:
        out["nuts_gradients_total"] = int(np.asarray(st["n_steps"]).sum())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000, help="SVI steps of the comparison fit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guides", nargs="+", default=["normal"], help="SVI guides to compare (normal, lowrank, ...)")
    ap.add_argument("--no-nuts", action="store_true", help="SVI fits only")
    ap.add_argument("--svi-seeds", type=int, default=1, help="SVI fits per guide (seeds seed, seed + 1, ...)")
    ap.add_argument("--dense-mass", default="no",
                    help="NUTS mass matrix: 'no' (diagonal), 'all' (one dense matrix), or dense blocks as "
                         "'site,site;site,site' (e.g. 'offset_z,scale_z;basal_z,edge_z')")
    ap.add_argument("--target-accept", type=float, default=0.85)
    ap.add_argument("--max-tree-depth", type=int, default=8)
    ap.add_argument("--init-svi", action="store_true",
                    help="run the SVI fit first and start NUTS at its posterior medians (init_values=svi_fit)")
    ap.add_argument("--model-options", default="{}",
                    help="extra signalling_network options for both fits, JSON (e.g. '{\"edge_prior\": [-1, 1.5]}')")
    ap.add_argument("--extra-edges", default="stimuli", choices=["stimuli", "none"],
                    help="non-PKN candidate edges: from every stimulus to every node (the default, as in heldout.py) "
                         "or none (the PKN's edges and AND pairs only)")
    ap.add_argument("--parallel", action="store_true",
                    help="chains in parallel, one per CPU device (XLA host devices = chains; set before JAX loads)")
    ap.add_argument("--numpyro-run", action="store_true",
                    help="sample with NumPyro's own MCMC.run (fit_nuts(compiled=False)) instead of semimech's "
                         "compiled blocks (the default), to compare the two in one session")
    args = ap.parse_args(argv)
    if args.parallel:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.chains}").strip()
    extra = json.loads(args.model_options)
    dense = {"no": False, "all": True}.get(args.dense_mass)
    if dense is None:
        dense = [tuple(b.split(",")) for b in args.dense_mass.split(";")]

    import semimech as sm
    from semimech.models import signalling_network as sn

    load0 = os.getloadavg()[0]
    train, held, obs, rule, readouts = hepg2_one_line()
    net = network(train, readouts, None if args.extra_edges == "none" else args.extra_edges)
    rows = []
    svi_fits = {}

    def run_svi(guide, seed):
        t0 = time.perf_counter()
        svi = sm.fit_svi(sn.SPEC, train, rng_key=seed, num_steps=args.steps, num_samples=400, guide=guide,
                         progress_bar=False, network=net, noise_sd=(0.12, 0.3), **extra)
        t_svi = time.perf_counter() - t0
        rows.append({"fit": f"SVI {guide}, {args.steps} steps, seed {seed} (cut misfit)", "seconds": t_svi,
                     **score(svi, held, obs, readouts, seed)})
        svi_fits[(guide, seed)] = svi

    if args.init_svi:
        run_svi(args.guides[0], args.seed)
    if not args.no_nuts:
        label = (f"NUTS {args.chains}x({args.warmup}+{args.samples}), dense {args.dense_mass}, "
                 f"accept {args.target_accept}, depth {args.max_tree_depth}"
                 f"{', init SVI' if args.init_svi else ''}{', no extra edges' if args.extra_edges == 'none' else ''}"
                 f"{', parallel' if args.parallel else ''}"
                 f"{', MCMC.run' if args.numpyro_run else ''}"
                 f"{', ' + args.model_options if extra else ''}")
        t0 = time.perf_counter()
        # the SVI fit is the cut posterior; its medians still start the joint model's chains near the mode
        nuts = sm.fit_nuts(sn.SPEC, train, rng_key=args.seed, num_warmup=args.warmup, num_samples=args.samples,
                           num_chains=args.chains, progress_bar=False, network=net, noise_sd=(0.12, 0.3),
                           misfit_cut=False, dense_mass=dense, target_accept_prob=args.target_accept,
                           max_tree_depth=args.max_tree_depth,
                           chain_method="parallel" if args.parallel else "sequential",
                           compiled=False if args.numpyro_run else None,
                           init_values=svi_fits[(args.guides[0], args.seed)] if args.init_svi else None, **extra)
        t_nuts = time.perf_counter() - t0
        dn = nuts.diagnostics()
        rows.append({"fit": label, "seconds": t_nuts, "load_after": os.getloadavg()[0],
                     "divergences": dn["divergences"], "max_rhat": dn["max_rhat"], "min_ess_bulk": dn["min_ess_bulk"],
                     "worst_site": dn["worst_site"], "min_ess_per_s": dn["min_ess_bulk"] / t_nuts,
                     **sampler_stats(nuts), **score(nuts, held, obs, readouts, args.seed)})
        print("NUTS sampler (per chain, sampling phase):", {k: v for k, v in rows[-1].items() if k.startswith("nuts_")})
    for guide in args.guides:
        for seed in range(args.seed, args.seed + args.svi_seeds):
            if (guide, seed) not in svi_fits:
                run_svi(guide, seed)
    rule_rmse = float(np.sqrt(np.mean((rule - obs) ** 2)))
    load1 = os.getloadavg()[0]
    print(f"HepG2 one context: {train.n_obs} training rows, {len(held)} held-out rows x {len(readouts)} readouts; "
          f"load {load0:.1f} -> {load1:.1f}")
    print(f"{'fit':72s} {'wall s':>8s} {'div':>4s} {'Rhat':>6s} {'ESS':>7s} {'ESS/s':>7s} {'RMSE':>7s} "
          f"{'cov90':>6s} {'cov50':>6s}")
    for r in rows:
        print(f"{r['fit']:72s} {r['seconds']:8.1f} {r.get('divergences', ''):>4} {r.get('max_rhat', float('nan')):6.3f} "
              f"{r.get('min_ess_bulk', float('nan')):7.1f} {r.get('min_ess_per_s', float('nan')):7.3f} "
              f"{r['rmse']:7.4f} {r['coverage_90']:6.2f} {r['coverage_50']:6.2f}")
    print(f"{'rule: strongest single inhibitor':72s} {'':8s} {'':4s} {'':6s} {'':7s} {'':7s} {rule_rmse:7.4f}")
    with open(args.json, "w") as fh:
        json.dump({"task": "hepg2_one_context_nuts_cost", "args": vars(args), "load": [load0, load1],
                   "cores": os.cpu_count(),
                   "training_rows": int(train.n_obs), "held_out_rows": len(held), "readouts": len(readouts),
                   "fits": rows, "baselines": {"strongest_single": rule_rmse}}, fh, indent=2)


if __name__ == "__main__":
    main()
