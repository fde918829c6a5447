"""The whole job after planning: compress, evaluate, export, quantize, time, report.

``run(plan, images, ...)`` executes a plan and, as asked, scores every model on evaluation
images (top-1 and agreement with the original), writes ``model.onnx`` / ``model.int8.onnx`` /
``model.pt2`` / ``report.json`` / ``report.md`` into a folder, and times the models with ONNX
Runtime. ``fxprune compress`` and ``fxprune demo`` are this function plus loading by name
(``fxprune.named``).
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fxprune.errors import FxpruneError, FxpruneWarning
from fxprune.evaluate import onnx_predictions, percent_equal, predictions
from fxprune.execute import CompressResult, execute
from fxprune.export import export_onnx, onnx_max_abs_diff
from fxprune.latency import Timing, bench_input, interleaved_seconds, latency_ratio, onnx_runner
from fxprune.options import Options
from fxprune.plan import CompressionPlan, plan
from fxprune.quantize import QUANTIZED_FILE, quantize_onnx
from fxprune.render import setbacks, write_report
from fxprune.report import ModelRow, QuantizedRow, Report
from fxprune.saving import MODEL_FILE

LATENCY_BUDGET_S = 20.0  # the report's latencies are a guide; `fxprune bench` measures properly


@dataclass(frozen=True)
class Evaluation:
    """Held-out images (normalised like the tiny set) and their labels, if any."""

    images: torch.Tensor
    labels: torch.Tensor | None = None


@dataclass(frozen=True)
class RunSettings:
    """How the job runs: where training runs, whether an int8 file is made, and the ONNX
    Runtime batch and threads of the latencies."""

    device: str = "cpu"
    quantize: bool = False
    bench_batch: int = 1
    bench_threads: int = 1
    progress: bool = True


def run(plan: CompressionPlan, images: torch.Tensor, labels: torch.Tensor | None = None, *,
        evaluation: Evaluation | None = None, out: Path | None = None,
        settings: RunSettings = RunSettings()) -> CompressResult:
    """Execute ``plan`` on the tiny set ``images`` (``labels`` only for a ``ce-mse``
    finetune); with ``evaluation``, score every model; with ``out`` (an existing folder),
    export, quantize, time and write the report there."""
    result = execute(plan, images, labels, settings.device, settings.progress)
    report = result.report
    reference = _evaluate(result, evaluation) if evaluation is not None else None
    if out is not None:
        shipped = {"compressed": export_onnx(result.model, result.input_size,
                                             out / "model.onnx")}
        if evaluation is not None:
            report.onnx_max_abs_diff = onnx_max_abs_diff(result.model, shipped["compressed"],
                                                         evaluation.images[:64])
        if settings.quantize and _quantize(report, shipped, images, out) \
                and evaluation is not None:
            _score(report.models["quantized"], onnx_predictions(
                shipped["quantized"], evaluation.images), reference, evaluation.labels)
        _time(result, shipped, settings)
        result.save(out / MODEL_FILE)
    if evaluation is not None:
        # the report names its evaluation pool only once a named job adds its source
        report.setbacks = setbacks({**report.as_json(),
                                    "evaluation": {"images": len(evaluation.images)}})
        for warning in report.setbacks:
            warnings.warn(warning, FxpruneWarning, stacklevel=2)
    return result


def write(report: Report, out: Path) -> None:
    """``report.json`` and ``report.md`` (with its trade-off plot) into ``out``."""
    content = report.as_json()
    (out / "report.json").write_text(json.dumps(content, indent=1))
    write_report(content, out)


def _evaluate(result: CompressResult, evaluation: Evaluation) -> torch.Tensor:
    """Every model's top-1 (None without labels) and agreement with the original; returns
    the original's predictions."""
    reference = predictions(result.teacher, evaluation.images)
    for key, model in result.stages().items():
        predicted = reference if model is result.teacher else \
            predictions(model, evaluation.images)
        _score(result.report.models[key], predicted, reference, evaluation.labels)
    return reference


def _score(row: ModelRow, predicted: torch.Tensor, reference: torch.Tensor,
           labels: torch.Tensor | None) -> None:
    row.top1 = percent_equal(predicted, labels) if labels is not None else None
    row.agreement = percent_equal(predicted, reference)
    row.evaluated = True


def _quantize(report: Report, shipped: dict[str, Path], images: torch.Tensor, out: Path
              ) -> bool:
    """``model.int8.onnx`` from the shipped file, calibrated on the tiny set, into ``shipped``
    and the report; a failure only warns (returns False): the fp32 outputs stand on their
    own."""
    tick = time.perf_counter()
    try:
        shipped["quantized"] = quantize_onnx(shipped["compressed"], images, out / QUANTIZED_FILE)
    except FxpruneError as error:
        warnings.warn(f"no int8 file: {error}", FxpruneWarning, stacklevel=3)
        return False
    seconds = time.perf_counter() - tick
    report.phases["quantize"] = seconds
    report.seconds += seconds
    compressed = report.models["compressed"]
    report.models["quantized"] = QuantizedRow(compressed.macs, compressed.params,
                                              calibration_images=len(images))
    return True


def _time(result: CompressResult, shipped: dict[str, Path], settings: RunSettings) -> None:
    """Every model's ONNX Runtime latency (the stages' files exported here unless shipped),
    timed interleaved on one input, round by round; ratios to the original's."""
    report = result.report
    with tempfile.TemporaryDirectory(prefix="fxprune-latency-") as scratch:
        paths = {key: shipped.get(key) or
                 export_onnx(model, result.input_size, Path(scratch) / f"{key}.onnx")
                 for key, model in result.stages().items()}
        paths.update(shipped)
        inputs = bench_input(result.input_size, settings.bench_batch)
        runners = [onnx_runner(path, inputs, settings.bench_threads) for path in paths.values()]
        times = dict(zip(paths, interleaved_seconds(runners, warmup=2, repeats=30,
                                                     budget_s=LATENCY_BUDGET_S)))
    report.latency = {"runtime": "onnxruntime", "batch": settings.bench_batch,
                      "threads": settings.bench_threads}
    report.torch_threads = torch.get_num_threads()
    for key, seconds in times.items():
        timing, row = Timing.of(seconds), report.models[key]
        row.latency_ms, row.latency_iqr_ms = timing.median_ms, timing.iqr_ms
        row.latency_ratio = latency_ratio(seconds, times["original"])


def compress(model: nn.Module, images: torch.Tensor, input_size: Sequence[int],
             options: Options = Options(), *, labels: torch.Tensor | None = None,
             device: str = "cpu", leaf_modules: Sequence[type | str] = (),
             progress: bool = True) -> CompressResult:
    """``plan`` then ``execute`` in one call: ``model`` (left untouched) compressed as
    ``options`` say, recovered from the normalised NCHW ``images``."""
    planned = plan(model, options, input_size=input_size, images=images,
                   leaf_modules=leaf_modules, progress=progress)
    return execute(planned, images, labels, device, progress)
