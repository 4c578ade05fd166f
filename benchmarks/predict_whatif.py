"""A notebook's what-if questions: ``predict`` of one condition after another on a steady-state fit, the replay's
arrays as arguments of one compiled program against the conditions baked into a program per call (the path before).

    cd /tmp && OPENBLAS_NUM_THREADS=1 python <repo>/benchmarks/predict_whatif.py [--genes 30] [--json PATH]
        [--modes arguments constants]

The shipped Norman 2019 subset (``sm.datasets.norman19_devel``, its pseudobulk), the first ``--genes`` genes, the five
doubles whose singles are seen held out (``semimech demo``'s split); ``linear_steady_state`` fitted by SVI (300 steps,
100 draws; not timed). Then ``predict`` of each held-out double alone, one call after another (``num_cells=100``, the
default steady-state check of 8 draws), and the first double again. Each mode runs in its own fresh process, one after
the other: ``arguments`` (the package as it is: the prediction's arrays are arguments of the replay program, so a
double after the first reuses it) and ``constants`` (the replay compiled with the conditions' arrays as constants, a
program per set of conditions, as before 2026-12-07). Prints a table and writes JSON (default
``benchmarks/results/predict_whatif.json``): wall seconds per call and the predicted means (equal to float32 rounding
between the modes).
"""

from __future__ import annotations

import time
import warnings


def run(mode: str, n: int, g: int) -> dict:
    import importlib

    import numpy as np

    import semimech as sm
    from semimech import evaluate
    from semimech.models import linear_steady_state

    predict_module = importlib.import_module("semimech.infer.predict")  # the module (the package exports the function)
    warnings.simplefilter("ignore")
    adata = sm.datasets.norman19_devel()
    design = sm.Design.from_anndata(adata[:, :g].copy(), perturbation_key="perturbation", control="control")
    doubles = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
    train, _ = evaluate.split_combinations(design, test_labels=doubles)
    fit = sm.fit_svi(linear_steady_state.SPEC, train.pseudobulk(), rng_key=0, num_steps=300, num_samples=100,
                     progress_bar=False)
    if mode == "constants":
        predict_module._replay_program = (lambda model, data, sites, **kw:
                                          predict_module._constant_replay(model, data, sites))
    out = {"mode": mode, "genes": g, "calls": []}
    means = []
    for i, label in enumerate(doubles + doubles[:1]):
        t = time.perf_counter()
        p = sm.predict(fit, [label], rng_key=i, num_cells=100)
        out["calls"].append({"label": label, "seconds": time.perf_counter() - t})
        means.append(p.draws["mean"].mean(0))
    out["mean_of_means"] = float(np.mean(means))
    out["means"] = np.asarray(means).tolist()
    return out


def main() -> None:
    import numpy as np
    from cv_sparse import modes_in_fresh_processes

    got = modes_in_fresh_processes(__file__, run, ("arguments", "constants"), cells=0, genes=30,
                                   json_name="predict_whatif.json")
    if got is None:
        return
    rows, _ = got
    labels = [c["label"] for c in rows[0]["calls"]]
    print("| replay's arrays | " + " | ".join(f"{lab} s" for lab in labels[:-1]) + f" | {labels[-1]} again s | "
          "after the first, total s |")
    print("|---" * (len(labels) + 2) + "|")
    for r in rows:
        secs = [c["seconds"] for c in r["calls"]]
        print(f"| {r['mode']} | " + " | ".join(f"{s:.2f}" for s in secs) + f" | {sum(secs[1:]):.2f} |")
    base, other = rows[0], rows[1:]
    for r in other:
        gap = float(np.max(np.abs(np.asarray(r["means"]) - np.asarray(base["means"]))))
        ratio = sum(c["seconds"] for c in r["calls"][1:]) / sum(c["seconds"] for c in base["calls"][1:])
        print(f"{r['mode']} / {base['mode']}: the calls after the first {ratio:.2f}x; largest difference of the "
              f"predicted means {gap:.2e}")


if __name__ == "__main__":
    main()
