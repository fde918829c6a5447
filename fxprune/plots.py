"""Accuracy-vs-latency trade-off plots (PNG), drawn without pyplot's global state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Point:
    label: str
    latency_ms: float
    accuracy: float  # top-1 %, or agreement with the original % when there are no labels
    series: str  # points of one series share a colour and are joined by a line


def tradeoff_plot(points: Sequence[Point], path: str | Path, title: str,
                  accuracy_label: str = "top-1 %", latency_label: str = "latency (ms)",
                  connect: bool = False) -> Path:
    """Scatter of ``points`` (x: latency, y: accuracy), each labelled, one colour per series
    (joined in order of latency when ``connect``); the upper left is better."""
    figure = Figure(figsize=(6.4, 4.4), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for series in dict.fromkeys(point.series for point in points):
        members = sorted((p for p in points if p.series == series), key=lambda p: p.latency_ms)
        axes.plot([p.latency_ms for p in members], [p.accuracy for p in members],
                  "o-" if connect else "o",
                  label=series, alpha=0.85)
        for point in members:
            axes.annotate(point.label, (point.latency_ms, point.accuracy), fontsize=8,
                          xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel(latency_label)
    axes.set_ylabel(accuracy_label)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if len({point.series for point in points}) > 1:
        axes.legend(fontsize=8)
    path = Path(path)
    figure.savefig(path)
    return path
