"""Carrying out a ``CompressionPlan``: rewrite, recover, finetune, fold.

``execute(plan, images)`` runs the plan's passes on a copy of its teacher, trains the adapters
on the tiny set (label-free), optionally finetunes, and folds every adapter away. The result
holds the shipped model, the plain pruned model (the same plan without adapters), the
teacher, and the ``Report`` of what was done and what it cost.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import fx

from fxprune.errors import FxpruneError
from fxprune.graph import adapter_nodes, masked_nodes, named_modules, parameter_dtype
from fxprune.macs import count_params, node_macs, total_macs
from fxprune.passes import (FactorizeConvs, MaskWeights, PruneCoupledMaps, PruneFilters,
                            folding)
from fxprune.plan import CompressionPlan
from fxprune.recovery.finetune import finetune as run_finetune
from fxprune.recovery.practise import StepReport, recover as run_recovery
from fxprune.report import ModelRow, Report, Scheme
from fxprune.resolve import zero_fraction
from fxprune.tracing import example_input


@dataclass
class CompressResult:
    model: fx.GraphModule  # folded: no adapter, no BN after a conv
    pruned: fx.GraphModule  # the same plan without adapters, nothing recovered (BN folded)
    teacher: fx.GraphModule
    input_size: tuple[int, int, int]
    report: Report
    recovered: fx.GraphModule | None = None  # folded after recovery, before a finetune

    def stages(self) -> dict[str, fx.GraphModule]:
        """The models a report compares: original, pruned, recovered (when a finetune
        followed the recovery) and compressed, the one shipped."""
        models = {"original": self.teacher, "pruned": self.pruned}
        if self.recovered is not None:
            models["recovered"] = self.recovered
        return {**models, "compressed": self.model}

    def export_onnx(self, path: str | Path) -> Path:
        """ONNX (opset 17, dynamic batch), checked with ``onnx.checker``."""
        from fxprune.export import export_onnx
        return export_onnx(self.model, self.input_size, path)

    def save(self, path: str | Path) -> Path:
        """A ``.pt2`` archive that ``fxprune.load`` runs without the original model's code."""
        from fxprune.saving import save
        return save(self.model, self.input_size, path)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; an error names what is wrong with it."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise FxpruneError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FxpruneError(f"device {device!r} asked for, but CUDA is not available here "
                           "(torch.cuda.is_available() is False); use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise FxpruneError(f"device {device!r} is not supported (use cpu, cuda or cuda:N)")
    return resolved


def model_row(gm: fx.GraphModule, input_size) -> ModelRow:
    example = example_input(input_size, dtype=parameter_dtype(gm))
    return ModelRow(total_macs(node_macs(gm, [example])), count_params(gm))


class _Training:
    """The models that recovery and finetuning train, moved to ``device`` and back."""

    def __init__(self, plan: CompressionPlan, student: fx.GraphModule, images, labels, device):
        self.plan, self.device = plan, device
        self.teacher, self.student = plan.teacher.to(device), student.to(device)
        self.images = images.to(device)
        self.labels = labels.to(device) if labels is not None else None
        self.phases: dict[str, float] = {}
        self.recovered: fx.GraphModule | None = None
        # the engine's recovery settings for this tiny set (its size decides the views)
        self.config = plan.recovery.config(plan.seed, len(images)) if plan.recovery else None

    def recover(self, progress: bool) -> list[StepReport]:
        if self.config is None:
            return []
        tick = time.perf_counter()
        steps = run_recovery(self.teacher, self.student, self.images, self.config,
                             progress=progress)
        self.phases["recover"] = time.perf_counter() - tick
        return steps

    def finetune(self, masks: dict[str, torch.Tensor], progress: bool) -> None:
        if self.plan.finetune is None:
            return
        if self.plan.recovery is not None:
            self.recovered = folding()(copy.deepcopy(self.student)).graph_module.eval().cpu()
        tick = time.perf_counter()
        run_finetune(self.teacher, self.student, self.images, self.labels,
                     replace(self.plan.finetune, seed=self.plan.seed), progress=progress,
                     masks=masks)
        self.phases["finetune"] = time.perf_counter() - tick

    def fold(self) -> fx.GraphModule:
        self.teacher.cpu()
        tick = time.perf_counter()
        model = folding()(self.student.cpu()).graph_module.eval()
        self.phases["fold"] = time.perf_counter() - tick
        return model


def execute(plan: CompressionPlan, images: torch.Tensor, labels: torch.Tensor | None = None,
            device: str | torch.device = "cpu", progress: bool = True) -> CompressResult:
    """Compress as ``plan`` says, recovering from the normalised NCHW ``images`` (``labels``
    only for a ``ce-mse`` finetune). Training runs on ``device``; the returned models are on
    the CPU and the plan's teacher is left as it was."""
    start = time.perf_counter()
    device = resolve_device(device)
    student = plan.rewrite(images)
    pruned = _folded(plan.without_adapters(), images)
    masks = _zeros_to_keep(plan, student) if plan.recovery is None else {}
    adapters = len(adapter_nodes(student)) + len(masked_nodes(student)) \
        if plan.recovery is not None else 0
    training = _Training(plan, student, images, labels, device)
    steps = training.recover(progress)
    training.finetune(masks, progress)
    model = training.fold()
    size = plan.input_size
    models = {"original": model_row(plan.teacher, size), "pruned": model_row(pruned, size)}
    if training.recovered is not None:
        models["recovered"] = model_row(training.recovered, size)
    models["compressed"] = model_row(model, size)
    report = Report(
        input_size=list(size), images=len(images), seed=plan.seed, drop=list(plan.blocks),
        scheme=_scheme(plan, model), adapters=adapters,
        recover="practise" if plan.recovery is not None else "none",
        finetune=plan.finetune.objective if plan.finetune is not None else "none",
        placement=str(plan.placement) if plan.placement else None,
        schedule=str(plan.recovery.schedule) if plan.recovery else None,
        init=training.config.init if training.config else None,
        views=training.config.views if training.config else None,
        device=str(device), plan=plan.as_json(), models=models, recovery_steps=steps,
        phases=training.phases, seconds=plan.seconds + time.perf_counter() - start,
        auto=plan.selection)
    return CompressResult(model, pruned, plan.teacher, size, report, training.recovered)


def _zeros_to_keep(plan: CompressionPlan, student: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Per masked conv's weight, where it is non-zero: without adapters the plan folds each
    mask into its conv (keeping the conv's target), and a baseline finetune must keep those
    zeros."""
    masked = set(plan.arguments(MaskWeights).get("convs", ()))
    modules = named_modules(student)
    return {f"{node.target}.weight": modules[node.target].weight != 0
            for node in student.graph.nodes if node.name in masked}


def _folded(plan: CompressionPlan, images: torch.Tensor) -> fx.GraphModule:
    return folding()(plan.rewrite(images)).graph_module.eval()


def _scheme(plan: CompressionPlan, model: fx.GraphModule) -> Scheme:
    """The report's record of every compression beside the drop, from the plan's steps."""
    options = plan.options
    factorized = plan.arguments(FactorizeConvs)
    filters, streams = plan.arguments(PruneFilters), plan.arguments(PruneCoupledMaps)
    masked = plan.arguments(MaskWeights)
    return Scheme(
        decouple={"method": str(options.decouple), "convs": factorized["convs"]} if factorized
        else None,
        prune_filters={"ratio": options.filters.ratio, "kept": filters["keep"]}
        if filters else None,
        prune_streams={"ratio": options.streams.ratio, "kept": streams["keep"]}
        if streams else None,
        sparsity={"target": masked["sparsity"], "masked_convs": masked["convs"],
                  "weights_zero": zero_fraction(model, masked["convs"])} if masked else None)
