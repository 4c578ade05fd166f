"""``semimech`` command line: ``semimech demo`` runs the main job on the shipped data.

Only the standard library is imported until a command runs, so ``semimech --help`` and
``semimech demo --help`` answer without loading JAX. Bad arguments get a one-line error
(exit status 2) before anything is computed or written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

METRICS = ["l2", "pearson_delta", "mse_top_de", "direction", "coverage_50", "coverage_90"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="semimech", description="semimech command line; `semimech demo` runs the main job on the shipped data.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = sub.add_parser("demo", help="fit the additive model to Norman 2019 with the combinable doubles held out",
                       description="Fit the additive model to the shipped Norman 2019 data with the five combinable "
                                   "doubles held out, score it against baselines, and write a results folder.")
    d.add_argument("--out", default="semimech-results",
                   help="results folder (default: semimech-results); must not hold results already unless --force")
    d.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    d.add_argument("--steps", type=_positive_int, default=3000, help="SVI steps (default 3000)")
    d.add_argument("--draws", type=_positive_int, default=400, help="posterior draws (default 400)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--smoke", action="store_true", help="a quick run for tests (200 steps, 100 draws)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _check_out(out: Path, *, force: bool) -> str | None:
    """Why ``out`` cannot receive the demo's results (None if it can); creates nothing."""
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder; choose another --out"
    if out.is_dir() and any(out.iterdir()) and not force:
        return (f"--out {out} already holds files ({', '.join(sorted(p.name for p in out.iterdir())[:4])}"
                f"{', ...' if len(list(out.iterdir())) > 4 else ''}); pass --force to overwrite the demo's "
                "results there, or choose another --out")
    parent = out
    while not parent.exists():  # nearest existing ancestor: it must be a writable folder
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create --out {out}: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create --out {out}: {parent} is not writable"
    return None


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        out = Path(args.out)
        problem = _check_out(out, force=args.force)
        if problem is not None:
            print(f"semimech demo: error: {problem}", file=sys.stderr)
            return 2
        if args.force and out.is_dir() and any(out.iterdir()):
            print(f"--force: overwriting the results in {out}")
        existed = out.exists()
        try:
            return demo(out=out, steps=200 if args.smoke else args.steps,
                        draws=100 if args.smoke else args.draws, seed=args.seed, progress=not args.no_progress)
        except KeyboardInterrupt as err:  # FitInterrupted is one: its message says what was stopped
            reason = (str(err) or "interrupted (Ctrl-C).").splitlines()[0]
            written = (f"the results in {out} may be incomplete." if out.exists() and (not existed or args.force)
                       else f"nothing was written to {out}.")
            print(f"semimech demo: stopped: {reason} {written}", file=sys.stderr)
            return 130  # the shell's convention for SIGINT
    return 2


def _jsonable(obj):
    """Plain JSON values: NumPy scalars to Python, NaN and infinities to None (JSON ``null``)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # NumPy / JAX scalar
        obj = obj.item()
    if hasattr(obj, "tolist"):  # array
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def demo(*, out: Path, steps: int, draws: int, seed: int, progress: bool = True) -> int:
    """Fit, predict the held-out doubles, score against baselines, write a results folder."""
    # the imports (JAX, NumPyro) and reading the data take ~2 s: say so before they start
    print("semimech demo: loading JAX and the shipped Norman 2019 subset...", flush=True)
    import numpy as np

    import semimech as sm
    from semimech import evaluate, plots
    from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES, norman19_devel
    from semimech.infer.diagnostics import format_diagnostics
    from semimech.models import additive

    t0 = time.perf_counter()
    adata = norman19_devel()
    full = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    train, _ = evaluate.split_combinations(full, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    # the 500 genes were chosen on two studies; many are never expressed in K562: model the
    # genes detected in at least 0.5% of the training cells (chosen without the held-out cells)
    detected = np.asarray((train.y > 0).mean(axis=0)).ravel() >= 0.005
    genes = [g for g, keep in zip(full.genes, detected) if keep]
    design = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control", genes=genes)
    train, test = evaluate.split_combinations(design, test_labels=NORMAN19_COMBINABLE_DOUBLES)
    held_out = [p for p in test.observed_perturbations() if p != design.control]
    print(f"data: Norman 2019 K562 CRISPRa (shipped subset), {design!r}")
    print(f"modelling the {len(genes)} of {full.n_genes} genes detected in >= 0.5% of training cells")
    print(f"held out {len(held_out)} doubles whose singles are seen: {', '.join(held_out)}")
    print(f"fitting the additive model to the training pseudobulk ({steps} SVI steps)...", flush=True)
    fit = sm.fit_svi(additive.SPEC, train.pseudobulk(), rng_key=seed, num_steps=steps, num_samples=draws,
                     progress_bar=progress)
    print(format_diagnostics(sm.diagnostics(fit)))

    cells = {p: int(np.sum(test.perturbation_index == test.perturbations.index(p))) for p in held_out}
    pred = sm.predict(fit, held_out, rng_key=seed + 1, num_cells=[cells[p] for p in held_out])
    model_table = evaluate.score(pred, test, reference=train)
    base_table = evaluate.score_baselines(train, test, baselines=("no_change", "additive"), reference=train)
    base_table["model"] = "baseline:" + base_table["model"].astype(str)
    table = _summary(model_table, base_table)
    print("\nheld-out doubles, mean over perturbations (L2: lower is better; coverage: nominal 0.50 / 0.90)")
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print("\nper double (additive model):")
    print(model_table[model_table.perturbation != "mean"][["perturbation"] + METRICS]
          .to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    out.mkdir(parents=True, exist_ok=True)  # only now: a run stopped before this leaves nothing behind
    fit.save(out / "fit")
    frame = pred.to_frame(kind="observed_mean")
    truth = test.pseudobulk(by_batch=False)
    tmap = {truth.perturbations[i]: truth.y[k] for k, i in enumerate(truth.perturbation_index)}
    frame["observed"] = np.concatenate([np.asarray(tmap[p]) for p in held_out])
    frame.to_csv(out / "predictions.csv", index=False)
    import pandas as pd

    pd.concat([model_table, base_table], ignore_index=True).to_csv(out / "metrics.csv", index=False)
    fig = plots.predicted_vs_observed(pred, test, reference=train)
    fig.savefig(out / "predicted_vs_observed.png", dpi=110, bbox_inches="tight")
    elapsed = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(_jsonable(
        {"seconds": elapsed, "steps": steps, "draws": draws, "seed": seed, "held_out": held_out,
         "diagnostics": sm.diagnostics(fit), "summary": table.reset_index().to_dict(orient="records")}),
        indent=1, allow_nan=False))  # NaN (e.g. a metric undefined for a model) is written as null
    print(f"\nwrote {out}/: fit/posterior.nc (ArviZ), predictions.csv, metrics.csv, predicted_vs_observed.png "
          f"({elapsed:.0f} s)")
    return 0


def _summary(model_table, base_table):
    import pandas as pd

    both = pd.concat([model_table, base_table], ignore_index=True)
    rows = both[both.perturbation == "mean"].set_index("model")[METRICS]
    return rows


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
