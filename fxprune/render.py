"""report.md and the trade-off plot of a compress run, rendered from its report.json content;
and the merged view of several runs (``fxprune report``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fxprune.plots import Point, tradeoff_plot
from fxprune.summary import format_count

PLOT_FILE = "tradeoff.png"
MODELS = ("original", "pruned", "recovered", "compressed", "quantized")
MERGED_SERIES = {"compressed": "compressed", "quantized": "int8", "pruned": "pruned, no recovery"}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def model_label(report: dict[str, Any], key: str) -> str:
    """What a row is: the shipped model is 'recovered' or 'finetuned (<objective>)', its
    quantized file 'int8'."""
    if key == "quantized":
        return "int8"
    if key != "compressed":
        return key
    if report["finetune"] != "none":
        return f"finetuned ({report['finetune']})"
    return "recovered" if report["recover"] == "practise" else "compressed"


def accuracy_of(report: dict[str, Any], key: str) -> tuple[float, str]:
    """Top-1 where the evaluation set has labels, else agreement with the original."""
    top1 = report[key].get("top1")
    return (top1, "top-1 %") if top1 is not None else (report[key]["agreement"],
                                                       "agreement with the original %")


SETBACK_POINTS = 0.5  # smaller drops are a few images of a typical evaluation set: noise


def setbacks(report: dict[str, Any]) -> list[str]:
    """A warning for each step fitted to the tiny set (recovery, finetune, int8 calibration)
    that left the model at least ``SETBACK_POINTS`` less accurate on the evaluation images
    than it found it (``accuracy_of``): a tiny set too small or unlike those images can make
    a step fit it at their expense."""
    recovery = ("recovery", "--recover none")
    finetune = (f"the {report['finetune']} finetune", "--finetune none")
    if "recovered" in report:
        steps = [(*recovery, "pruned", "recovered"), (*finetune, "recovered", "compressed")]
    elif report["recover"] != "none":
        steps = [(*recovery, "pruned", "compressed")]
    elif report["finetune"] != "none":
        steps = [(*finetune, "pruned", "compressed")]
    else:
        steps = []
    if "quantized" in report:
        steps.append(("int8 quantization", "ship the fp32 model.onnx", "compressed",
                      "quantized"))
    warnings = []
    for step, without, before, after in steps:
        (old, measure), (new, _) = accuracy_of(report, before), accuracy_of(report, after)
        if old - new >= SETBACK_POINTS:
            warnings.append(f"{step} lowered {measure.removesuffix(' %')} on the "
                            f"{report['evaluation']['images']} evaluation images from "
                            f"{old:.2f} to {new:.2f} %: the tiny set may be too small or "
                            "unlike them; try a larger one (--images/--shots), or "
                            f"{without}")
    return warnings


def _latency_text(report: dict[str, Any]) -> str:
    latency = report.get("latency")
    if not latency:
        return "latency"
    return (f"{latency['runtime']} latency, batch {latency['batch']}, {latency['threads']} "
            f"thread(s)")


def _scheme(report: dict[str, Any]) -> str:
    """What was compressed: dropped blocks and/or pruned filters."""
    parts = [f"Dropped blocks {', '.join(report['drop'])}"] if report["drop"] else []
    pruning = report.get("prune_filters")
    if pruning:
        kept = pruning["kept"]
        ratio = f"{pruning['ratio']:.0%} of the" if pruning["ratio"] is not None else "the"
        parts.append(f"pruned {ratio} filters of {len(kept)} feature maps (L1 norm)")
    streams = report.get("prune_streams")
    if streams:
        ratio = f"{streams['ratio']:.0%} of the" if streams["ratio"] is not None else "the"
        parts.append(f"pruned {ratio} channels of {len(streams['kept'])} residual streams "
                     "(L1 norm)")
    decoupled = report.get("decouple")
    if decoupled:
        parts.append(f"factorized {len(decoupled['convs'])} convs ({decoupled['method']})")
    sparsity = report.get("sparsity")
    if sparsity:
        parts.append(f"masked {len(sparsity['masked_convs'])} convs to "
                     f"{sparsity['weights_zero']:.1%} zero weights (magnitude)")
    return "; ".join(parts)


def _auto_section(auto: dict[str, Any]) -> list[str]:
    """How ``--drop auto`` chose: the budget, the check, every candidate's scores."""
    lines = [f"## Automatic block choice ({auto['strategy']})", "",
             f"Budget: latency x{auto['budget']} of the original's {auto['original_ms']:.3f} ms; "
             f"chosen {', '.join(auto['blocks'])}: predicted x{auto['predicted_ratio']:.3f} "
             f"from the blocks' own latencies, measured x{auto['measured_ratio']:.3f}; "
             f"recoverability of the set {auto['recoverability']:.4g} ({auto['evaluations']} "
             f"brief recoveries, {auto['seconds']:.0f} s).", "",
             "Recoverability: pre-pooling feature MSE relative to the teacher's after a brief "
             "adapter recovery (lower is better); marginal: its increase when added to the "
             "blocks chosen before.", "",
             "| block | latency share | alone | marginal | round | why |",
             "|---|---|---|---|---|---|"]
    for candidate in sorted(auto["candidates"],
                            key=lambda c: (c["round"] is None, c["round"] or 0, c["block"])):
        marginal = "" if candidate["marginal"] is None else f"{candidate['marginal']:.4g}"
        lines.append(f"| {candidate['block']} | {candidate['saved']:.1%} | "
                     f"{candidate['alone']:.4g} | {marginal} | {candidate['round'] or ''} | "
                     f"{candidate['reason']} |")
    return lines


def render_report(report: dict[str, Any], plot: str | None = None) -> str:
    original = report["original"]
    lines = [
        f"# fxprune compress: {report.get('model', 'model')}",
        "",
        _scheme(report) + f"; recovery `{report['recover']}`"
        + (f" ({report['schedule']}, {report['adapters']} adapters"
           + (f", block-drop adapters at `{report['placement']}` sites" if report["placement"]
              else "") + (f", {report['views']} augmented views" if report.get("views")
                          else "") + ")" if report["adapters"] else "")
        + f"; finetune `{report['finetune']}`; {report['images']} tiny-set images, "
          f"seed {report['seed']}.",
        "",
        "| model | top-1 % | agreement with original % | latency ms | latency ratio | MACs | "
        "MAC ratio | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in (key for key in MODELS if key in report):
        row = report[key]
        latency, ratio = "n/a", "n/a"
        if "latency_ms" in row:
            latency = f"{row['latency_ms']:.2f} ± {row['latency_iqr_ms']:.2f}"
            ratio = f"{row['latency_ratio']:.3f}"
        lines.append(f"| {model_label(report, key)} | {_percent(row.get('top1'))} | "
                     f"{_percent(row.get('agreement'))} | {latency} | {ratio} | "
                     f"{format_count(row['macs'])} | {row['macs'] / original['macs']:.3f} | "
                     f"{format_count(row['params'])} |")
    evaluation = report.get("evaluation")
    if evaluation:
        lines += ["", f"Evaluated on {evaluation['images']} images of `{evaluation['pool']}`."]
    if report.get("latency"):
        lines.append(f"Latency: median ± IQR, {_latency_text(report)}; ratio: of the 10th "
                     "percentiles, the least disturbed runs (`fxprune bench` measures longer).")
    lines += ["", f"Compression took {report['seconds']:.1f} s ("
              + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in
                          report["phases"].items()) + ")."]
    if "onnx_max_abs_diff" in report:
        lines.append(f"ONNX Runtime vs PyTorch max abs difference: "
                     f"{report['onnx_max_abs_diff']:.2e}.")
    for warning in report.get("setbacks", []):
        lines += ["", f"**Warning:** {warning}"]
    if report.get("auto"):
        lines += ["", *_auto_section(report["auto"])]
    if plot:
        lines += ["", f"![accuracy vs latency]({plot})"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], folder: Path) -> None:
    """``folder``/report.md, with ``folder``/tradeoff.png when latencies were measured."""
    plot = None
    labels = {key: model_label(report, key) for key in MODELS
              if key in report and "latency_ms" in report[key]}
    run_points = [Point(label, report[key]["latency_ms"], accuracy_of(report, key)[0], label)
                  for key, label in labels.items()]
    if run_points:
        tradeoff_plot(run_points, folder / PLOT_FILE,
                      f"{report.get('model', 'model')}: accuracy vs latency",
                      accuracy_of(report, "original")[1], f"{_latency_text(report)} (ms)")
        plot = PLOT_FILE
    (folder / "report.md").write_text(render_report(report, plot))


def merge_reports(reports: Sequence[tuple[str, dict[str, Any]]], folder: Path) -> str:
    """One table and one trade-off plot over several compress runs (``name``, report); each
    run contributes its shipped model (and its int8 file, if any) and its pruned model, each
    model spec its original once.
    Writes ``folder``/tradeoff.png and returns the markdown (also written as report.md)."""
    lines = ["# fxprune runs compared", "",
             "| run | model | scheme | recover | finetune | images | top-1 % | agreement % | "
             "latency ms | latency ratio | MAC ratio | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    plot_points: list[Point] = []
    seen_originals: set[str] = set()
    accuracy_labels = set()
    for name, report in reports:
        original = report["original"]
        shipped = [key for key in ("compressed", "quantized") if key in report]
        for key in shipped:
            row = report[key]
            ratio = f"{row['latency_ratio']:.3f}" if "latency_ms" in row else "n/a"
            latency = f"{row['latency_ms']:.2f}" if "latency_ms" in row else "n/a"
            scheme = _scheme(report) + ("; int8" if key == "quantized" else "")
            lines.append(f"| {name} | {report.get('model', '?')} | {scheme} | "
                         f"{report['recover']} | {report['finetune']} | {report['images']} | "
                         f"{_percent(row.get('top1'))} | {_percent(row.get('agreement'))} | "
                         f"{latency} | {ratio} | {row['macs'] / original['macs']:.3f} | "
                         f"{report['seconds']:.0f} |")
        if "latency_ms" not in report["compressed"]:
            continue
        model = report.get("model", "model")
        accuracy_labels.add(accuracy_of(report, "compressed")[1])
        plot_points += [Point(name, report[key]["latency_ms"], accuracy_of(report, key)[0],
                              MERGED_SERIES[key]) for key in (*shipped, "pruned")]
        if model not in seen_originals:
            seen_originals.add(model)
            plot_points.append(Point(model, original["latency_ms"],
                                     accuracy_of(report, "original")[0], "original"))
    if plot_points:
        tradeoff_plot(plot_points, folder / PLOT_FILE, "accuracy vs latency",
                      " / ".join(sorted(accuracy_labels)),
                      "latency (ms, as each run measured it)", connect=True)
        lines += ["", f"![accuracy vs latency]({PLOT_FILE})"]
    markdown = "\n".join(lines) + "\n"
    (folder / "report.md").write_text(markdown)
    return markdown
