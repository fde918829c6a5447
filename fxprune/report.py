"""What a compression did and what it cost, typed: ``Report`` is filled by ``fxprune.execute``
(the compression) and ``fxprune.run`` (evaluation, export, int8, latency), and serializes to
``report.json``; ``fxprune.render`` turns that JSON into report.md and the trade-off plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fxprune.recovery.practise import StepReport
from fxprune.selection import Selection


@dataclass
class ModelRow:
    """One model of the comparison: size, and once measured, accuracy and latency."""

    macs: int
    params: int
    top1: float | None = None  # None without labels
    agreement: float | None = None  # % of images where it predicts what the original does
    latency_ms: float | None = None  # median
    latency_iqr_ms: float | None = None
    latency_ratio: float | None = None  # to the original, ``fxprune.latency.latency_ratio``
    evaluated: bool = field(default=False, repr=False)

    def as_json(self) -> dict[str, Any]:
        row = {"macs": self.macs, "params": self.params}
        if self.evaluated:
            row.update(top1=self.top1, agreement=self.agreement)
        if self.latency_ms is not None:
            row.update(latency_ms=self.latency_ms, latency_iqr_ms=self.latency_iqr_ms,
                       latency_ratio=self.latency_ratio)
        return row


@dataclass
class QuantizedRow(ModelRow):
    """The int8 ONNX file, calibrated on the tiny set."""

    format: str = "int8 QDQ, per-channel weights"
    calibration_images: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"format": self.format, "calibration_images": self.calibration_images,
                **super().as_json()}


@dataclass
class Scheme:
    """What was compressed, beside the dropped blocks (each None when not asked)."""

    decouple: dict[str, Any] | None = None  # method, convs
    prune_filters: dict[str, Any] | None = None  # ratio, kept
    prune_streams: dict[str, Any] | None = None  # ratio, kept
    sparsity: dict[str, Any] | None = None  # target, masked_convs, weights_zero


@dataclass
class Source:
    """Where the model and the images came from (set by a job that loads them by name)."""

    model: str
    weights: str | None
    data: str
    tiny_set: dict[str, Any]  # images, per_class, seed, labelled
    evaluation: dict[str, Any]  # pool, images, labelled


@dataclass
class Report:
    input_size: list[int]
    images: int
    seed: int
    drop: list[str]
    scheme: Scheme
    recover: str  # "practise" | "none"
    finetune: str
    placement: str | None
    adapters: int
    schedule: str | None
    init: str | None
    views: int | None  # augmented views of the tiny set the recovery trained on
    device: str
    plan: dict[str, Any]
    models: dict[str, ModelRow]  # original, pruned, [recovered], compressed, [quantized]
    recovery_steps: list[StepReport]
    phases: dict[str, float]
    seconds: float
    auto: Selection | None = None
    source: Source | None = None
    onnx_max_abs_diff: float | None = None
    latency: dict[str, Any] | None = None  # runtime, batch, threads
    torch_threads: int | None = None
    setbacks: list[str] = field(default_factory=list)
    seconds_total: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The ``report.json`` content."""
        report = {
            "input_size": self.input_size, "images": self.images, "seed": self.seed,
            "drop": self.drop, "auto": self.auto.as_report() if self.auto else None,
            "placement": self.placement, "adapters": self.adapters,
            **asdict(self.scheme), "recover": self.recover, "finetune": self.finetune,
            "schedule": self.schedule, "init": self.init, "views": self.views,
            "device": self.device,
            "plan": self.plan,
            **{key: row.as_json() for key, row in self.models.items()},
            "recovery_steps": [vars(step) for step in self.recovery_steps],
            "phases": self.phases, "seconds": self.seconds}
        if self.source is not None:
            report.update(asdict(self.source))
        optional = {"onnx_max_abs_diff": self.onnx_max_abs_diff, "latency": self.latency,
                    "torch_threads": self.torch_threads, "seconds_total": self.seconds_total}
        report.update({key: value for key, value in optional.items() if value is not None})
        if self.models["compressed"].evaluated:
            report["setbacks"] = self.setbacks
        return report
