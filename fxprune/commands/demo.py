"""``fxprune demo``: the main job on the embedded default. CIFAR-10 ResNet-56, the paper's
blocks dropped, recovered label-free from 50 CIFAR-10 images, folded, exported and timed."""

from __future__ import annotations

import argparse
from pathlib import Path

from fxprune.commands.common import add_threads_argument, atomic_output
from fxprune.download import cifar10_folder, cifar_resnet_weights
from fxprune.job import RunSettings
from fxprune.named import NamedJob, compress_named
from fxprune.options import Drop, Options
from fxprune.report import ModelRow, Report
from fxprune.threads import torch_threads

MODEL = "cifar:resnet56"


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="compress the CIFAR-10 ResNet-56 with 50 images (without a data folder, "
                     "downloads it and CIFAR-10 on first use)")
    parser.add_argument("--out", type=Path, default=Path("fxprune-demo"),
                        help="output folder (default: fxprune-demo)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--images", type=int, default=50, help="tiny-set size (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", metavar="SPEC",
                        help="CIFAR-10 pool (default: cifar10, from the data folder or "
                             "downloaded), e.g. cifar10:cifar/cifar-10-batches-py")
    parser.add_argument("--weights",
                        help="ResNet-56 weights (default: from the data folder or downloaded)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    add_threads_argument(parser)
    parser.set_defaults(run=run)


def _inputs(args: argparse.Namespace) -> tuple[str, str]:
    """The pool spec and weights file: those given, else the data folder's, else downloaded
    (both before the work starts, so that a missing file fails in seconds)."""
    weights = args.weights or str(cifar_resnet_weights(56))
    if args.data is None:
        cifar10_folder()
    return args.data or "cifar10", weights


def run(args: argparse.Namespace) -> int:
    data, weights = _inputs(args)
    job = NamedJob(MODEL, data, images=args.images, weights=weights,
                   options=Options(drop=Drop.rule(), seed=args.seed),
                   settings=RunSettings(device=args.device, quantize=True, bench_batch=64))
    print(f"fxprune demo: {MODEL}, dropping the paper's blocks, recovering from {args.images} "
          f"unlabelled images of {data} (a minute or two on a laptop CPU)")
    with atomic_output(args.out, args.force) as staging, torch_threads(args.threads):
        report = compress_named(job, staging)
    print(summary(report, args.out))
    return 0


def summary(report: Report, out: Path) -> str:
    models = report.models
    original, pruned, shipped = models["original"], models["pruned"], models["compressed"]
    int8 = models.get("quantized")  # absent when ONNX Runtime could not quantize (a warning)
    latency = report.latency

    def accuracy(row: ModelRow) -> str:  # an unlabelled --data pool has no top-1
        return f"{row.top1:.2f}%" if row.top1 is not None else \
            f"{row.agreement:.2f}% agreement"

    lines = [
        f"dropped blocks {', '.join(report.drop)}; {report.adapters} adapters trained "
        "and folded away",
        f"top-1 on {report.source.evaluation['images']} test images: original "
        f"{accuracy(original)} -> dropped, no recovery {accuracy(pruned)} -> recovered "
        f"{accuracy(shipped)}",
        f"MACs {original.macs / 1e6:.2f}M -> {shipped.macs / 1e6:.2f}M "
        f"(x{shipped.macs / original.macs:.3f})",
        f"ONNX Runtime latency (batch {latency['batch']}, {latency['threads']} thread): "
        f"{original.latency_ms:.1f} ms -> {shipped.latency_ms:.1f} ms "
        f"(x{shipped.latency_ratio:.3f})"]
    if int8 is not None:
        lines.append(f"int8, calibrated on the same images: {accuracy(int8)}, "
                     f"{int8.latency_ms:.1f} ms (x{int8.latency_ratio:.3f})")
    files = ["model.onnx", *(["model.int8.onnx"] if int8 is not None else []), "model.pt2",
             "report.md", "tradeoff.png", "report.json"]
    lines.append(f"took {report.seconds_total:.0f} s (recovery "
                 f"{report.phases.get('recover', 0):.0f} s); outputs in {out}: "
                 + ", ".join(files))
    return "\n".join(lines)
