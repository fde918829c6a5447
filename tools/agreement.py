"""How well the label-free quality estimate — top-1 agreement with the original on held-out
unlabelled images — tracks real top-1, across every compressed model the benchmarks made.

Reads ``tools/results/{auto_select,out_of_domain,efficientnet_lite0}.json`` (whatever exists)
and writes ``tools/results/agreement.md|json|png``: per network, the number of models, Pearson
and Spearman correlations between agreement and top-1, and the RMS error of top-1 predicted
from agreement by a least-squares line.

    .venv/bin/python tools/agreement.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tools.harness import run_record, write_results  # noqa: E402

RESULTS = ROOT / "tools" / "results"


def _pairs() -> dict[str, list[tuple[float, float, str]]]:
    """(agreement, top-1, where) per network, from each benchmark's JSON."""
    found: dict[str, list[tuple[float, float, str]]] = {"ResNet-56 (CIFAR-10)": [],
                                                         "EfficientNet-Lite0 (ImageNet)": []}
    cifar = found["ResNet-56 (CIFAR-10)"]
    path = RESULTS / "auto_select.json"
    if path.exists():
        for key, rows in json.loads(path.read_text())["cells"].items():
            cifar += [(row["agreement"], row["lossless"], f"auto_select {key} {method}")
                      for method, row in rows.items()]
    path = RESULTS / "out_of_domain.json"
    if path.exists():
        cifar += [(cell["agreement"], cell["lossless"], f"out_of_domain {key}")
                  for key, cell in json.loads(path.read_text())["cells"].items()]
    path = RESULTS / "efficientnet_lite0.json"
    if path.exists():
        for key, row in json.loads(path.read_text())["cells"].items():
            found["EfficientNet-Lite0 (ImageNet)"] += [
                (row[model]["agreement"], row[model]["top1"], f"efficientnet {key} {model}")
                for model in ("pruned", "recovered")]
    return {name: pairs for name, pairs in found.items() if pairs}


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort()
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties share their mean rank
        ranks[values == value] = ranks[values == value].mean()
    return ranks


def statistics(pairs: list[tuple[float, float, str]]) -> dict:
    agreement, top1 = (np.array([pair[i] for pair in pairs]) for i in (0, 1))
    if len(pairs) < 3:
        return {"models": len(pairs)}
    slope, intercept = np.polyfit(agreement, top1, 1)
    residual = top1 - (slope * agreement + intercept)
    return {"models": len(pairs),
            "pearson": float(np.corrcoef(agreement, top1)[0, 1]),
            "spearman": float(np.corrcoef(_ranks(agreement), _ranks(top1))[0, 1]),
            "slope": float(slope), "intercept": float(intercept),
            "rms_error": float(np.sqrt((residual ** 2).mean())),
            "agreement_range": [float(agreement.min()), float(agreement.max())],
            "top1_range": [float(top1.min()), float(top1.max())]}


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    run = run_record("tools/agreement.py", argv)
    found = _pairs()
    table = {name: statistics(pairs) for name, pairs in found.items()}
    lines = ["# Label-free quality estimate: agreement with the original vs real top-1", "",
             "`.venv/bin/python tools/agreement.py` — every compressed model of "
             "`auto_select`, `out_of_domain` and `efficientnet_lite0` (their held-out test "
             "images); fit: top-1 ≈ slope · agreement + intercept.", "",
             "| network | models | Pearson r | Spearman ρ | slope | RMS error of the fit "
             "(points) | agreement range | top-1 range |", "|---|---|---|---|---|---|---|---|"]
    for name, stats in table.items():
        if "pearson" not in stats:
            lines.append(f"| {name} | {stats['models']} | | | | | | |")
            continue
        lines.append(f"| {name} | {stats['models']} | {stats['pearson']:.3f} | "
                     f"{stats['spearman']:.3f} | {stats['slope']:.2f} | "
                     f"{stats['rms_error']:.2f} | {stats['agreement_range'][0]:.1f}–"
                     f"{stats['agreement_range'][1]:.1f} | {stats['top1_range'][0]:.1f}–"
                     f"{stats['top1_range'][1]:.1f} |")
    write_results(RESULTS / "agreement", {"statistics": table, "models": found},
                  "\n".join(lines) + "\n\n![agreement vs top-1](agreement.png)", run)
    figure = Figure(figsize=(5 * len(found), 4), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    for index, (name, pairs) in enumerate(found.items(), start=1):
        axis = figure.add_subplot(1, len(found), index)
        axis.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=12)
        axis.set(title=name, xlabel="agreement with original (%)", ylabel="top-1 (%)")
        axis.grid(alpha=0.3)
    figure.savefig(RESULTS / "agreement.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
