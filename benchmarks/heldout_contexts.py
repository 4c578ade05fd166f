"""Cell-line configurations of ``benchmarks/heldout.py`` (registered on import): one fit across contexts.

``signalling_network+contexts/{normal,lowrank}``: the HepG2CancerRes2011 network fitted once to
the training rows of every cell line as a factor design (stimulus, inhibitor; the cell line the
context), so that edges, basal activities, efficacies and the readout measurement are shared
with partial pooling across lines (context sds learned). Measurement noise: the task's prior from
technical replicates plus the model's default structural error (as ``signalling_network/normal``
on ``hepg2_combinations``). Every held-out condition is predicted in one call; a cell line never
seen in training (``hepg2_loclo``) is answered from the population of lines
(``new_contexts="population"``: its context deviations drawn from the fitted context sds).
``signalling_network+contexts+identified/normal``: the same with the model option
``parametrisation="identified"`` (each readout relative to its context's untreated state).
"""

from __future__ import annotations

import time

import semimech as sm
from heldout_factorial import factor_design, held_out_table
from heldout_models import NotApplicable, Predicted, register_model

TASKS = ("hepg2_loclo", "hepg2_combinations")


def _config(guide: str, **options):
    def run(fold, *, seed, budget):
        from heldout_signalling import hepg2_network
        from semimech.models import signalling_network as sn

        design = factor_design(fold)
        if "noise" not in fold.meta:
            raise NotApplicable("the task provides no measurement-error model")
        design = design.with_noise(fold.meta["noise"])
        net = hepg2_network(list(fold.readouts))
        t0 = time.perf_counter()
        fit = sm.fit_svi(sn.SPEC, design, rng_key=seed, num_steps=budget.num_steps, num_samples=budget.num_samples,
                         guide=guide, progress_bar=False, network=sn.network_option(net, design=design), **options)
        seconds = time.perf_counter() - t0
        p = sm.predict(fit, held_out_table(fold), rng_key=seed + 1000, num_cells=fold.n_obs,
                       new_contexts="population", steady_state_draws=0)
        cols = [p.genes.index(g) for g in fold.readouts]
        return Predicted(observed=p.draws["observed_mean"][:, :, cols], mean=p.draws["mean"][:, :, cols],
                         seconds=seconds, info={"guide": guide, "contexts": len(design.contexts or ())})

    run.__doc__ = (f"signalling_network on the HepG2 PKN, one {guide} SVI fit across cell lines (contexts pooled), "
                   "unseen lines from the population.")
    return run


for _guide in ("normal", "lowrank"):
    register_model(f"signalling_network+contexts/{_guide}", tasks=TASKS)(_config(_guide))
# the model's ``parametrisation="identified"`` (readouts relative to each context's untreated state, input nodes'
# basal activity and their edges' thresholds fixed), as ``signalling_network+identified/*`` on the other tasks
register_model("signalling_network+contexts+identified/normal", tasks=TASKS)(
    _config("normal", parametrisation="identified"))
