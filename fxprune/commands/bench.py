"""``fxprune bench``: latency, MACs and params of a model or an exported ONNX file, optionally
timed interleaved against another one (``--vs``) so their ratio is robust to machine drift.

With ONNX Runtime (the default) a model spec is exported first and costed from the exported
graph, exactly as an ``.onnx`` file is, so ``model --vs file.onnx`` compares like with like.
"""

from __future__ import annotations

import argparse
import json

from fxprune.benchmark import RUNTIMES, BenchResult, BenchSettings, bench, size_text
from fxprune.commands.common import add_model_arguments
from fxprune.summary import format_count

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
    settings = BenchSettings(args.runtime, args.batch, args.threads, args.warmup, args.repeats,
                             args.input_size, tuple(args.leaf))
    specs = [(args.model, args.weights)] + ([(args.vs, None)] if args.vs else [])
    result = bench(specs, settings)
    print(json.dumps(result.report) if args.json else _table(args, result))
    return 0


def _table(args: argparse.Namespace, result: BenchResult) -> str:
    candidates, timings, report = result.candidates, result.timings, result.report
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
                 f"{size_text(candidates[0].input_size)}: median of {timings[0].runs} runs "
                 f"after {args.warmup} warm-up" + (", interleaved" if len(timings) > 1 else ""))
    return "\n".join(lines)
