"""What the stage-wise and joint schedules mimic: the teacher's stage outputs on the tiny set.

The teacher's features depend on the teacher and the images only, not on the student. A caller
that recovers many students of one teacher from the same images (``fxprune.selection`` scores
dozens of candidate drops) computes them once with ``teacher_stages`` and passes them to every
``recover`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from fxprune.analysis.structure import find_structure
from fxprune.graph import input_name
from fxprune.meta import kept_channels, stand_in
from fxprune.segments import run_batched, segment


@dataclass(frozen=True)
class TeacherStages:
    """The teacher's stage-output nodes, in graph order, and its features there on a set of
    images (channels-last)."""

    outputs: tuple[str, ...]
    features: tuple[torch.Tensor, ...]


def stage_outputs(teacher: fx.GraphModule) -> tuple[str, ...]:
    """The teacher's stage-output nodes in graph order (nested stages share their region's)."""
    return tuple(dict.fromkeys(stage.output for stage in find_structure(teacher).stages))


def teacher_stages(teacher: fx.GraphModule, images: torch.Tensor, batch_size: int = 256,
                   outputs: tuple[str, ...] | None = None) -> TeacherStages:
    """The teacher's features at ``outputs`` (default: its stage outputs) on ``images``."""
    outputs = stage_outputs(teacher) if outputs is None else outputs
    features = run_batched(segment(teacher, [input_name(teacher)], list(outputs)), [images],
                           batch_size)
    return TeacherStages(outputs, tuple(feature.contiguous(memory_format=torch.channels_last)
                                        for feature in features))


def student_targets(student: fx.GraphModule, stages: TeacherStages
                    ) -> tuple[list[str], list[torch.Tensor]]:
    """The student's nodes that carry the teacher's stage outputs, and the teacher's features
    there — at the channels the student's output still carries where it lies on a pruned
    residual stream."""
    nodes = {node.name: node for node in student.graph.nodes}
    outputs = [stand_in(student, name) for name in stages.outputs]
    kept = [kept_channels(nodes[name]) for name in outputs]
    return outputs, [feature if channels is None else feature[:, channels].contiguous(
        memory_format=torch.channels_last) for feature, channels in zip(stages.features, kept)]
