"""CIFAR-10 ResNet-56-50%: filter pruning recovered from 1-3 images per class, against block
drop at about the same MAC ratio on the same images.

ResNet-56-50% prunes half the filters (L1 norm) of the inner feature map of every basic block.
Methods: ``L1`` (no recovery), ``baseline`` (Eq. 4 finetune of the L1-pruned network),
``practise`` (label-free stage-wise recovery of the Fig. 2 adapters), ``practise+ce-mse``,
``practise+kd`` (then the label-free ``kd`` finetune: every weight, the original's logits);
and the same two PRACTISE rows for 13 dropped blocks (x.2, x.4, x.6, x.8 and 3.9). Top-1 on
the 1,017 lossless test images, seeds 0-4; at the end, ONNX Runtime latency of the two
compressed networks interleaved (batch 64, one thread). Resumable like ``bench_cifar.py``.

    .venv/bin/python tools/bench_filters.py [--sizes 10 20 30] [--seeds 0 1 2 3 4]
                                            [--threads T] [--budget MINUTES]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune.datasets import open_pool, sample, to_tensor  # noqa: E402
from fxprune.evaluate import top1  # noqa: E402
from fxprune.export import export_onnx  # noqa: E402
from fxprune.latency import bench_input, onnx_runner, time_interleaved  # noqa: E402
from fxprune.options import Drop, FilterPruning, Options, Recovery  # noqa: E402
from fxprune.recovery.finetune import FinetuneConfig  # noqa: E402
from tools.bench_cifar import mean_std  # noqa: E402
from tools.harness import add_run_arguments, open_results  # noqa: E402

DROP = ["1.2", "1.4", "1.6", "1.8", "2.2", "2.4", "2.6", "2.8", "3.2", "3.4", "3.6", "3.8",
        "3.9"]
SCHEMES = {"filters 50%": dict(drop=None, filters=FilterPruning(0.5)),
           "13 blocks": dict(drop=Drop.blocks(*DROP))}
CE_MSE = FinetuneConfig("ce-mse")
KD = FinetuneConfig("kd")
RESULTS = ROOT / "tools" / "results" / "cifar_resnet56_filter"
COMMAND = ("`.venv/bin/python tools/bench_filters.py --sizes 10 20 30 --seeds 0 1 2 --threads 2`"
           " (the practise+kd rows: the same with `--threads 1`, stopped after cell 20/0, "
           "beside other jobs)")


class Bench:
    def __init__(self):
        self.loaded = fxprune.load_model("cifar:resnet56")
        self.pool = open_pool("cifar10", "train")
        self.test = open_pool("cifar10", "test")
        self.test_images = self.tensor(self.test)

    def tensor(self, pool):
        return to_tensor(pool, self.loaded.input_size, self.loaded.mean, self.loaded.std)

    def accuracy(self, model) -> float:
        return top1(model, self.test_images, self.test.labels)

    def run(self, images, labels, seed, recovery: Recovery | None,
            finetune: FinetuneConfig | None, scheme, schemes=SCHEMES):
        """One ``fxprune.compress`` call with the options ``schemes[scheme]``; the compress
        result and its row (top-1, seconds, MACs)."""
        tick = time.perf_counter()
        options = Options(recovery=recovery, finetune=finetune, seed=seed, **schemes[scheme])
        result = fxprune.compress(self.loaded.model, images, self.loaded.input_size, options,
                                  labels=labels, progress=False)
        return result, {"top1": self.accuracy(result.model),
                        "seconds": time.perf_counter() - tick,
                        "macs": result.report.models["compressed"].macs}

    def cell(self, size: int, seed: int, rows: dict) -> None:
        """Every method for one tiny set. One compress call gives both PRACTISE rows: the
        recovered model (before the finetune) and the finetuned one."""
        chosen = sample(self.pool, per_class=size // 10, seed=seed)
        images, labels = self.tensor(chosen), chosen.labels
        if "baseline" not in rows:
            torch.manual_seed(seed)
            _, rows["baseline"] = self.run(images, labels, seed, None, CE_MSE, "filters 50%")
        if "practise+kd" not in rows:
            torch.manual_seed(seed)
            _, rows["practise+kd"] = self.run(images, None, seed, Recovery(), KD, "filters 50%")
        for prefix, scheme in (("", "filters 50%"), ("13 blocks: ", "13 blocks")):
            if f"{prefix}practise+ce-mse" in rows:
                continue
            torch.manual_seed(seed)
            result, rows[f"{prefix}practise+ce-mse"] = self.run(images, labels, seed, Recovery(),
                                                                CE_MSE, scheme)
            rows[f"{prefix}practise"] = {"top1": self.accuracy(result.recovered),
                                         "seconds": result.report.phases["recover"],
                                         "macs": result.report.models["compressed"].macs}


def latency(bench: Bench) -> dict:
    """Both compressed networks (no training: latency does not depend on the weights)."""
    images = bench.tensor(sample(bench.pool, n=10, seed=0))
    with tempfile.TemporaryDirectory() as scratch:
        paths = {}
        for scheme in SCHEMES:
            result, _ = bench.run(images, None, 0, None, None, scheme)
            paths[scheme] = export_onnx(result.model, bench.loaded.input_size,
                                        Path(scratch) / f"{scheme.replace(' ', '_')}.onnx")
        original = export_onnx(bench.loaded.model, bench.loaded.input_size,
                               Path(scratch) / "original.onnx")
        inputs = bench_input(bench.loaded.input_size, batch=64)
        runners = [onnx_runner(path, inputs, threads=1) for path in [original, *paths.values()]]
        timings = time_interleaved(runners, warmup=3, repeats=40)
    base = timings[0].median_ms
    return {scheme: {"latency_ms": timing.median_ms, "iqr_ms": timing.iqr_ms,
                     "ratio": timing.median_ms / base}
            for scheme, timing in zip(["original", *SCHEMES], timings)}


def summarize(results: dict) -> str:
    original, pruned = results["original"], results["pruned"]
    lines = ["# CIFAR-10 ResNet-56-50% (filter pruning) vs block drop, 1-3 images per class", "",
             f"{COMMAND} — top-1 % on the 1,017 lossless test images, mean ± std over seeds "
             "(n = seeds done); the same tiny sets for every method; PRACTISE with the "
             "default recovery (views up to 256 pairs below 32 images). Seconds: one run on "
             "this shared 2-core CPU (cells 10/1 to 20/1 ran beside a test run).", "",
             f"Original {original:.2f}. ResNet-56-50%: half the filters of every block's inner "
             f"feature map, MACs {results['macs']['filters 50%'] / 1e6:.2f} M of "
             f"{results['macs']['original'] / 1e6:.2f} M; L1 pruning with no recovery "
             f"{pruned['filters 50%']:.2f}. 13 blocks dropped ({', '.join(DROP)}): MACs "
             f"{results['macs']['13 blocks'] / 1e6:.2f} M, no recovery "
             f"{pruned['13 blocks']:.2f}.", "",
             "| images | method | n | top-1 | loss vs original | seconds |",
             "|---|---|---|---|---|---|"]
    methods = ["baseline", "practise", "practise+ce-mse", "practise+kd", "13 blocks: practise",
               "13 blocks: practise+ce-mse"]
    for size in sorted({int(key.split("/")[0]) for key in results["cells"]}):
        for method in methods:
            runs = [rows[method] for key, rows in results["cells"].items()
                    if key.startswith(f"{size}/") and method in rows]
            if not runs:
                continue
            accuracies = [run["top1"] for run in runs]
            mean = statistics.mean(accuracies)
            lines.append(f"| {size} | {method} | {len(runs)} | {mean_std(accuracies)} | "
                         f"{original - mean:.2f} | "
                         f"{statistics.mean(run['seconds'] for run in runs):.0f} |")
    if "latency" in results:
        lines += ["", "ONNX Runtime, batch 64, one thread, interleaved:", "",
                  "| model | latency ms (median ± IQR) | latency ratio | MAC ratio |",
                  "|---|---|---|---|"]
        for name, row in results["latency"].items():
            lines.append(f"| {name} | {row['latency_ms']:.1f} ± {row['iqr_ms']:.1f} | "
                         f"{row['ratio']:.3f} | "
                         f"{results['macs'][name] / results['macs']['original']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10, 20, 30])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=float, default=None, help="minutes; no new cell after")
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/bench_filters.py", argv, rows=True)
    bench, start = Bench(), time.perf_counter()
    if "pruned" not in results:
        images = bench.tensor(sample(bench.pool, n=10, seed=0))
        results["original"] = bench.accuracy(bench.loaded.model)
        results["pruned"], results["macs"] = {}, {}
        for scheme in SCHEMES:
            result, row = bench.run(images, None, 0, None, None, scheme)
            results["pruned"][scheme] = row["top1"]
            results["macs"][scheme] = row["macs"]
            results["macs"]["original"] = result.report.models["original"].macs
    for size in args.sizes:
        for seed in args.seeds:
            if args.budget and time.perf_counter() - start > 60 * args.budget:
                break
            rows = results["cells"].setdefault(f"{size}/{seed}", {})
            bench.cell(size, seed, rows)
            file.save(results)
            print(size, seed, {k: round(v["top1"], 2) for k, v in rows.items()}, flush=True)
    if "latency" not in results:
        results["latency"] = latency(bench)
    file.save(results)


if __name__ == "__main__":
    main()
