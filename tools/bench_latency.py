"""Reproduce the paper's CPU latency schemes as ratios, with ONNX Runtime on this machine.

Every model is what would ship: a compression plan's rewriting with no adapter, blocks
dropped (``Drop.blocks``) or filters pruned (``FilterPruning``: the "-50%" rows prune half the
filters of every prunable feature map, L1 norm), then folded (``folding``: BN into its conv),
exported to ONNX; the original is BN-folded too. Within a family all
variants are timed interleaved on the same seeded input and each is reported as its median
latency over the original's, beside its MAC ratio and the paper's ratios (Tables 1, 10 and 13:
one thread, batch 64, Xeon Gold 5220R). Absolute times are not comparable across machines;
ratios are.

A last group checks that recovery costs nothing at inference: ResNet-56-C with the plan's
adapters (both placements), moved away from the identity and folded, must export to the
same op histogram as the plain dropped network and run as fast (ratio ~1.00).

    .venv/bin/python tools/bench_latency.py            # full run, ~15-17 min on 2 cores
    .venv/bin/python tools/bench_latency.py --quick    # smoke run: tiny batches and repeats
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import fx, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune import load_model, trace  # noqa: E402
from fxprune.export import export_onnx, onnx_max_abs_diff, onnx_op_counts  # noqa: E402
from fxprune.latency import bench_input, cpu_name, onnx_runner, time_interleaved  # noqa: E402
from fxprune.macs import node_macs, total_macs  # noqa: E402
from fxprune.options import Drop, FilterPruning, Options, Placement, Recovery  # noqa: E402
from fxprune.passes import folding  # noqa: E402
from fxprune.plan import CompressionPlan  # noqa: E402
from fxprune.tracing import example_input  # noqa: E402
from tools.harness import run_record, write_results  # noqa: E402
from tests.helpers import randomize_adapters  # noqa: E402

IMAGENET = (3, 224, 224)
RESNET_SCHEMES = {"A": ["1.2"], "B": ["1.2", "2.2"], "C": ["1.2", "2.2", "3.2"]}
HALF_FILTERS = 0.5  # a scheme given as a float prunes that fraction of filters
RESNET56_C = ["1.2", "2.2", "3.2"]


@dataclass(frozen=True)
class Family:
    """A network and its schemes. ``paper_cpu_s`` / ``paper_macs`` are keyed by scheme label,
    ``""`` for the original. ``large_batch`` is the paper's 64 where a round of all variants
    stays under ~20 s on one core (VGG-16 at 64 would take ~60 s a round, so it gets 8)."""

    key: str
    name: str
    build: Callable[[], nn.Module]
    input_size: tuple[int, int, int]
    large_batch: int
    schemes: dict[str, list[str]]
    paper_cpu_s: dict[str, float] = field(default_factory=dict)
    paper_macs: dict[str, float] = field(default_factory=dict)


FAMILIES = [
    Family("resnet34", "ResNet-34", torchvision.models.resnet34, IMAGENET, 64,
           # "24%": the filter fraction whose MAC ratio (0.77) is the paper's ResNet-34-50%
           {**RESNET_SCHEMES, "50%": HALF_FILTERS, "24%": 0.24},
           {"": 6.60, "A": 6.03, "B": 5.72, "C": 5.15},
           {"": 3.66, "A": 3.43, "B": 3.20, "C": 2.97, "24%": 0.77 * 3.66}),
    Family("resnet50", "ResNet-50", torchvision.models.resnet50, IMAGENET, 64, RESNET_SCHEMES,
           {"": 12.13, "A": 11.21, "B": 10.65, "C": 10.20},
           {"": 4.09, "A": 3.87, "B": 3.65, "C": 3.43}),
    Family("mobilenet_v2", "MobileNetV2", torchvision.models.mobilenet_v2, IMAGENET, 64,
           {"A": ["3.2"], "B": ["3.2", "4.2"], "C": ["3.2", "4.2", "5.2"],
            "D": ["3.2", "4.2", "5.2", "6.2"]},
           {"": 3.90, "A": 3.65, "B": 3.52, "C": 3.34, "D": 3.27},
           {"": 300.79, "A": 289.80, "B": 279.49, "C": 256.80, "D": 241.32}),
    Family("vgg16", "VGG-16", torchvision.models.vgg16, IMAGENET, 8, RESNET_SCHEMES,
           {"": 30.91, "A": 24.66, "B": 21.32, "C": 18.41},
           {"": 15.47, "A": 13.62, "B": 11.77, "C": 9.92}),
    Family("resnet56", "CIFAR ResNet-56", lambda: load_model("cifar:resnet56").model, (3, 32, 32),
           64, {"C": RESNET56_C, "9 blocks": [f"{s}.{b}" for s in (1, 2, 3) for b in (2, 3, 4)],
                "50%": HALF_FILTERS}),
]
# Its variants are built by ``adapter_variants``: the plain dropped network is the reference.
ADAPTERS = Family("adapters", "CIFAR ResNet-56-C, recovered vs plain",
                  lambda: load_model("cifar:resnet56").model, (3, 32, 32), 64, {"C": RESNET56_C})


@dataclass(frozen=True)
class Variant:
    label: str  # "" for the reference every ratio divides by
    dropped: list[str] | float  # block ids, or the fraction of filters pruned
    onnx: Path
    macs: int


@dataclass(frozen=True)
class Settings:
    thread_counts: tuple[int, ...]
    warmup: dict[str, int]  # "small" (batch 1) / "large"
    repeats: dict[str, int]
    budget_s: dict[str, float]
    quick: bool


def _macs(gm: fx.GraphModule, size) -> int:
    return total_macs(node_macs(gm, [example_input(size)]))


def _plan(model: nn.Module, size, dropped: list[str] | float,
          recovery: Recovery | None = None) -> CompressionPlan:
    """Drop the blocks ``dropped``, or prune that fraction of every prunable map's filters."""
    options = Options(drop=None, filters=FilterPruning(dropped), recovery=recovery) \
        if isinstance(dropped, float) else Options(drop=Drop.blocks(*dropped), recovery=recovery)
    return fxprune.plan(model, options, input_size=size, progress=False)


def _rewritten(plan: CompressionPlan) -> fx.GraphModule:
    return plan.rewrite()


def _shipped(gm: fx.GraphModule, size, dropped: list[str] | float, label: str, folder: Path
             ) -> Variant:
    """``gm`` folded and exported."""
    gm = folding()(gm).graph_module
    path = export_onnx(gm, size, folder / f"{label or 'original'}.onnx".replace(" ", "_"))
    return Variant(label, dropped, path, _macs(gm, size))


def family_variants(family: Family, folder: Path) -> list[Variant]:
    model, size = family.build().eval(), family.input_size
    original = _shipped(trace(model, size), size, [], "", folder)
    return [original, *(_shipped(_rewritten(_plan(model, size, dropped)), size, dropped, label,
                                 folder) for label, dropped in family.schemes.items())]


def adapter_variants(family: Family, folder: Path) -> tuple[list[Variant], dict]:
    """The plain dropped network, and the same with random adapters folded (paper / cvpr
    sites); raises unless all export to the same op histogram."""
    model, size, dropped = family.build().eval(), family.input_size, family.schemes["C"]
    plans = {placement: _plan(model, size, dropped, Recovery(placement=placement))
             for placement in Placement}
    plain = _shipped(_rewritten(plans[Placement.CVPR].without_adapters()), size, dropped, "",
                     folder)
    variants, check = [plain], {"dropped": dropped, "plain_ops": onnx_op_counts(plain.onnx)}
    x = bench_input(size, batch=2, seed=1)
    for placement, plan in plans.items():
        gm = _rewritten(plan)
        randomize_adapters(gm, scale=0.3)
        unfolded = copy.deepcopy(gm)
        gm = folding()(gm).graph_module
        path = export_onnx(gm, size, folder / f"folded_{placement}.onnx")
        ops = onnx_op_counts(path)
        if ops != check["plain_ops"]:
            raise RuntimeError(f"folded ({placement}) ops {ops} != plain {check['plain_ops']}")
        with torch.no_grad():
            scale = unfolded(x).abs().max().item()
        error = onnx_max_abs_diff(unfolded, path, x) / scale
        check[placement] = {"adapters": len(plan.adapter_sites), "ops_identical": True,
                            "onnx_vs_unfolded_max_rel": error}
        variants.append(Variant(f"folded adapters ({placement})", dropped, path,
                                _macs(gm, size)))
    return variants, check


def time_group(variants: list[Variant], family: Family, threads: int, batch: int, regime: str,
               settings: Settings) -> list[dict]:
    """One interleaved round-robin over all variants; rows are ratios to ``variants[0]``."""
    inputs = bench_input(family.input_size, batch)
    runners = [onnx_runner(variant.onnx, inputs, threads) for variant in variants]
    timings = time_interleaved(runners, settings.warmup[regime], settings.repeats[regime],
                               settings.budget_s[regime])
    reference, base = timings[0], variants[0]
    rows = []
    for variant, timing in zip(variants[1:], timings[1:]):
        rows.append({
            "family": family.name,
            "scheme": variant.label, "dropped": variant.dropped, "threads": threads,
            "batch": batch, "runs": timing.runs, "latency_ms": timing.median_ms,
            "latency_iqr_ms": timing.iqr_ms, "reference_ms": reference.median_ms,
            "reference_iqr_ms": reference.iqr_ms,
            "latency_ratio": timing.median_ms / reference.median_ms,
            "macs": variant.macs, "macs_ratio": variant.macs / base.macs,
            "paper_latency_ratio": _ratio(family.paper_cpu_s, variant.label),
            "paper_macs_ratio": _ratio(family.paper_macs, variant.label)})
    return rows


def _ratio(table: dict[str, float], label: str) -> float | None:
    return table[label] / table[""] if label in table else None


def run_group(variants: list[Variant], family: Family, large_batch: int, settings: Settings,
              log) -> list[dict]:
    rows = []
    for threads in settings.thread_counts:
        for regime, batch in (("small", 1), ("large", large_batch)):
            start = time.perf_counter()
            rows += time_group(variants, family, threads, batch, regime, settings)
            log(f"  {threads} thread(s), batch {batch}: {time.perf_counter() - start:.0f} s")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    keys = [family.key for family in [*FAMILIES, ADAPTERS]]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batches 1 and 2, 1 warm-up, 3 repeats")
    parser.add_argument("--only", nargs="+", choices=keys, default=keys, metavar="KEY",
                        help=f"groups to run (default all: {' '.join(keys)})")
    parser.add_argument("--large-batch", type=int, help="override every family's large batch")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="ONNX Runtime thread counts (default 1 2)")
    parser.add_argument("--output", type=Path, help="results path without suffix (default "
                        "tools/results/latency, or latency_quick with --quick)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # torch only builds and exports; its threads stall on a busy box
    settings = (Settings((1, 2), {"small": 1, "large": 1}, {"small": 3, "large": 3},
                         {"small": 5.0, "large": 5.0}, quick=True) if args.quick else
                Settings(tuple(args.threads), {"small": 3, "large": 1}, {"small": 25, "large": 9},
                         {"small": 40.0, "large": 150.0}, quick=False))
    output = args.output or ROOT / "tools" / "results" / ("latency_quick" if args.quick
                                                          else "latency")
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started, rows, batches, adapter_check = time.perf_counter(), [], {}, None
    load_before = os.getloadavg()[0]
    for family in [f for f in [*FAMILIES, ADAPTERS] if f.key in args.only]:
        large = 2 if args.quick else args.large_batch or family.large_batch
        log(f"{family.name}: export")
        with tempfile.TemporaryDirectory(prefix=f"latency-{family.key}-") as folder:
            if family is ADAPTERS:
                variants, adapter_check = adapter_variants(family, Path(folder))
            else:
                variants = family_variants(family, Path(folder))
            rows += run_group(variants, family, large, settings, log)
        batches[family.name] = large
    meta = {**run_record("tools/bench_latency.py", argv), "cpu": cpu_name(),
            "cores": os.cpu_count(), "quick": settings.quick, "large_batch": batches,
            "warmup": settings.warmup,
            "repeats": settings.repeats, "budget_s": settings.budget_s,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "wall_s": round(time.perf_counter() - started)}
    write_latency_results(output, meta, rows, adapter_check)
    log(f"wrote {output}.md and {output}.json in {meta['wall_s']} s")


def write_latency_results(output: Path, meta: dict, rows: list[dict],
                          adapter_check: dict | None) -> None:
    """``meta``: ``run_record`` and the settings of the run."""
    optional = lambda value: "" if value is None else f"{value:.2f}"  # noqa: E731
    load_text = " / ".join(f"{load:.1f}" for load in meta["load_average"])
    lines = [
        "# CPU latency of compressed networks (ONNX Runtime)", "",
        f"`{meta['command']}`", "",
        f"{meta['cpu']} ({meta['cores']} cores, shared), torch {meta['versions']['torch']}, "
        f"onnxruntime {meta['versions']['onnxruntime']}; {meta['wall_s']} s; 1-min load "
        f"average {load_text} (before / after: with other processes on the cores, 2 threads "
        "gain little). Every model BN-folded "
        "and exported to ONNX; "
        "each family timed interleaved on one seeded input (median of "
        f"{meta['repeats']['small']} runs at batch 1, {meta['repeats']['large']} at the large "
        f"batch, after {meta['warmup']['small']} / {meta['warmup']['large']} warm-up rounds; "
        f"at most {meta['budget_s']['small']:.0f} / {meta['budget_s']['large']:.0f} s a group). "
        "Large batch per family: " + ", ".join(f"{name} {batch}" for name, batch
                                               in meta["large_batch"].items())
        + ". Ratio = this ÷ original. Paper ratios: one thread, batch 64, Xeon Gold 5220R "
        "(Tables 1, 10, 13).", "",
        "| family | scheme | compression | threads | batch | ms (IQR) | original ms (IQR) | "
        "latency ratio | MAC ratio | paper latency ratio | paper MAC ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['family']} | {row['scheme']} | {_scheme_text(row['dropped'])} | "
            f"{row['threads']} | {row['batch']} | {row['latency_ms']:.2f} "
            f"({row['latency_iqr_ms']:.2f}) | {row['reference_ms']:.2f} "
            f"({row['reference_iqr_ms']:.2f}) | **{row['latency_ratio']:.3f}** | "
            f"{row['macs_ratio']:.3f} | {optional(row['paper_latency_ratio'])} | "
            f"{optional(row['paper_macs_ratio'])} |")
    if adapter_check:
        lines += ["", "Recovered-style ResNet-56-C: adapters at the `drop_sites` of "
                  f"{', '.join(adapter_check['dropped'])}, set to I + 0.3·G/√C, folded "
                  "(`folding`). The reference of its rows is the plain dropped network. "
                  "ONNX op histogram of every folded model == plain: "
                  f"{adapter_check['plain_ops']}."]
        for placement in ("paper", "cvpr"):
            check = adapter_check[placement]
            lines.append(f"- {placement}: {check['adapters']} adapters; folded ONNX vs unfolded "
                         f"torch max rel. error {check['onnx_vs_unfolded_max_rel']:.1e}")
    write_results(output, {"rows": rows, "adapter_check": adapter_check}, "\n".join(lines),
                  meta)


def _scheme_text(dropped: list[str] | float) -> str:
    if isinstance(dropped, float):
        return f"{dropped:.0%} of prunable filters (L1)"
    return "drop " + ", ".join(dropped) if dropped else ""


if __name__ == "__main__":
    main()
