"""The paper's other layer-wise schemes on CIFAR-10 ResNet-56 with 50 images: DW-PW
decoupling, low-rank (PCA, energy 0.4) and 90% unstructured masks, each with no recovery,
the Eq. 4 baseline (for masks: the weights finetuned, the mask re-applied after each step)
and PRACTISE. Top-1 on the 1,017 lossless test images, seeds 0-2 (5 images per class).
Resumable.

    .venv/bin/python tools/bench_schemes.py [--seeds 0 1 2] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxprune.datasets import sample  # noqa: E402
from fxprune.options import Decouple, Recovery, Sparsity  # noqa: E402
from tools.bench_cifar import mean_std  # noqa: E402
from tools.bench_filters import CE_MSE, Bench  # noqa: E402
from tools.harness import add_run_arguments, open_results  # noqa: E402

SCHEMES = {"dwpw": dict(drop=None, decouple=Decouple.dwpw()),
           "lowrank 0.4": dict(drop=None, decouple=Decouple.lowrank(0.4)),
           "sparsity 0.9": dict(drop=None, sparsity=Sparsity(0.9))}
METHODS = {"no recovery": (None, None), "baseline": (None, CE_MSE),  # (recovery, finetune)
           "practise": (Recovery(), None)}
RESULTS = ROOT / "tools" / "results" / "cifar_resnet56_schemes"


def summarize(results: dict) -> str:
    lines = ["# CIFAR-10 ResNet-56: decoupling, low-rank and unstructured masks, 50 images", "",
             f"`{results['command']}` — top-1 % on the 1,017 lossless test "
             "images, mean ± std over seeds (n); seconds of the whole compression.", "",
             f"Original {results['original']:.2f}.", "",
             "| scheme | MAC ratio | method | n | top-1 | seconds |", "|---|---|---|---|---|---|"]
    for scheme in SCHEMES:
        for method in METHODS:
            runs = [cell[method] for key, cell in results["cells"].items()
                    if key.startswith(f"{scheme}/") and method in cell]
            if not runs:
                continue
            lines.append(f"| {scheme} | {runs[0]['macs'] / results['macs']:.3f} | {method} | "
                         f"{len(runs)} | {mean_std([run['top1'] for run in runs])} | "
                         f"{statistics.mean(run['seconds'] for run in runs):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/bench_schemes.py", argv, rows=True)
    bench = Bench()
    results["original"] = bench.accuracy(bench.loaded.model)
    for seed in args.seeds:
        chosen = sample(bench.pool, per_class=5, seed=seed)
        images, labels = bench.tensor(chosen), chosen.labels
        for scheme in SCHEMES:
            rows = results["cells"].setdefault(f"{scheme}/{seed}", {})
            for method, (recovery, finetune) in METHODS.items():
                if method in rows:
                    continue
                torch.manual_seed(seed)
                result, rows[method] = bench.run(images, labels, seed, recovery, finetune, scheme,
                                                 SCHEMES)
                results["macs"] = result.report.models["original"].macs
                file.save(results)
                print(scheme, seed, method, round(rows[method]["top1"], 2), flush=True)


if __name__ == "__main__":
    main()
