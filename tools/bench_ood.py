"""CIFAR-10 ResNet-56, blocks 1.2, 2.2, 3.2 dropped: recovery from out-of-domain images (the
paper's Table 5 question) — N unlabelled images drawn at random from CIFAR-10 train (in
domain), from the 32x32 ImageNet sample (out of domain), or Gaussian noise (control).

Every row is the default label-free PRACTISE recovery (no finetune); top-1 on the 1,017
lossless test images and top-1 agreement with the original there, seeds 0-4. ``gap closed`` is
``(top-1 - pruned) / (in-domain top-1 - pruned)`` at the same N (mean of the per-seed means).
Resumable like ``bench_cifar.py``.

    .venv/bin/python tools/bench_ood.py [--sizes 50 500] [--seeds 0 1 2 3 4] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune.datasets import open_pool, sample, to_tensor  # noqa: E402
from fxprune.evaluate import percent_equal, predictions  # noqa: E402
from fxprune.options import Drop, Options  # noqa: E402
from tools.bench_cifar import mean_std  # noqa: E402
from tools.harness import add_run_arguments, open_results  # noqa: E402

POOLS = {"cifar10": ("cifar10", "train"), "imagenet32": ("imagenet32", None),
         "noise": ("noise:1000", None)}
DROP = ["1.2", "2.2", "3.2"]
RESULTS = ROOT / "tools" / "results" / "out_of_domain"
COMMAND = "`.venv/bin/python tools/bench_ood.py --threads 1`"


class Bench:
    def __init__(self):
        self.loaded = fxprune.load_model("cifar:resnet56")
        self.pools = {name: open_pool(*spec) for name, spec in POOLS.items()}
        self.test = open_pool("cifar10", "test")
        self.test_images = self.tensor(self.test)
        teacher = fxprune.trace(self.loaded.model, self.loaded.input_size).eval()
        self.reference = predictions(teacher, self.test_images)

    def tensor(self, pool):
        return to_tensor(pool, self.loaded.input_size, self.loaded.mean, self.loaded.std)

    def scores(self, model) -> dict:
        predicted = predictions(model, self.test_images)
        return {"lossless": percent_equal(predicted, self.test.labels),
                "agreement": percent_equal(predicted, self.reference)}

    def row(self, pool: str, size: int, seed: int) -> dict:
        images = self.tensor(sample(self.pools[pool], n=size, seed=seed))
        tick = time.perf_counter()
        result = fxprune.compress(self.loaded.model, images, self.loaded.input_size,
                                  Options(drop=Drop.blocks(*DROP), seed=seed), progress=False)
        return {**self.scores(result.model), "seconds": time.perf_counter() - tick,
                "threads": torch.get_num_threads(), "pruned": self.scores(result.pruned)}


def summarize(results: dict) -> str:
    lines = ["# ResNet-56, 3 blocks dropped: recovery from in-domain, out-of-domain and noise "
             "images", "",
             f"{COMMAND} — label-free PRACTISE (default, no finetune) from N unlabelled "
             "images; top-1 % on the 1,017 lossless CIFAR-10 test images and agreement % with "
             "the original there, mean ± std over seeds (n); gap closed = (top-1 − pruned) / "
             "(in-domain top-1 − pruned) at the same N.", "",
             f"Original: {results['original']:.2f}; pruned, no recovery: "
             f"{results.get('pruned', float('nan')):.2f}.", "",
             "| N | images | n | top-1 | agreement | gap closed | seconds |",
             "|---|---|---|---|---|---|---|"]
    for size in (50, 500):
        rows = {pool: [cell for key, cell in results["cells"].items()
                       if key.startswith(f"{pool}/{size}/")] for pool in POOLS}
        if not rows["cifar10"]:
            continue
        in_domain = statistics.mean(cell["lossless"] for cell in rows["cifar10"])
        for pool, cells in rows.items():
            if not cells:
                continue
            top = statistics.mean(cell["lossless"] for cell in cells)
            closed = (top - results["pruned"]) / (in_domain - results["pruned"])
            lines.append(f"| {size} | {pool} | {len(cells)} | "
                         f"{mean_std([c['lossless'] for c in cells])} | "
                         f"{mean_std([c['agreement'] for c in cells])} | {closed:.0%} | "
                         f"{statistics.mean(c['seconds'] for c in cells):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, choices=(50, 500), default=[50, 500])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--pools", nargs="+", choices=list(POOLS), default=list(POOLS))
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/bench_ood.py", argv)
    bench = Bench()
    results["original"] = percent_equal(bench.reference, bench.test.labels)
    for size in args.sizes:
        for seed in args.seeds:
            for pool in args.pools:
                key = f"{pool}/{size}/{seed}"
                if key in results["cells"]:
                    continue
                cell = bench.row(pool, size, seed)
                results["pruned"] = cell.pop("pruned")["lossless"]
                results["cells"][key] = cell
                file.save(results)
                print(key, round(cell["lossless"], 2), flush=True)


if __name__ == "__main__":
    main()
