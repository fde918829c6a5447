"""``fxprune bench``: latency, MACs and params of a model or an exported ONNX file, optionally
timed interleaved against another one (``--vs``) so their ratio is robust to machine drift.

With ONNX Runtime (the default) a model spec is exported first and costed from the exported
graph, exactly as an ``.onnx`` file is, so ``model --vs file.onnx`` compares like with like.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import fx

from fxprune.commands.common import add_model_arguments
from fxprune.errors import FxpruneError
from fxprune.export import export_onnx, onnx_input_size, onnx_macs, onnx_params
from fxprune.latency import (Timing, bench_input, interleaved_seconds, onnx_runner,
                             latency_ratio, torch_runner)
from fxprune.macs import count_params, node_macs, total_macs
from fxprune.models import load_model
from fxprune.summary import format_count
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


def register(commands) -> None:
    parser = commands.add_parser(
        "bench", help="latency, MACs and params of a model or ONNX file, optionally vs another")
    add_model_arguments(parser, metavar="MODEL_OR_ONNX", help=(
        "a model spec (as for inspect), an .onnx file, or a directory holding model.onnx "
        "(and report.json with its input_size)"))
    parser.add_argument("--vs", metavar="OTHER", help="time interleaved against this model "
                                                      "spec, .onnx file or directory")
    parser.add_argument("--batch", type=_at_least(1), default=1)
    parser.add_argument("--threads", type=_at_least(1), default=1, help="intra-op threads")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    parser.add_argument("--repeats", type=_at_least(1), default=20, help="timed runs of each")
    parser.add_argument("--warmup", type=_at_least(0), default=3,
                        help="untimed runs of each first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def _at_least(minimum: int):
    """argparse type for an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'")
        return value
    return parse


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fxprune-bench-") as scratch:
        candidates = [resolve(args.model, args, Path(scratch) / "model.onnx", args.weights)]
        if args.vs:
            candidates.append(resolve(args.vs, args, Path(scratch) / "vs.onnx"))
        sizes = {candidate.input_size for candidate in candidates}
        if len(sizes) > 1:
            raise FxpruneError("the two models take different inputs ("
                               + " vs ".join(_size_text(c.input_size) for c in candidates)
                               + "); give --input-size")
        inputs = bench_input(candidates[0].input_size, args.batch)
        runners = [onnx_runner(c.onnx, inputs, args.threads) if args.runtime == "onnxruntime"
                   else torch_runner(c.module, inputs, args.threads) for c in candidates]
        samples = interleaved_seconds(runners, args.warmup, args.repeats, None)
    timings = [Timing.of(times) for times in samples]
    ratio = latency_ratio(samples[0], samples[1]) if len(samples) > 1 else None
    report = _report(args, candidates, timings, ratio)
    print(json.dumps(report) if args.json else _table(args, candidates, timings, report))
    return 0


def resolve(spec: str, args: argparse.Namespace, export_path: Path,
            weights: str | None = None) -> Candidate:
    """What ``spec`` names, ready for ``args.runtime``; a model spec for onnxruntime is
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
        if args.runtime == "torch":
            raise FxpruneError(f"--runtime torch needs a model spec, not the ONNX file '{path}'")
        if weights:
            raise FxpruneError("--weights applies to a model spec, not to an ONNX file")
        return _from_onnx(spec, path, args.input_size or report_size)
    loaded = load_model(spec, weights)
    size = args.input_size or loaded.input_size
    gm = trace(loaded.model, size, leaf_modules=args.leaf)
    if args.runtime == "torch":
        macs = total_macs(node_macs(gm, [example_input(size)]))
        return Candidate(spec, size, macs, count_params(gm), module=gm)
    return _from_onnx(spec, export_onnx(gm, size, export_path), size)


def _from_onnx(name: str, path: Path, wanted: tuple[int, ...] | None) -> Candidate:
    """Static input dims of the file win; ``wanted`` fills symbolic ones and must agree."""
    static = onnx_input_size(path)
    if static and wanted and tuple(wanted) != static:
        raise FxpruneError(f"'{path}' takes {_size_text(static)} inputs, not "
                           f"{_size_text(wanted)}")
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


def _size_text(size) -> str:
    return "x".join(map(str, size))


def _report(args: argparse.Namespace, candidates: list[Candidate], timings: list[Timing],
            ratio: float | None) -> dict:
    this, timing = candidates[0], timings[0]
    report = {"model": this.name, "runtime": args.runtime, "threads": args.threads,
              "batch": args.batch, "input_size": list(this.input_size), "runs": timing.runs,
              "latency_ms": timing.median_ms, "latency_iqr_ms": timing.iqr_ms,
              "macs": this.macs, "params": this.params}
    if len(candidates) == 2:
        other, other_timing = candidates[1], timings[1]
        report.update({"vs": other.name, "vs_latency_ms": other_timing.median_ms,
                       "vs_latency_iqr_ms": other_timing.iqr_ms, "vs_macs": other.macs,
                       "vs_params": other.params, "latency_ratio": ratio,
                       "macs_ratio": this.macs / other.macs})
    return report


def _table(args: argparse.Namespace, candidates: list[Candidate], timings: list[Timing],
           report: dict) -> str:
    rows = [("", "latency ms", "IQR ms", "MACs", "params")]
    rows += [(c.name, f"{t.median_ms:.2f}", f"{t.iqr_ms:.2f}", format_count(c.macs),
              format_count(c.params)) for c, t in zip(candidates, timings)]
    if "latency_ratio" in report:
        rows.append(("ratio", f"{report['latency_ratio']:.3f}", "",
                     f"{report['macs_ratio']:.3f}", ""))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[0]) if column == 0 else cell.rjust(widths[column])
                       for column, cell in enumerate(row)).rstrip() for row in rows]
    threads = f"{args.threads} thread" + ("s" if args.threads > 1 else "")
    lines.append(f"{args.runtime}, {threads}, batch {args.batch}, input "
                 f"{_size_text(candidates[0].input_size)}: median of {timings[0].runs} runs "
                 f"after {args.warmup} warm-up" + (", interleaved" if len(timings) > 1 else ""))
    return "\n".join(lines)
