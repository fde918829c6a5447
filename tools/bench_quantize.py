"""int8 quantization calibrated on the tiny set (``--quantize int8``), on real weights: how
much accuracy it costs and how much latency it saves, alone and on top of block drop.

- CIFAR-10 ResNet-56: the original, and the 3-block cut (1.2, 2.2, 3.2) recovered by the
  default PRACTISE from N = 50 lossless training images (seeds 0-2); each quantized with those
  same 50 images. Top-1 on the 1,017 lossless test images.
- EfficientNet-Lite0: the original, calibrated on 100 ImageNet sample images (seed 0), top-1
  on 500 others (the split of ``tools/bench_efficientnet.py``).

Latency: ONNX Runtime, one thread, batch 1 and 64 (CIFAR) or 1 (ImageNet), every file of a
row timed interleaved with its network's fp32 original; ratios of 10th-percentile times.

    .venv/bin/python tools/bench_quantize.py [--seeds 0 1 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune.datasets import sample  # noqa: E402
from fxprune.evaluate import percent_equal  # noqa: E402
from fxprune.export import export_onnx  # noqa: E402
from fxprune.latency import (bench_input, interleaved_seconds, latency_ratio,  # noqa: E402
                             onnx_runner)
from fxprune.evaluate import onnx_predictions  # noqa: E402
from fxprune.quantize import quantize_onnx  # noqa: E402
from fxprune.options import Drop, Options  # noqa: E402
from tools.bench_cifar import SCHEMES, Bench as CifarBench  # noqa: E402
from tools.bench_efficientnet import Bench as ImageNetBench  # noqa: E402
from tools.harness import add_run_arguments, open_results  # noqa: E402

RESULTS = ROOT / "tools" / "results" / "quantize"


def measure(teacher, model, size, calibration, images, labels, batches, scratch: Path) -> dict:
    """Top-1 of ``model`` in fp32 and int8 (calibrated on ``calibration``), and each file's
    latency ratio to the fp32 ``teacher`` per batch size."""
    original = export_onnx(teacher, size, scratch / "original.onnx")
    fp32 = export_onnx(model, size, scratch / "fp32.onnx")
    int8 = quantize_onnx(fp32, calibration, scratch / "int8.onnx")
    row = {name: percent_equal(onnx_predictions(path, images), labels)
           for name, path in (("fp32", fp32), ("int8", int8))}
    for batch in batches:
        inputs = bench_input(size, batch)
        times = interleaved_seconds([onnx_runner(path, inputs, 1) for path in
                                     (original, fp32, int8)], warmup=3,
                                    repeats=100 if batch == 1 else 20, budget_s=60.0)
        row[f"fp32_ratio_b{batch}"] = latency_ratio(times[1], times[0])
        row[f"int8_ratio_b{batch}"] = latency_ratio(times[2], times[0])
    return row


def cifar_rows(seeds: list[int], scratch: Path) -> dict:
    bench = CifarBench()
    lossless, labels = bench.evals["lossless"]
    rows = {}
    for seed in seeds:
        images = bench.tensor(sample(bench.pool, per_class=5, seed=seed))
        if seed == seeds[0]:
            rows["resnet56 original"] = measure(bench.teacher, bench.teacher, bench.size, images,
                                                lossless, labels, (1, 64), scratch)
        plan = fxprune.plan(bench.teacher, Options(drop=Drop.blocks(*SCHEMES["3"]), seed=seed),
                            input_size=bench.size, progress=False)
        recovered = fxprune.execute(plan, images, progress=False).model
        rows[f"resnet56 3 blocks seed {seed}"] = measure(
            bench.teacher, recovered, bench.size, images, lossless, labels, (1, 64), scratch)
        print(seed, rows[f"resnet56 3 blocks seed {seed}"], flush=True)
    return rows


def imagenet_rows(scratch: Path) -> dict:
    bench = ImageNetBench()
    draw = torch.randperm(len(bench.pool), generator=torch.Generator().manual_seed(0))
    calibration = bench.images[bench.pool[draw[:100]]]
    return {"efficientnet-lite0 original": measure(
        bench.teacher, bench.teacher, bench.size, calibration, bench.images[bench.held],
        bench.labels[bench.held], (1,), scratch)}


def summarize(results: dict) -> str:
    lines = ["# int8 quantization calibrated on the tiny set", "",
             f"`{results.get('command', '.venv/bin/python tools/bench_quantize.py')}` — top-1 % "
             "of the fp32 and the int8 ONNX file (ONNX Runtime), latency ratios to the fp32 "
             "original (one thread, 10th percentiles); ResNet-56: 1,017 lossless CIFAR-10 test "
             "images, calibration = the 50 recovery images; EfficientNet-Lite0: 500 held-out "
             "ImageNet sample images, calibration = 100 others.", "",
             "| model | n | top-1 fp32 | top-1 int8 | latency fp32 b1 | latency int8 b1 | "
             "latency fp32 b64 | latency int8 b64 |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[str, list[dict]] = {}
    for name, row in results["cells"].items():
        groups.setdefault(name.split(" seed ")[0], []).append(row)
    for name, rows in groups.items():
        cells = [_mean_std([row[key] for row in rows]) if key in rows[0] else "n/a"
                 for key in ("fp32", "int8", "fp32_ratio_b1", "int8_ratio_b1", "fp32_ratio_b64",
                             "int8_ratio_b64")]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 2 if max(values) > 2 else 3
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/bench_quantize.py", argv)
    with tempfile.TemporaryDirectory(prefix="fxprune-bench-quantize-") as scratch:
        results["cells"].update(cifar_rows(args.seeds, Path(scratch)))
        file.save(results)
        results["cells"].update(imagenet_rows(Path(scratch)))
        file.save(results)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
