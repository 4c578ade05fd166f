"""``signalling_network`` configurations of ``benchmarks/heldout.py`` (registered on import).

Each configuration builds its own design from the fold (its ``frame`` or ``train``), compiles the
task's prior-knowledge network, fits, and predicts every held-out condition for an observation
(``observed_mean`` of ``fold.n_obs`` new observations). Networks:

- ``hepg2_combinations``: the HepG2CancerRes2011 PKN (:data:`semimech.datasets.HEPG2_NETWORK`:
  stimuli and inhibitors on their nodes, p-GSK3 and p-IkB falling with their node's activity),
  feedback edges dropped for the closed form, candidate edges from every stimulus to every
  readout (non-PKN prior). One fit per cell line (a single context), until the factorial
  design's contexts are on main. Measurement noise: a per-readout prior from technical
  replicates (:func:`semimech.measurement.from_replicates`), the duplicated t = 0 samples of the
  same file (the t = 30 rows have no replicates), plus the model's default structural error
  estimated in a cut posterior (``misfit=1.0, misfit_cut=True``); ``+misfit`` is the joint version
  (``misfit_cut=False``), ``+no_misfit`` holds the sd at the replicates' (the old default).
- ``sachs_loco``: the 20-edge consensus graph with both signs per edge, a ``cd3cd28`` input node
  (-> pip3, plc) stimulated in every condition but PMA and b2cAMP (which withdraw it), ICAM-2 as
  a second input (candidate edges to pip3 and plc), inhibitors on their protein, activators on
  theirs; no off-target or readout-block candidates (the held-out reagent is never seen, so
  they would be pure prior draws); a per-condition residual (``residual=True``): with ~800
  cells per condition the noise cannot absorb the network's misfit, the residual can, and an
  unseen condition's interval includes it.
- ``liverdream_loco``: the LiverDREAM PKN, its stimuli and inhibitors on their nodes.
- ``egfr_erbb_combinations``: the EGFR-ErbB PKN (Samaga et al. 2009; its ``andNN`` hyperedge
  nodes are compressed to single edges, AND pairs re-offered as candidates), the five ligands on
  their nodes, PI3Ki on PI3K, p-GSK3 falling with GSK3's activity (AKT and p90RSK inhibit it),
  feedback dropped for the closed form. One fit per time point (a single context each, like
  HepG2's per cell line), noise prior ``noise_sd=(0.05, 0.5)`` (log10 units: xMAP's ~10% CV; the
  file has no replicates) plus the default structural error in a cut posterior.
  ``signalling_network+time/*`` (and ``egfr_erbb_late``): one fit of both time points, a factor
  design whose contexts are the times, model option ``times``: every node relaxes towards its
  regulators' logic, ``dz/dt = (B(keep z) - z) / tau``, from the pretreatment steady state, so the
  30- and 180-minute rows inform one set of network parameters (only ``tau`` per node is new).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

import semimech as sm
from heldout_models import NotApplicable, Predicted, register_model
from semimech.datasets import HEPG2_NETWORK, read_sif, shared_data_dir

CNO = "cellnopt_liver_phospho"

TASKS = ("hepg2_combinations", "sachs_loco", "liverdream_loco", "egfr_erbb_combinations")


def _label(stimuli: str, inhibitors: str) -> str:
    parts = [p for p in stimuli.split("+") + inhibitors.split("+") if p != "none"]
    return "+".join(parts) if parts else "none"


def _fit(design, network, *, method: str, seed: int, budget, **options):
    from semimech.models import signalling_network as sn

    t0 = time.perf_counter()
    if method == "nuts":
        options.setdefault("misfit_cut", False)  # the cut lives in the gradient: exact for SVI only
        fit = sm.fit_nuts(sn.SPEC, design, rng_key=seed, num_warmup=budget.num_warmup,
                          num_samples=max(budget.num_samples // 2, 50), num_chains=2, progress_bar=False,
                          network=network, **options)
    else:
        fit = sm.fit_svi(sn.SPEC, design, rng_key=seed, num_steps=budget.num_steps, num_samples=budget.num_samples,
                         progress_bar=False, guide=method, network=network, **options)
    return fit, time.perf_counter() - t0


def _info(fit) -> dict:
    if fit.method != "nuts":
        info = {"guide": fit.options.get("guide")}
        if fit.restarts is not None:  # best of k runs: which one the training loss chose, and every run's score
            info["restart_chosen"] = int(fit.restarts["chosen"])
            info["restart_scores"] = [round(float(x), 2) for x in fit.restarts["scores"]]
        return info
    return {"divergences": int(np.asarray(fit.sample_stats["diverging"]).sum())}


# ------------------------------------------------------------------------------ HepG2
def hepg2_network(readouts, *, extra: str | None = "stimuli", pkn=None):
    """The compiled HepG2CancerRes2011 network for these readouts (feedback dropped)."""
    import warnings

    from semimech.models import signalling_network as sn

    edges = read_sif(shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" /
                     "PKN-HepG2CancerRes2011.sif") if pkn is None else pkn
    nodes = set(edges.source.str.strip()) | set(edges.target.str.strip())
    reads = sn.default_readouts(readouts, nodes, HEPG2_NETWORK["readout_aliases"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sn.NetworkWarning)
        return sn.compile_network(edges, stimuli=HEPG2_NETWORK["stimuli"], inhibitors=HEPG2_NETWORK["inhibitors"],
                                  readouts=reads, readout_signs=HEPG2_NETWORK["readout_signs"], cycles="drop",
                                  extra_edges=extra)


def hepg2_replicate_noise():
    """Noise prior per readout from the duplicated t = 0 samples (5 lines x 8 inhibitor sets x 2), log10(x + 1)."""
    from semimech.datasets import read_midas
    from semimech.measurement import from_replicates

    long = read_midas(shared_data_dir() / "cellnopt_liver_phospho" / "HepG2CancerRes2011" /
                      "MD-HepG2CancerRes2011.csv").query("time == 0")
    wide = long.pivot_table(index=["row", "cell_line", "inhibitors"], columns="readout", values="value").reset_index()
    wide.columns.name = None
    readouts = [c for c in wide.columns if c not in ("row", "cell_line", "inhibitors")]
    wide[readouts] = np.log10(wide[readouts] + 1.0)
    wide["label"] = np.where(wide.inhibitors == "none", "none", wide.inhibitors)
    wide.index = [f"r{i}" for i in wide.row]
    reps = sm.Design.from_frame(wide, readouts=readouts, perturbation_key="label", control="none",
                                batch_key="cell_line")
    return from_replicates(reps)


def _hepg2(fold, *, seed, budget, method: str, replicate_noise: bool = True, **options) -> Predicted:
    from semimech.models import signalling_network as sn

    frame = fold.frame
    readouts = list(fold.readouts)
    net = hepg2_network(readouts)
    noise = hepg2_replicate_noise() if replicate_noise else None
    held = frame.set_index(["label", "context"])
    want = [held.loc[(lab, ctx)] for lab, ctx in zip(fold.labels, fold.contexts)]
    obs = np.empty((budget.num_samples if method != "nuts" else 2 * max(budget.num_samples // 2, 50),
                    len(fold.labels), len(readouts)))
    mean = np.empty_like(obs)
    seconds, info = 0.0, {}
    for line in dict.fromkeys(r.cell_line for r in want):
        rows = frame[(frame.cell_line == line) & (frame.split == "train")]
        rows = rows.assign(label=[_label(s, i) for s, i in zip(rows.stimuli, rows.inhibitors)]).set_index("label",
                                                                                                          drop=False)
        design = sm.Design.from_frame(rows, readouts=readouts, perturbation_key="label", control="none")
        if noise is not None:
            design = design.with_noise(noise)
        fit, secs = _fit(design, sn.network_option(net, design=design), method=method, seed=seed, budget=budget,
                         **options)
        seconds += secs
        info[line] = _info(fit)
        idx = [i for i, r in enumerate(want) if r.cell_line == line]
        labels = [_label(want[i].stimuli, want[i].inhibitors) for i in idx]
        p = sm.predict(fit, labels, rng_key=seed + 1000, num_cells=fold.n_obs[idx], steady_state_draws=0)
        cols = [p.genes.index(g) for g in readouts]
        obs[:, idx] = p.draws["observed_mean"][:, :, cols]
        mean[:, idx] = p.draws["mean"][:, :, cols]
    return Predicted(observed=obs, mean=mean, seconds=seconds, info=info)


# ------------------------------------------------------------------------------ Sachs 2005
SACHS_STIMULI = {"pma": "pkc", "pka": "pka", "icam2": "icam2"}
SACHS_INHIBITORS = {"akt": "akt", "pkc": "pkc", "pip2": "pip2", "mek": "mek", "pip3": "pip3"}


def sachs_network():
    """Consensus graph, both signs per edge, with the CD3/CD28 and ICAM-2 inputs (see the module docstring)."""
    import warnings

    from semimech.datasets import SACHS2005_PROTEINS, read_sachs2005_graph
    from semimech.models import signalling_network as sn

    g = read_sachs2005_graph()
    edges = pd.concat([g.assign(sign=1), g.assign(sign=-1),
                       pd.DataFrame({"source": ["cd3cd28", "cd3cd28"], "target": ["pip3", "plc"], "sign": [1, 1]})])
    edges = pd.concat([edges, pd.DataFrame({"source": ["icam2", "icam2"], "target": ["pip3", "plc"], "sign": [1, 1]})])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sn.NetworkWarning)
        return sn.compile_network(edges, stimuli=SACHS_STIMULI, inhibitors=SACHS_INHIBITORS,
                                  readouts={p: p for p in SACHS2005_PROTEINS}, background=("cd3cd28",),
                                  withdraws={"pma": "cd3cd28", "pka": "cd3cd28"}, compress=False, and_gates=False)


def _sachs(fold, *, seed, budget, method: str, **options) -> Predicted:
    from semimech.models import signalling_network as sn

    net = sachs_network()
    design = fold.train
    opts = dict(off_target=False, readout_block=False, residual=True)
    opts.update(options)
    fit, secs = _fit(design, sn.network_option(net, design=design), method=method, seed=seed, budget=budget, **opts)
    p = sm.predict(fit, list(fold.labels), rng_key=seed + 1000, num_cells=fold.n_obs, steady_state_draws=0)
    cols = [p.genes.index(g) for g in fold.readouts]
    return Predicted(observed=p.draws["observed_mean"][:, :, cols], mean=p.draws["mean"][:, :, cols],
                     seconds=secs, info=_info(fit))


# ------------------------------------------------------------------------------ LiverDREAM
LIVER_STIMULI = {"igf1": "igf1", "il1a": "il1a", "tgfa": "tgfa", "tnfa": "tnfa"}
LIVER_INHIBITORS = {"ikki": "ikk", "mek12i": "mek12", "pi3ki": "pi3k", "p38i": "p38"}


def _liver(fold, *, seed, budget, method: str, **options) -> Predicted:
    import warnings

    from semimech.models import signalling_network as sn

    edges = read_sif(shared_data_dir() / fold.meta["pkn"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sn.NetworkWarning)
        net = sn.compile_network(edges, stimuli=LIVER_STIMULI, inhibitors=LIVER_INHIBITORS,
                                 readouts={r: r for r in fold.readouts}, cycles="drop")
    fit, secs = _fit(fold.train, sn.network_option(net, design=fold.train), method=method, seed=seed, budget=budget,
                     noise_sd=(0.1, 0.5), **options)
    p = sm.predict(fit, list(fold.labels), rng_key=seed + 1000, num_cells=fold.n_obs, steady_state_draws=0)
    cols = [p.genes.index(g) for g in fold.readouts]
    # bounded: the point is the expected observation, the mean of the clipped draws (the latent
    # location may sit below 0, where every observation is 0)
    mean = None if options.get("bounds") is not None else p.draws["mean"][:, :, cols]
    return Predicted(observed=p.draws["observed_mean"][:, :, cols], mean=mean, seconds=secs, info=_info(fit))


# ------------------------------------------------------------------------------ EGFR-ErbB
EGFR_STIMULI = {"EGF": "egf", "NRG1a": "nrg1a", "AR": "ar", "EPR": "epr", "TGFa": "TGFa"}
EGFR_INHIBITORS = {"PI3Ki": "PI3K"}
EGFR_READOUT_SIGNS = {"GSK3": -1}  # p-GSK3 (inactivating site): falls as GSK3 is active


def egfr_network(readouts, *, pkn: str = f"{CNO}/EGFR-ErbB_PCB2009/PKN-EGFR-ErbB_PCB2009.sif", cycles="drop"):
    """The compiled EGFR-ErbB network for these readouts (each readout is the PKN node of its name)."""
    import warnings

    from semimech.models import signalling_network as sn

    edges = read_sif(shared_data_dir() / pkn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sn.NetworkWarning)
        return sn.compile_network(edges, stimuli=EGFR_STIMULI, inhibitors=EGFR_INHIBITORS,
                                  readouts={r: r for r in readouts},
                                  readout_signs={r: s for r, s in EGFR_READOUT_SIGNS.items() if r in readouts},
                                  cycles=cycles)


def _egfr(fold, *, seed, budget, method: str, **options) -> Predicted:
    from semimech.models import signalling_network as sn

    frame = fold.frame
    readouts = list(fold.readouts)
    net = egfr_network(readouts, pkn=fold.meta["pkn"])
    held = frame.set_index(["label", "context"])
    want = [held.loc[(lab, ctx)] for lab, ctx in zip(fold.labels, fold.contexts)]
    n_draws = budget.num_samples if method != "nuts" else 2 * max(budget.num_samples // 2, 50)
    obs = np.empty((n_draws, len(fold.labels), len(readouts)))
    mean = np.empty_like(obs)
    seconds, info = 0.0, {}
    opts = dict(noise_sd=(0.05, 0.5))
    opts.update(options)
    for ctx in dict.fromkeys(fold.contexts):
        rows = frame[(frame.context == ctx) & (frame.split == "train")]
        rows = rows.assign(label=[_label(s, i) for s, i in zip(rows.stimuli, rows.inhibitors)]).set_index("label",
                                                                                                          drop=False)
        design = sm.Design.from_frame(rows, readouts=readouts, perturbation_key="label", control="none")
        fit, secs = _fit(design, sn.network_option(net, design=design), method=method, seed=seed, budget=budget,
                         **opts)
        seconds += secs
        info[ctx] = _info(fit)
        idx = [i for i, c in enumerate(fold.contexts) if c == ctx]
        labels = [_label(want[i].stimuli, want[i].inhibitors) for i in idx]
        p = sm.predict(fit, labels, rng_key=seed + 1000, num_cells=fold.n_obs[idx], steady_state_draws=0)
        cols = [p.genes.index(g) for g in readouts]
        obs[:, idx] = p.draws["observed_mean"][:, :, cols]
        mean[:, idx] = p.draws["mean"][:, :, cols]
    return Predicted(observed=obs, mean=mean, seconds=seconds, info=info)


def _egfr_time(fold, *, seed, budget, method: str, cycles: str = "drop", **options) -> Predicted:
    """One fit of every time point: a factor design whose contexts are the time points, ``times`` option."""
    from semimech.models import signalling_network as sn

    frame = fold.frame
    readouts = list(fold.readouts)
    net = egfr_network(readouts, pkn=fold.meta["pkn"], cycles=cycles)
    rows = frame[frame.split == "train"]
    rows = rows.set_axis(rows.context + "|" + rows.stimuli + "|" + rows.inhibitors)
    design = sm.Design.from_frame(rows, readouts=readouts, factors={"stimulus": "stimuli", "inhibitor": "inhibitors"},
                                  context_key="context")
    opts = dict(noise_sd=(0.05, 0.5), times=[float(c) for c in design.contexts])
    opts.update(options)
    fit, secs = _fit(design, sn.network_option(net, design=design), method=method, seed=seed, budget=budget, **opts)
    held = frame.set_index(["label", "context"])
    want = [held.loc[(lab, ctx)] for lab, ctx in zip(fold.labels, fold.contexts)]
    labels = [f"{_label(r.stimuli, r.inhibitors)}@{ctx}" for r, ctx in zip(want, fold.contexts)]
    p = sm.predict(fit, labels, rng_key=seed + 1000, num_cells=fold.n_obs, steady_state_draws=0)
    cols = [p.genes.index(g) for g in readouts]
    return Predicted(observed=p.draws["observed_mean"][:, :, cols], mean=p.draws["mean"][:, :, cols],
                     seconds=secs, info=_info(fit))


_RUNNERS = {"hepg2_combinations": _hepg2, "sachs_loco": _sachs, "liverdream_loco": _liver,
            "egfr_erbb_combinations": _egfr}


def _config(method: str, **options):
    def run(fold, *, seed, budget):
        if fold.task not in _RUNNERS:
            raise NotApplicable(f"no network configured for task {fold.task!r}")
        return _RUNNERS[fold.task](fold, seed=seed, budget=budget, method=method, **options)

    run.__doc__ = f"signalling_network on the task's PKN, fitted by {'NUTS' if method == 'nuts' else method + ' SVI'}."
    return run


for _method in ("map", "normal", "lowrank", "nuts"):
    register_model(f"signalling_network/{_method}", tasks=TASKS)(_config(_method))
    register_model(f"signalling_network+residual/{_method}", tasks=TASKS)(_config(_method, residual=True))
# every task: the model's ``parametrisation="identified"`` (readouts relative to the untreated state, input nodes'
# basal activity and their edges' thresholds fixed): fewer, better-identified parameters, meant for NUTS
for _method in ("normal", "nuts"):
    register_model(f"signalling_network+identified/{_method}", tasks=TASKS)(
        _config(_method, parametrisation="identified"))
# every task: the best of 3 SVI runs by the final training loss (fit_svi(restarts=3); run 0 is the single-run fit
# of the same seed), for seeds whose single run ends in a worse optimum (LiverDREAM seed 0 misses TNFa -> IkB)
register_model("signalling_network+restarts3/normal", tasks=TASKS)(_config("normal", restarts=3))
# HepG2 only: the noise sd learned per readout (HalfNormal), not held near the t = 0 technical replicates'
register_model("signalling_network+learned_noise/normal", tasks=("hepg2_combinations",))(
    _config("normal", replicate_noise=False))
# HepG2 only, the negative control of the default: the replicate prior is the whole sd (no structural error)
for _method in ("normal", "lowrank"):
    register_model(f"signalling_network+no_misfit/{_method}", tasks=("hepg2_combinations",))(
        _config(_method, misfit=None))
    register_model(f"signalling_network+misfit/{_method}", tasks=("hepg2_combinations",))(
        _config(_method, misfit=1.0, misfit_cut=False))
    register_model(f"signalling_network+misfit_cut/{_method}", tasks=("hepg2_combinations",))(
        _config(_method, misfit=1.0, misfit_cut=True))
# EGFR-ErbB only: one network for both time points, relaxed in time (model option ``times``)
def _time_config(method: str, **options):
    def run(fold, *, seed, budget):
        return _egfr_time(fold, seed=seed, budget=budget, method=method, **options)

    run.__doc__ = (f"signalling_network with times: one network for every time point, relaxed in time "
                   f"(dz/dt = (B - z) / tau), fitted by {method} SVI.")
    return run


for _method in ("map", "normal"):
    register_model(f"signalling_network+time/{_method}", tasks=("egfr_erbb_combinations", "egfr_erbb_late"))(
        _time_config(_method))
    # the PKN's feedback kept (receptor internalisation, p90RSK -| SOS, ...): transients become possible;
    # the start state is the dynamics fixed point, not the closed form
    register_model(f"signalling_network+time_feedback/{_method}", tasks=("egfr_erbb_combinations", "egfr_erbb_late"))(
        _time_config(_method, cycles="solve"))
# Sachs only: the lipids' readouts (PIP2, PIP3: amounts measured directly, not a phospho-site set upstream)
# measure their node's activity, so a reagent that lowers the lipid lowers its readout; kinase readouts stay
# their activation (a catalytic inhibitor leaves the kinase's phospho-site in place; U0126 even raises p-MEK)
for _method in ("normal",):
    register_model(f"signalling_network+lipid_amounts/{_method}", tasks=("sachs_loco",))(
        _config(_method, inhibitor_readout=["pip2", "pip3"]))
# LiverDREAM only: inhibitors act on their named node alone (no off-target or direct readout-block candidates):
# on this data, carrying an inhibitor's measured effect over to another stimulus loses to ignoring it
# (rules inhibitor_transfer 0.238 vs stimulus_only 0.223), and those candidates are that transfer
register_model("signalling_network+pkn_only/normal", tasks=("liverdream_loco",))(
    _config("normal", off_target=False, readout_block=False))
# ... and observed through the data's normalisation: CellNOpt's values are in [0, 1], small signals and decreases
# set to exactly 0 (64 of the 100 held-out entries), so a clipped Gaussian (censored at the bounds; predictions
# clipped, the point their mean) instead of a Gaussian that puts mass below 0 and above 1
register_model("signalling_network+pkn_only+bounded/normal", tasks=("liverdream_loco",))(
    _config("normal", off_target=False, readout_block=False, bounds=(0.0, 1.0)))
