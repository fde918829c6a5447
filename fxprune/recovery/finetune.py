"""Finetuning a compressed network on the tiny set after (or instead of) adapter recovery.

* ``"ce-mse"`` (paper v1, Eq. 4): ``CE(student logits, labels) + β·MSE(student, teacher
  penultimate features)``, β = 100, SGD lr 1e-4 (momentum 0.9), batch 256, 100 epochs, random
  crop + flip. All parameters train; BN keeps its running statistics (batch statistics of a
  handful of images would be noise).
* ``"mse"``: the label-free variant, ``β·MSE`` on the penultimate features only.
* ``"mir"`` (the CVPR'23 code): MSE on the pre-pooling feature map, all parameters trainable,
  BN in train mode.

A masked (unstructured-pruned) network keeps its zeros: ``masks`` maps parameter names to
0/1 tensors multiplied into the parameters after every step, whatever the optimizer does.

The penultimate feature is the input of the last ``nn.Linear`` (the classifier); the
pre-pooling feature is the output of the last stage. Both are found from the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from fxprune.analysis.structure import find_structure
from fxprune.datasets import augment
from fxprune.errors import FxpruneError, PreconditionError
from fxprune.graph import module_of, named_modules, output_node
from fxprune.meta import kept_channels, stand_in
from fxprune.recovery.fit import channels_last, set_batchnorm_training, trainable
from fxprune.segments import segment

OBJECTIVES = ("ce-mse", "mse", "mir")


@dataclass(frozen=True)
class FinetuneConfig:
    objective: str = "ce-mse"
    beta: float = 100.0
    lr: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 256
    epochs: int = 100
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown finetune objective '{self.objective}' (use {OBJECTIVES})")


def penultimate(gm: fx.GraphModule) -> str:
    """Name of the node feeding the last ``nn.Linear`` (the classifier's input)."""
    modules = named_modules(gm)
    linears = [node for node in gm.graph.nodes if isinstance(module_of(node, modules), nn.Linear)]
    if not linears:
        raise PreconditionError("no nn.Linear classifier found for the penultimate feature")
    return linears[-1].args[0].name


def pre_pooling(gm: fx.GraphModule) -> str:
    """Name of the last stage's output node, which the mir finetune mimics."""
    try:
        return find_structure(gm).last_exit
    except PreconditionError as error:
        raise PreconditionError(f"{error}, so the mir finetune has no stage output to mimic; "
                                "use --finetune ce-mse or mse") from None


def _logits_name(gm: fx.GraphModule) -> str:
    result = output_node(gm.graph).args[0]
    if not isinstance(result, fx.Node):
        raise PreconditionError("finetuning needs a network with a single tensor output")
    return result.name


def finetune(teacher: fx.GraphModule, student: fx.GraphModule, images: torch.Tensor,
             labels: torch.Tensor | None, config: FinetuneConfig = FinetuneConfig(),
             progress: bool = True, masks: Mapping[str, torch.Tensor] | None = None
             ) -> list[float]:
    """Train all of ``student``'s parameters in place, each one named in ``masks`` kept zero
    where its mask is; returns the loss of every epoch."""
    if config.objective == "ce-mse" and labels is None:
        raise FxpruneError("finetune 'ce-mse' needs labelled images; use 'mse' or 'mir' for an "
                           "unlabelled set")
    feature = pre_pooling(teacher) if config.objective == "mir" else penultimate(teacher)
    source = next(node.name for node in teacher.graph.nodes if node.op == "placeholder")
    student_feature = stand_in(student, feature)
    student_outputs = [student_feature, _logits_name(student)]
    # a feature on a pruned residual stream is compared at the channels it kept
    kept = next(kept_channels(node) for node in student.graph.nodes
                if node.name == student_feature)
    student_net = segment(student, [source], student_outputs)
    teacher_net = segment(teacher.eval(), [source], [feature])
    generator = torch.Generator().manual_seed(config.seed)
    parameters = list(student.parameters())
    named = dict(student.named_parameters())
    unknown = sorted(set(masks or {}) - set(named))
    if unknown:
        raise PreconditionError(f"masks name no parameter of the student: {', '.join(unknown)}")
    masked = [(named[name], mask.to(named[name])) for name, mask in (masks or {}).items()]
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum)
    history: list[float] = []
    epochs = tqdm(range(config.epochs), desc=f"finetune {config.objective}", leave=False,
                  disable=not progress or None)
    images = images.contiguous(memory_format=torch.channels_last)
    with trainable(student, parameters), channels_last(teacher, student):
        for _ in epochs:
            set_batchnorm_training(student, config.objective == "mir")
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for start in range(0, len(images), config.batch_size):
                index = order[start:start + config.batch_size]
                batch = images[index]
                if config.augment:
                    batch = augment(batch, generator)
                with torch.no_grad():
                    target = teacher_net(batch)
                    target = target if kept is None else target[:, kept]
                features, logits = student_net(batch)
                loss = config.beta * F.mse_loss(features, target)
                if config.objective == "ce-mse":
                    loss = loss + F.cross_entropy(logits, labels[index])
                elif config.objective == "mir":
                    loss = loss / config.beta  # the CVPR'23 code uses the plain feature MSE
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for parameter, mask in masked:
                        parameter.mul_(mask)
                total += loss.item() * len(index)
            history.append(total / len(images))
            epochs.set_postfix(loss=f"{history[-1]:.4g}")
    student.eval()
    return history
