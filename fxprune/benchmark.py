"""Latency, MACs and params of a model or an exported ONNX file, optionally timed interleaved
against another one so their ratio is robust to machine drift (``fxprune bench``).

With ONNX Runtime (the default) a model spec is exported first and costed from the exported
graph, exactly as an ``.onnx`` file is, so ``model`` vs ``file.onnx`` compares like with like.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import fx

from fxprune.errors import FxpruneError
from fxprune.export import export_onnx, onnx_input_size, onnx_macs, onnx_params
from fxprune.latency import (Timing, bench_input, interleaved_seconds, onnx_runner,
                             latency_ratio, torch_runner)
from fxprune.macs import count_params, node_macs, total_macs
from fxprune.models import load_model
from fxprune.tracing import example_input, trace

RUNTIMES = ("onnxruntime", "torch")


@dataclass(frozen=True)
class Candidate:
    """One thing to time: an ONNX file (onnxruntime) or a traced module (torch)."""

    name: str
    input_size: tuple[int, ...]
    macs: int  # per image
    params: int
    onnx: Path | None = None
    module: fx.GraphModule | None = None


@dataclass(frozen=True)
class BenchSettings:
    """How to time: the runtime, batch, threads, warm-up and timed runs; ``input_size`` and
    ``leaf`` (modules kept opaque when tracing) for model specs."""

    runtime: str = "onnxruntime"
    batch: int = 1
    threads: int = 1
    warmup: int = 3
    repeats: int = 20
    input_size: tuple[int, int, int] | None = None
    leaf: tuple[str, ...] = ()


@dataclass(frozen=True)
class BenchResult:
    candidates: list[Candidate]
    timings: list[Timing]
    report: dict  # the JSON ``fxprune bench --json`` prints


def bench(specs: Sequence[tuple[str, str | None]], settings: BenchSettings) -> BenchResult:
    """Time the (spec, weights) pairs — one, or a model and the one it is compared with —
    interleaved on one input."""
    with tempfile.TemporaryDirectory(prefix="fxprune-bench-") as scratch:
        candidates = [resolve(spec, settings, Path(scratch) / f"model{index}.onnx", weights)
                      for index, (spec, weights) in enumerate(specs)]
        sizes = {candidate.input_size for candidate in candidates}
        if len(sizes) > 1:
            raise FxpruneError("the two models take different inputs ("
                               + " vs ".join(size_text(c.input_size) for c in candidates)
                               + "); give --input-size")
        inputs = bench_input(candidates[0].input_size, settings.batch)
        runners = [onnx_runner(c.onnx, inputs, settings.threads)
                   if settings.runtime == "onnxruntime"
                   else torch_runner(c.module, inputs, settings.threads) for c in candidates]
        samples = interleaved_seconds(runners, settings.warmup, settings.repeats, None)
    timings = [Timing.of(times) for times in samples]
    ratio = latency_ratio(samples[0], samples[1]) if len(samples) > 1 else None
    return BenchResult(candidates, timings, _report(settings, candidates, timings, ratio))


def resolve(spec: str, settings: BenchSettings, export_path: Path,
            weights: str | None = None) -> Candidate:
    """What ``spec`` names, ready for ``settings.runtime``; a model spec for onnxruntime is
    exported to ``export_path``."""
    path, report_size = Path(spec), None
    if path.is_dir():
        report_size = _report_input_size(path / "report.json")
        path = path / "model.onnx"
        if not path.is_file():
            raise FxpruneError(f"directory '{spec}' has no model.onnx")
    elif spec.endswith(".onnx") and not path.is_file():
        raise FxpruneError(f"no such ONNX file '{spec}'")
    elif ":" not in spec and not path.exists():
        raise FxpruneError(f"'{spec}' is neither an .onnx file, a directory holding model.onnx "
                           "nor a model spec (torchvision:<builder>, cifar:resnet<depth>, "
                           "file.py:callable)")
    if path.suffix == ".onnx":
        if settings.runtime == "torch":
            raise FxpruneError(f"--runtime torch needs a model spec, not the ONNX file '{path}'")
        if weights:
            raise FxpruneError("--weights applies to a model spec, not to an ONNX file")
        return _from_onnx(spec, path, settings.input_size or report_size)
    loaded = load_model(spec, weights)
    size = settings.input_size or loaded.input_size
    gm = trace(loaded.model, size, leaf_modules=settings.leaf)
    if settings.runtime == "torch":
        macs = total_macs(node_macs(gm, [example_input(size)]))
        return Candidate(spec, size, macs, count_params(gm), module=gm)
    return _from_onnx(spec, export_onnx(gm, size, export_path), size)


def _from_onnx(name: str, path: Path, wanted: tuple[int, ...] | None) -> Candidate:
    """Static input dims of the file win; ``wanted`` fills symbolic ones and must agree."""
    static = onnx_input_size(path)
    if static and wanted and tuple(wanted) != static:
        raise FxpruneError(f"'{path}' takes {size_text(static)} inputs, not "
                           f"{size_text(wanted)}")
    size = static or wanted
    if size is None:
        raise FxpruneError(f"'{path}' has a symbolic input size; give --input-size C,H,W")
    return Candidate(name, tuple(size), onnx_macs(path, size), onnx_params(path), onnx=path)


def _report_input_size(path: Path) -> tuple[int, ...] | None:
    """``input_size`` from a compress output's report.json, when there is one."""
    if not path.is_file():
        return None
    try:
        size = json.loads(path.read_text()).get("input_size")
    except (OSError, ValueError, AttributeError) as error:
        raise FxpruneError(f"cannot read input_size from '{path}': {error}") from error
    return tuple(size) if size else None


def size_text(size) -> str:
    return "x".join(map(str, size))


def _report(settings: BenchSettings, candidates: list[Candidate], timings: list[Timing],
            ratio: float | None) -> dict:
    this, timing = candidates[0], timings[0]
    report = {"model": this.name, "runtime": settings.runtime, "threads": settings.threads,
              "batch": settings.batch, "input_size": list(this.input_size), "runs": timing.runs,
              "latency_ms": timing.median_ms, "latency_iqr_ms": timing.iqr_ms,
              "macs": this.macs, "params": this.params}
    if len(candidates) == 2:
        other, other_timing = candidates[1], timings[1]
        report.update({"vs": other.name, "vs_latency_ms": other_timing.median_ms,
                       "vs_latency_iqr_ms": other_timing.iqr_ms, "vs_macs": other.macs,
                       "vs_params": other.params, "latency_ratio": ratio,
                       "macs_ratio": this.macs / other.macs})
    return report
