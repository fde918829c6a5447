"""report.md of a compress run, rendered from its report.json content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fxprune.summary import format_count


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render_report(report: dict[str, Any]) -> str:
    original_macs = report["original"]["macs"]
    lines = [
        f"# fxprune compress: {report.get('model', 'model')}",
        "",
        f"Dropped blocks {', '.join(report['drop'])}; recovery `{report['recover']}`"
        + (f" ({report['schedule']}, {report['adapters']} adapters at `{report['placement']}` "
           "sites)" if report["adapters"] else "")
        + f"; finetune `{report['finetune']}`; {report['images']} tiny-set images, "
          f"seed {report['seed']}.",
        "",
        "| model | top-1 % | agreement with original % | MACs | MAC ratio | params |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("original", "pruned", "compressed"):
        row = report[key]
        lines.append(f"| {key} | {_percent(row.get('top1'))} | "
                     f"{_percent(row.get('agreement'))} | {format_count(row['macs'])} | "
                     f"{row['macs'] / original_macs:.3f} | {format_count(row['params'])} |")
    evaluation = report.get("evaluation")
    if evaluation:
        lines += ["", f"Evaluated on {evaluation['images']} images of `{evaluation['pool']}`."]
    lines += ["", f"Compression took {report['seconds']:.1f} s "
              + ", ".join(f"({phase} {seconds:.1f} s)" for phase, seconds in
                          report["phases"].items()) + "."]
    if "onnx_max_abs_diff" in report:
        lines.append(f"ONNX Runtime vs PyTorch max abs difference: "
                     f"{report['onnx_max_abs_diff']:.2e}.")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(render_report(report))
