"""A notebook's what-if questions: ``predict`` of one condition after another, the replay's arrays as arguments of
one compiled program against the conditions baked into a program per call (the path before).

    cd /tmp && OPENBLAS_NUM_THREADS=1 python <repo>/benchmarks/predict_whatif.py [--genes 30] [--json PATH]
        [--modes lss:arguments lss:constants lss:eager-check signalling:arguments signalling:constants]

Two shipped data sets, each with its model fitted once by SVI (not timed), then ``predict`` of one held-out condition
per call, one after another, and the first again:

- ``lss``: the Norman 2019 subset (``sm.datasets.norman19_devel``, its pseudobulk), the first ``--genes`` genes, the
  five doubles whose singles are seen held out (``semimech demo``'s split); ``linear_steady_state`` (300 steps, 100
  draws); ``num_cells=100`` and the default steady-state check of 8 draws;
- ``signalling``: HepG2 at 30 min (``hepg2_cancerres2011``, log10(x + 1)), trained on no and single inhibitors,
  ``signalling_network`` on its PKN as in ``notebooks/signalling_network.py`` (100 steps, 100 draws); five held-out
  triple inhibitions, ``num_cells=1``.

Each mode runs in its own fresh process, one after the other: ``arguments`` (the package as it is: the prediction's
arrays are arguments of the replay program, so a condition of the same shapes after the first reuses it) and
``constants`` (the replay compiled with the conditions' arrays as constants, a program per set of conditions, as
before 2026-12-07; since 2026-12-08 the steady-state check's replay too); ``lss:eager-check``: as ``arguments`` but the steady-state check of each call replays its
model's system sites with an eager ``Predictive`` (the path before 2026-12-08, which compiled a scan per call with
the conditions baked in). Prints a table and writes JSON (default ``benchmarks/results/predict_whatif.json``): wall
seconds per call and the predicted means (equal to float32 rounding between the modes).
"""

from __future__ import annotations

import time
import warnings


def _norman_lss(g: int):
    import semimech as sm
    from semimech import evaluate
    from semimech.models import linear_steady_state

    adata = sm.datasets.norman19_devel()
    design = sm.Design.from_anndata(adata[:, :g].copy(), perturbation_key="perturbation", control="control")
    doubles = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
    train, _ = evaluate.split_combinations(design, test_labels=doubles)
    fit = sm.fit_svi(linear_steady_state.SPEC, train.pseudobulk(), rng_key=0, num_steps=300, num_samples=100,
                     progress_bar=False)
    return fit, doubles, 100


def _hepg2_signalling():
    import semimech as sm
    from semimech.models import signalling_network as sn
    from signalling_nuts import hepg2_one_line, network  # the HepG2 set-up of the NUTS benchmark and the notebook

    train, held, _, _, readouts = hepg2_one_line()
    fit = sm.fit_svi(sn.SPEC, train, rng_key=0, num_steps=100, num_samples=100, progress_bar=False,
                     network=network(train, readouts), noise_sd=(0.12, 0.3))
    triples = [lab for lab in held if sum(part.endswith("i") for part in lab.split("+")) == 3][:5]
    return fit, triples, 1


def run(mode: str, n: int, g: int) -> dict:
    import functools
    import importlib

    import numpy as np

    import semimech as sm

    predict_module = importlib.import_module("semimech.infer.predict")  # the module (the package exports the function)
    warnings.simplefilter("ignore")
    problem, how = mode.split(":")
    fit, doubles, num_cells = _norman_lss(g) if problem == "lss" else _hepg2_signalling()
    if how == "constants":
        predict_module._replay_program = functools.partial(predict_module._replay_program, constants=True)
    elif how == "eager-check":  # the steady-state check's sites replayed by an eager Predictive, as before 2026-12-08
        from numpyro.infer import Predictive

        checks = importlib.import_module("semimech.checks")

        def eager(fit, post, data, site_names, rng_key, reference):
            model = functools.partial(fit.spec.model, **fit.options)
            out = Predictive(model, posterior_samples=post, return_sites=list(site_names))(rng_key, data)
            return {k: np.asarray(v) for k, v in out.items()}

        checks._system_sites = eager
    out = {"mode": mode, "genes": g, "calls": []}
    means = []
    for i, label in enumerate(doubles + doubles[:1]):
        t = time.perf_counter()
        p = sm.predict(fit, [label], rng_key=i, num_cells=num_cells)
        out["calls"].append({"label": label, "seconds": time.perf_counter() - t})
        means.append(p.draws["mean"].mean(0))
    out["mean_of_means"] = float(np.mean(means))
    out["means"] = np.asarray(means).tolist()
    return out


def main() -> None:
    import numpy as np
    from cv_sparse import modes_in_fresh_processes

    got = modes_in_fresh_processes(__file__, run, ("lss:arguments", "lss:constants", "lss:eager-check",
                                                   "signalling:arguments", "signalling:constants"), cells=0, genes=30,
                                   json_name="predict_whatif.json")
    if got is None:
        return
    rows, _ = got
    print("| model: replay's arrays | seconds per call (the first, then one new condition each, then the first again) "
          "| after the first, total s |\n|---|---|---|")
    for r in rows:
        secs = [c["seconds"] for c in r["calls"]]
        print(f"| {r['mode']} | " + ", ".join(f"{s:.2f}" for s in secs) + f" | {sum(secs[1:]):.2f} |")
    by_mode = {r["mode"]: r for r in rows}
    for problem in ("lss", "signalling"):
        for how in ("constants", "eager-check"):
            base, other = by_mode.get(f"{problem}:arguments"), by_mode.get(f"{problem}:{how}")
            if base is None or other is None:
                continue
            gap = float(np.max(np.abs(np.asarray(other["means"]) - np.asarray(base["means"]))))
            ratio = sum(c["seconds"] for c in other["calls"][1:]) / sum(c["seconds"] for c in base["calls"][1:])
            print(f"{problem}: {how} / arguments, the calls after the first {ratio:.2f}x; largest difference of the "
                  f"predicted means {gap:.2e}")


if __name__ == "__main__":
    main()
