"""Factor-design configurations of ``benchmarks/heldout.py`` (registered on import).

The task's label design flattens a stimulus x inhibitor x cell-line experiment into one target
per inhibitor *per context* (``"PI3Ki@HepG2|IGF1"``), so nothing is shared between contexts.
These configurations rebuild the design from the fold's tidy table (``fold.frame``, training
rows only) as a factor design: stimuli and inhibitors are factors, the cell line the context
(``Design.from_frame(factors=..., context_key=...)``). The additive model then has one effect
per stimulus and per inhibitor, pooled over the 5 cell lines, one interaction per pair of levels
(stimulus x inhibitor, inhibitor x inhibitor, ...) with a learned scale per pair of factors, and a
residual for conditions of three or more levels. Every held-out condition is predicted in **one**
``predict`` call (a table of conditions across contexts), for an observation
(``observed_mean`` of ``fold.n_obs`` new observations).

- ``additive/factorial``: fitted by ``sm.fit`` (its default: NUTS for this unreplicated design).
- ``additive/factorial+noise``: the same with the task's measurement-error prior
  (``fold.meta["noise"]``: per-readout sd from the duplicated t = 0 samples).
- ``additive/factorial-map``: MAP (``sm.fit_svi(guide="map")``): no posterior spread of the
  effects, only the noise: the point estimate and a lower bound on the interval width.
"""

from __future__ import annotations

import time

import numpy as np

import semimech as sm
from heldout_models import NotApplicable, Predicted, register_model

TASKS = ("hepg2_combinations", "hepg2_loclo")
FACTORS = {"stimulus": "stimuli", "inhibitor": "inhibitors"}


def _levels(value: str) -> list[str]:
    return [] if value == "none" else value.split("+")


def factor_design(fold) -> sm.Design:
    """The training rows of the fold's table as a factor design (stimulus, inhibitor; cell line context)."""
    if fold.frame is None or not {"cell_line", *FACTORS.values(), "split"} <= set(fold.frame.columns):
        raise NotApplicable("the task gives no factor table (cell_line, stimuli, inhibitors, split)")
    rows = fold.frame[fold.frame.split == "train"]
    return sm.Design.from_frame(rows, readouts=list(fold.readouts), factors=FACTORS, context_key="cell_line")


def held_out_table(fold) -> list[dict]:
    """One request per held-out condition, in the fold's order."""
    held = fold.frame.set_index(["label", "context"])
    out = []
    for lab, ctx in zip(fold.labels, fold.contexts):
        r = held.loc[(lab, ctx)]
        out.append({"stimulus": _levels(r.stimuli), "inhibitor": _levels(r.inhibitors), "context": r.cell_line})
    return out


def _config(method: str, *, noise: bool = False):
    def run(fold, *, seed, budget):
        from semimech.models import additive

        design = factor_design(fold)
        if noise:
            if "noise" not in fold.meta:
                raise NotApplicable("the task provides no measurement-error model")
            design = design.with_noise(fold.meta["noise"])
        t0 = time.perf_counter()
        if method == "default":
            nuts = sm.choose_method(additive.SPEC, design)[0] == "nuts"
            fit = sm.fit(additive.SPEC, design, rng_key=seed, num_steps=budget.num_steps,
                         num_warmup=budget.num_warmup,
                         num_samples=budget.num_samples // 2 if nuts else budget.num_samples, progress_bar=False)
        else:
            fit = sm.fit_svi(additive.SPEC, design, rng_key=seed, num_steps=budget.num_steps, guide=method,
                             num_samples=budget.num_samples, progress_bar=False)
        seconds = time.perf_counter() - t0
        table = held_out_table(fold)
        # every context in one call; a cell line never seen in training (hepg2_loclo) is answered from
        # the population of cell lines
        p = sm.predict(fit, table, rng_key=seed + 1000, num_cells=fold.n_obs, new_contexts="population")
        if len(p.perturbations) != len(table):
            raise ValueError(f"{len(p.perturbations)} predicted conditions for {len(table)} held-out ones.")
        cols = [p.genes.index(g) for g in fold.readouts]
        info = {"method": fit.method}
        if fit.method == "nuts":
            info["divergences"] = int(np.asarray(fit.sample_stats["diverging"]).sum())
        return Predicted(observed=p.draws["observed_mean"][:, :, cols], mean=p.draws["mean"][:, :, cols],
                         seconds=seconds, info=info)

    how = {"default": "sm.fit (the default for the design)", "map": "MAP"}.get(method, f"{method} SVI")
    run.__doc__ = (f"additive on a factor design (stimulus, inhibitor; cell lines pooled) with pairwise "
                   f"interactions, fitted by {how}{' + task noise model' if noise else ''}.")
    return run


for _name, _fn in {
    "additive/factorial": _config("default"),
    "additive/factorial+noise": _config("default", noise=True),
    "additive/factorial-map": _config("map"),
}.items():
    register_model(_name, tasks=TASKS)(_fn)
