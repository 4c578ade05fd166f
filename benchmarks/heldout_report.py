"""Markdown table of ``benchmarks/heldout.py`` results (one row per task x configuration).

    python benchmarks/heldout_report.py benchmarks/results/heldout_*.json
"""

from __future__ import annotations

import json
import sys


def _f(x, p=3):
    return "—" if x is None else f"{x:.{p}f}"


def rows(result: dict) -> list[str]:
    arrow = "higher is better" if result["higher_is_better"] else "lower is better"
    head = (f"**{result['task']}** — {result['metric']}, {result['aggregation'].replace('_', ' ')} ({arrow}); "
            f"{result['n_conditions']} held-out conditions in {result['n_folds']} fold(s); genes: {result['gene_set']}")
    out = [head, "", "| configuration | value (± sd over seeds) | seeds | cov 50% | cov 90% | fit s (mean per seed) |",
           "|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        sd = f" ± {m['sd_over_seeds']:.3f}" if m.get("sd_over_seeds") is not None else ""
        note = f" ({m['notes'][0][:90]})" if m["value"] is None and m.get("notes") else ""
        out.append(f"| {name} | {_f(m['value'])}{sd}{note} | {m['seeds']} | {_f(m['coverage_50'], 2)} | "
                   f"{_f(m['coverage_90'], 2)} | {_f(m['fit_seconds'], 0)} |")
    best = sorted(((v, k) for k, v in result["baselines"].items() if v is not None),
                  reverse=result["higher_is_better"])
    for v, k in best:
        out.append(f"| baseline: {k} | {v:.3f} | — | — | — | — |")
    c = result["config"]
    out += ["", f"(steps {c['num_steps']}, NUTS {c['num_warmup']} warm-up; wall {c['wall_seconds']:.0f} s at load "
                f"{c.get('load_1min')})", ""]
    return out


def main(paths) -> int:
    for p in paths:
        print("\n".join(rows(json.loads(open(p).read()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
