"""Finetuning a compressed network on the tiny set after (or instead of) adapter recovery.

* ``"ce-mse"`` (paper v1, Eq. 4): ``CE(student logits, labels) + β·MSE(student, teacher
  penultimate features)``, β = 100, SGD lr 1e-4 (momentum 0.9), batch 256, 100 epochs, random
  crop + flip. All parameters train; BN keeps its running statistics (batch statistics of a
  handful of images would be noise).
* ``"mse"``: the label-free variant, ``β·MSE`` on the penultimate features only.
* ``"mir"`` (the CVPR'23 code): MSE on the pre-pooling feature map, all parameters trainable,
  BN in train mode.
* ``"kd"``: label-free distillation of the logits, ``KL(softmax(teacher) ‖ softmax(student))``,
  all parameters, BN keeps its running statistics; Adam, lr 2e-5, minibatches of 32, 300
  steps. Every step sees new inputs, which the teacher labels for free: a crop + flip of each
  image (unless ``augment=False``), always blended with another image of the minibatch
  (``fxprune.recovery.views.blend``; a minibatch of one image stays as it is). The
  adapters of a block drop fit the features stage by stage and are linear; this trains what
  they cannot reach, against the output that matters. CIFAR-10 ResNet-56, 3 blocks dropped,
  50 images: see ``tools/results/recovery_ablation.md``.

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
from fxprune.graph import input_name, module_of, named_modules, output_node
from fxprune.meta import kept_channels, stand_in
from fxprune.recovery.fit import channels_last, set_batchnorm_training, trainable
from fxprune.recovery.views import blend
from fxprune.segments import segment

OBJECTIVES = ("ce-mse", "mse", "mir", "kd")
# The paper's Eq. 4 schedule (SGD with momentum 0.9), and the distillation's (Adam).
PAPER_SCHEDULE = dict(optimizer="sgd", lr=1e-4, batch_size=256, epochs=100, max_steps=None)
SCHEDULES = {"ce-mse": PAPER_SCHEDULE, "mse": PAPER_SCHEDULE, "mir": PAPER_SCHEDULE,
             "kd": dict(optimizer="adam", lr=2e-5, batch_size=32, epochs=10_000, max_steps=300)}


@dataclass(frozen=True)
class FinetuneConfig:
    """A finetune; the optimizer settings left ``None`` are the objective's (``SCHEDULES``),
    resolved when the config is made: ``dataclasses.replace(config, objective=...)`` keeps the
    first objective's, so build a new config for another objective. ``max_steps`` bounds the
    optimizer steps whatever the set size (``kd``: 300 unless given)."""

    objective: str = "ce-mse"
    beta: float = 100.0
    lr: float | None = None
    momentum: float = 0.9
    batch_size: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    optimizer: str | None = None  # "sgd" | "adam"
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown finetune objective '{self.objective}' (use {OBJECTIVES})")
        for name, value in SCHEDULES[self.objective].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"finetune optimizer must be 'sgd' or 'adam', not '{self.optimizer}'")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or \
                (self.max_steps is not None and self.max_steps < 1):
            raise ValueError(f"invalid finetune configuration {self}")


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


class _Objective:
    """The two segments a finetune runs (the teacher's target, the student's outputs) and the
    loss between them."""

    def __init__(self, teacher: fx.GraphModule, student: fx.GraphModule,
                 config: FinetuneConfig):
        self.config = config
        source = input_name(teacher)
        if config.objective == "kd":
            self.teacher = segment(teacher.eval(), [source], [_logits_name(teacher)])
            self.student = segment(student, [source], [_logits_name(student)])
            self.kept = None
            return
        feature = pre_pooling(teacher) if config.objective == "mir" else penultimate(teacher)
        student_feature = stand_in(student, feature)
        self.student = segment(student, [source], [student_feature, _logits_name(student)])
        self.teacher = segment(teacher.eval(), [source], [feature])
        # a feature on a pruned residual stream is compared at the channels it kept
        self.kept = next(kept_channels(node) for node in student.graph.nodes
                         if node.name == student_feature)

    def loss(self, batch: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(batch)
            target = target if self.kept is None else target[:, self.kept]
        if self.config.objective == "kd":
            return F.kl_div(F.log_softmax(self.student(batch), 1), F.log_softmax(target, 1),
                            log_target=True, reduction="batchmean")
        features, logits = self.student(batch)
        loss = self.config.beta * F.mse_loss(features, target)
        if self.config.objective == "ce-mse":
            return loss + F.cross_entropy(logits, labels)
        if self.config.objective == "mir":
            return loss / self.config.beta  # the CVPR'23 code uses the plain feature MSE
        return loss


def _optimizer(parameters: list[nn.Parameter], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum)


def _inputs(images: torch.Tensor, config: FinetuneConfig,
            generator: torch.Generator) -> torch.Tensor:
    """A minibatch as it is trained on: augmented, and for ``kd`` blended as well."""
    if config.augment:
        images = augment(images, generator)
    if config.objective == "kd":
        images = blend(images, generator)
    return images.contiguous(memory_format=torch.channels_last)


def finetune(teacher: fx.GraphModule, student: fx.GraphModule, images: torch.Tensor,
             labels: torch.Tensor | None, config: FinetuneConfig = FinetuneConfig(),
             progress: bool = True, masks: Mapping[str, torch.Tensor] | None = None
             ) -> list[float]:
    """Train all of ``student``'s parameters in place, each one named in ``masks`` kept zero
    where its mask is; returns the loss of every epoch."""
    if config.objective == "ce-mse" and labels is None:
        raise FxpruneError("finetune 'ce-mse' needs labelled images; use 'kd', 'mse' or 'mir' "
                           "for an unlabelled set")
    objective = _Objective(teacher, student, config)
    generator = torch.Generator().manual_seed(config.seed)
    parameters = list(student.parameters())
    named = dict(student.named_parameters())
    unknown = sorted(set(masks or {}) - set(named))
    if unknown:
        raise PreconditionError(f"masks name no parameter of the student: {', '.join(unknown)}")
    masked = [(named[name], mask.to(named[name])) for name, mask in (masks or {}).items()]
    optimizer = _optimizer(parameters, config)
    history: list[float] = []
    steps_left = config.max_steps if config.max_steps is not None else float("inf")
    epochs = tqdm(range(config.epochs), desc=f"finetune {config.objective}", leave=False,
                  disable=not progress or None)
    with trainable(student, parameters), channels_last(teacher, student):
        for _ in epochs:
            if steps_left <= 0:
                break
            set_batchnorm_training(student, config.objective == "mir")
            order = torch.randperm(len(images), generator=generator)
            total, seen = 0.0, 0
            for start in range(0, len(images), config.batch_size):
                if steps_left <= 0:
                    break
                index = order[start:start + config.batch_size]
                loss = objective.loss(_inputs(images[index], config, generator),
                                      None if labels is None else labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for parameter, mask in masked:
                        parameter.mul_(mask)
                steps_left -= 1
                total, seen = total + loss.item() * len(index), seen + len(index)
            history.append(total / seen)
            epochs.set_postfix(loss=f"{history[-1]:.4g}")
    student.eval()
    return history
