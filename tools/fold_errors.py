"""Measure the fold error on every architecture of tests/test_exactness.py.

Drops the paper's blocks, inserts adapters (both placements), moves adapters and BN statistics
away from the identity, folds, and records the max abs error (float64) and the max error
relative to the output's magnitude (float32). Writes tools/results/fold_errors.{md,json}.

    .venv/bin/python tools/fold_errors.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxprune.passes import folding  # noqa: E402
from tests.architectures import (ARCHITECTURES, compressed_with_adapters,  # noqa: E402
                                 input_size)
from tests.helpers import max_abs_diff, max_rel_diff, randomize_adapters  # noqa: E402
from tools.harness import run_record, write_results  # noqa: E402


def measure(name: str) -> dict:
    size = input_size(name)
    torch.manual_seed(0)  # random init: the same weights on every run
    model = ARCHITECTURES[name]()
    row = {"architecture": name, "input": list(size)}
    for dtype, label, metric in [(torch.float64, "fp64_max_abs", max_abs_diff),
                                 (torch.float32, "fp32_max_rel", max_rel_diff)]:
        worst = 0.0
        for placement in ("paper", "cvpr"):
            gm, x, ids, sites = compressed_with_adapters(model, size, dtype, placement)
            randomize_adapters(gm, scale=0.3)
            with torch.no_grad():
                unfolded = gm(x)
                folding()(gm)
                worst = max(worst, metric(unfolded, gm(x)))
            row[f"{placement}_adapters"] = len(sites)
        row["dropped"] = ids
        row[label] = worst
    return row


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    run = run_record("tools/fold_errors.py", argv)
    rows = [measure(name) for name in ARCHITECTURES]
    lines = [f"# Fold exactness\n\n`{run['command']}` (batch 2, random BN statistics, adapters "
             "I + 0.3·G/√C, both placements; worst of the two)\n",
             "| architecture | input | dropped | adapters paper / cvpr | fp64 max abs | "
             "fp32 max rel |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['architecture']} | {'x'.join(map(str, row['input']))} | "
                     f"{', '.join(row['dropped'])} | {row['paper_adapters']} / "
                     f"{row['cvpr_adapters']} | {row['fp64_max_abs']:.2e} | "
                     f"{row['fp32_max_rel']:.2e} |")
    write_results(ROOT / "tools" / "results" / "fold_errors", {"rows": rows}, "\n".join(lines),
                  run)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
