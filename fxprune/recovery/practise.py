"""PRACTISE recovery: train the adapters of a compressed *student* so that its features mimic
the original *teacher*'s on a tiny unlabelled image set. Only adapters train; every original
weight stays frozen.

Three schedules, all label-free:

* ``"joint"``: all adapters train together; the loss is the sum over stages of the MSE between
  the student's and the teacher's stage outputs, so an adapter early in the network also
  learns from what it does to later stages.
* ``"stagewise"``: the network is cut at the stage outputs found by the structure
  analysis. Stage by stage, the adapters inside a stage are trained jointly so that the
  student's stage output matches the teacher's; the next stage starts from the student's
  recovered features, so it also corrects what the previous stage left over. This is the
  CVPR'23 code's joint objective applied per stage. (A stage output on a pruned residual
  stream is compared with the teacher's at the channels it kept, here and in ``"joint"``.)
* ``"layerwise"`` (paper v1, Sec. 3.4): adapters one at a time in topological order; an
  adapter before conv ``c`` is trained so that ``c``'s output matches the teacher's ``c``
  output, starting from the student's features with all earlier adapters already trained. It
  supports input-side adapters (the paper's placement) only. A pruned feature map (Fig. 2,
  ``PruneFilters``) is one step: its two adapters and its BN train together so that the
  consumer conv's output matches the teacher's; a pruned residual stream
  (``PruneCoupledMaps``) likewise, against every consumer's output.

Every schedule trains the BN layers of pruned feature maps with the adapters (their affine
parameters; their statistics only with ``bn="train"``), and the adapter ``U`` inside every
masked conv (``MaskWeights``; the closed form does not cover it).

``init="lstsq"`` first sets every adapter, one at a time in topological order, to the exact
least-squares optimum of its own layer-wise objective (``fxprune.recovery.lstsq``): an adapter
before conv ``c`` so that ``c``'s output matches the teacher's, an adapter after conv ``c`` so
that its output matches the teacher's ``c`` output. With ``fit=None`` that is the whole
recovery for those adapters, and what the closed form does not cover (masked convs, a pruned
map's shrinking adapter and BN, adapters too wide for the Gram) trains layer-wise with
``CLOSED_FORM_FALLBACK``; otherwise the schedule's gradient steps start from there.

A student node is paired with the teacher node of the same name; where a dropped block's
output was, ``stand_in`` names the student node that carries that value now.

BN layers are kept in eval mode (running statistics fixed) unless ``bn="train"``, the paper's
choice, where they normalise with batch statistics and update their running statistics while
the adapters train. Before any training, ``bn_stats`` may re-estimate the running statistics
of the damaged student on the tiny set (``fxprune.recovery.bn_stats``), and ``views`` adds
augmented copies of the tiny set as training pairs (``fxprune.recovery.views``). With
``holdout``, a seeded random part of the set is kept out of every fit (and of BN
re-estimation and views) and judges it instead of the training loss (``fit``'s validation).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from fxprune.errors import PreconditionError
from fxprune.graph import (adapter_nodes, conv_of, input_name, masked_nodes, named_modules,
                           recovery_nodes)
from fxprune.meta import adapter_site, prune_group, stand_in
from fxprune.recovery.bn_stats import BN_STATS, reestimate_batchnorm
from fxprune.recovery.fit import (RECOVERY_BATCH, FitConfig, channels_last, fit,
                                  set_batchnorm_training)
from fxprune.recovery.frozen import training_segment
from fxprune.recovery.layer_groups import layer_groups
from fxprune.recovery.lstsq import solve_after_conv, solve_before_conv
from fxprune.recovery.targets import (TeacherStages, stage_outputs, student_targets,
                                      teacher_stages)
from fxprune.recovery.views import with_views
from fxprune.segments import run_batched, segment

SCHEDULES = ("joint", "stagewise", "layerwise")
INITS = ("identity", "lstsq")
# Side of the largest closed-form Gram solved (64 channels and a bias: 4160² float64, 138 MB);
# larger adapters train by gradient instead.
MAX_GRAM_SIDE = 64 * 65
# Gradient steps, layer-wise, for what the closed form leaves (fit=None): masked convs, the
# shrinking adapter and BN of a pruned map, adapters too wide for the Gram.
CLOSED_FORM_FALLBACK = FitConfig(lr=1e-3, max_steps=300, patience=20)


@dataclass(frozen=True)
class RecoveryConfig:
    schedule: str = "stagewise"
    # twice the rate for half the steps of lr 1e-3 x 300: Adam covers the same distance from
    # the identity in half the time (ResNet-56 rule, 50 images, 5 seeds: top-1 91.98 ± 0.39,
    # 91.90 ± 0.40 before). Minibatches of 32, not 64: the distance is in steps, and a step
    # costs half (same, 14.3 s instead of 24.0 s: 91.98 ± 0.32)
    fit: FitConfig | None = field(default_factory=lambda: FitConfig(
        lr=2e-3, max_steps=150, patience=20, batch_size=RECOVERY_BATCH))
    bn: str = "eval"  # "eval" | "train"
    bn_stats: str = "keep"  # "keep" | "tiny" | "paired": BN statistics before training
    init: str = "identity"  # "identity" | "lstsq"
    eval_batch_size: int = 256
    views: int = 0  # augmented copies of the tiny set added as training pairs (views.py)
    mix: bool = False  # views also blended with another image of the set
    # the fraction of the tiny set (a seeded draw) kept out of training to judge each fit
    holdout: float = 0.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown recovery schedule '{self.schedule}' (use {SCHEDULES})")
        if self.init not in INITS:
            raise ValueError(f"unknown adapter init '{self.init}' (use {INITS})")
        if self.fit is None and self.init != "lstsq":
            raise ValueError("fit=None trains nothing; it needs init='lstsq'")
        if self.bn not in ("eval", "train"):
            raise ValueError(f"bn must be 'eval' or 'train', not '{self.bn}'")
        if self.views < 0:
            raise ValueError(f"views must be at least 0, not {self.views}")
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, not '{self.bn_stats}'")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), not {self.holdout}")
        if self.holdout and self.bn == "train":
            raise ValueError("a holdout is judged in eval mode; it cannot go with bn='train' "
                             "(a forward pass would update the running statistics)")
        if self.holdout and self.fit is None:
            raise ValueError("a holdout judges gradient fits; the closed form (fit=None) "
                             "has none")

    @property
    def trains_on_given_images(self) -> bool:
        """Whether every fit trains on exactly the images given, in order (no views, no
        holdout): then the teacher's features on them can be computed once for many
        recoveries (``recover(stages=...)``)."""
        return not (self.views or self.holdout)

    def held_out(self, images: int) -> torch.Tensor:
        """The rows of a set of ``images`` images that the holdout keeps out of training, in
        order: a random draw seeded by the fit's seed (not the last rows: a set read from
        class folders is sorted by class), at least one when there is a holdout, never all."""
        count = min(max(1, round(self.holdout * images)), images - 1) if self.holdout else 0
        seed = self.fit.seed if self.fit is not None else 0
        draw = torch.randperm(images, generator=torch.Generator().manual_seed(seed))
        return draw[:count].sort().values


@dataclass
class StepReport:
    """One trained group of adapters: where, how many, loss before and after, time."""

    target: str
    adapters: list[str]
    loss_before: float
    loss_after: float
    epochs: int
    seconds: float


def _parameters(gm: fx.GraphModule, nodes: list[fx.Node]) -> list[nn.Parameter]:
    modules = named_modules(gm)
    return [parameter for node in nodes for parameter in modules[node.target].parameters()]


def _train(student, teacher_features, inputs, adapters, targets, config, progress, held
           ) -> StepReport:
    """Fit ``adapters`` so that segment ``inputs -> targets`` of the student matches
    ``teacher_features`` (``inputs``: node names and their features); the last ``held``
    rows only judge the fit (``fit``'s validation)."""
    start = time.perf_counter()
    module = segment(student, inputs[0], targets)
    before = _losses(module, inputs[1], teacher_features, config.eval_batch_size)
    trained, starts = module, inputs[1]
    if config.bn == "eval":  # batch statistics would make the prefix depend on the minibatch
        trained, starts = training_segment(student, inputs[0], inputs[1], targets,
                                           {node.name for node in adapters},
                                           config.eval_batch_size)
    set_batchnorm_training(student, config.bn == "train")
    cut = len(starts[0]) - held
    validation = ([x[cut:] for x in starts], [t[cut:] for t in teacher_features]) \
        if held else None
    history = fit(trained, _parameters(student, adapters), [x[:cut] for x in starts],
                  [t[:cut] for t in teacher_features], config.fit,
                  description=f"adapters -> {','.join(targets)}", progress=progress,
                  validation=validation)
    student.eval()
    after = _losses(module, inputs[1], teacher_features, config.eval_batch_size)
    return StepReport(",".join(targets), [node.name for node in adapters], before, after,
                      len(history), time.perf_counter() - start)


def _losses(module, inputs, targets, batch_size) -> float:
    outputs = run_batched(module, inputs, batch_size)
    return sum(torch.nn.functional.mse_loss(output, target).item()
               for output, target in zip(outputs, targets))


def recover(teacher: fx.GraphModule, student: fx.GraphModule, images: torch.Tensor,
            config: RecoveryConfig = RecoveryConfig(), progress: bool = True,
            trained: Collection[str] = (), stages: TeacherStages | None = None
            ) -> list[StepReport]:
    """Train ``student``'s adapters in place on ``images`` (a normalised NCHW batch);
    ``trained`` names nodes already trained, left as they are (a stage whose adapters are all
    trained is only run forward); ``stages``, the teacher's stage outputs on ``images``
    (``teacher_stages``) when the caller has them already.

    Raises ``PreconditionError`` before training anything when the schedule cannot train every
    adapter (layer-wise: an adapter not placed before a conv; stage-wise and joint: an adapter
    after the last stage output)."""
    if stages is not None and not config.trains_on_given_images:
        raise ValueError("stages are the teacher's features on the images themselves, in "
                         "order; with views or a holdout the training images are others")
    teacher.eval()
    student.eval()
    outputs = stages.outputs if stages is not None else None
    if config.fit is not None and config.schedule != "layerwise":
        outputs = outputs or stage_outputs(teacher)
        _check_stage_schedule(student, outputs)
    elif config.fit is not None:
        _check_layerwise(student)
    held_rows = config.held_out(len(images))
    held = len(held_rows)
    if held:  # training rows first, in order; the held-out ones last, never augmented
        kept = torch.ones(len(images), dtype=torch.bool)
        kept[held_rows] = False
        images, held_images = images[kept], images[held_rows]
    reestimate_batchnorm(teacher, student, images, config.bn_stats)
    images = with_views(images, config.views, config.mix,
                        config.fit.seed if config.fit is not None else 0)
    if held:
        images = torch.cat([images, held_images])
    untrained = {node.name for node in recovery_nodes(student)} - set(trained)
    with channels_last(teacher, student):
        images = images.contiguous(memory_format=torch.channels_last)
        reports, solved = _solve_layerwise(teacher, student, images[:len(images) - held],
                                           config, progress, untrained) \
            if config.init == "lstsq" else ([], set())
        if config.fit is None:  # what the closed form does not cover still trains, layer-wise
            fallback = replace(config, fit=CLOSED_FORM_FALLBACK)
            return reports + _layerwise(teacher, student, images, fallback, progress,
                                        untrained - solved, held)
        if config.schedule == "layerwise":
            return reports + _layerwise(teacher, student, images, config, progress, untrained,
                                        held)
        stages = stages or teacher_stages(teacher, images, config.eval_batch_size, outputs)
        schedule = _joint if config.schedule == "joint" else _stagewise
        return reports + schedule(student, stages, images, config, progress, untrained, held)


def _closed_form(node: fx.Node, modules) -> bool:
    """Whether the closed form covers this adapter: not a pruned map's shrinking adapter
    (its output has no teacher counterpart), and before a conv only when that conv is
    ungrouped, zero-padded and the Gram (C·C')² stays small."""
    site = adapter_site(node)
    if site.side == "output":
        return prune_group(node) is None
    conv = conv_of(next(iter(node.users)), modules)
    adapter = modules[node.target]
    return conv.groups == 1 and conv.padding_mode == "zeros" and \
        conv.in_channels * (adapter.in_channels + (adapter.bias is not None)) <= MAX_GRAM_SIDE


def _solve_layerwise(teacher, student, images, config, progress, only: set[str]
                     ) -> tuple[list[StepReport], set[str]]:
    """Every adapter in ``only`` the closed form covers at its layer-wise optimum, in
    topological order (each one sees the student's features with the earlier adapters
    already solved); the reports and the names of the adapters solved."""
    modules = named_modules(student)
    nodes = {node.name: node for node in student.graph.nodes}
    reports: list[StepReport] = []
    solvable = [node for node in adapter_nodes(student)
                if node.name in only and _closed_form(node, modules)]
    for adapter in tqdm(solvable, desc="solve adapters", leave=False,
                        disable=not progress or None):
        start = time.perf_counter()
        site = adapter_site(adapter)
        producer = adapter.args[0].name
        compared = site.conv if site.side == "input" else adapter.name
        features = run_batched(segment(student, [input_name(student)], [producer]), [images],
                               config.eval_batch_size)[0]
        target = run_batched(segment(teacher, [input_name(teacher)], [site.conv]), [images],
                             config.eval_batch_size)[0]
        module = segment(student, [producer], [compared])
        before = _losses(module, [features], [target], config.eval_batch_size)
        if site.side == "input":
            solve_before_conv(modules[adapter.target], conv_of(nodes[site.conv], modules),
                              features, target)
        else:
            solve_after_conv(modules[adapter.target], features, target)
        after = _losses(module, [features], [target], config.eval_batch_size)
        reports.append(StepReport(compared, [adapter.name], before, after, 0,
                                  time.perf_counter() - start))
    return reports, {node.name for node in solvable}


def _joint(student, stages, images, config, progress, only: set[str], held: int
           ) -> list[StepReport]:
    outputs, targets = student_targets(student, stages)
    adapters = [node for node in recovery_nodes(student) if node.name in only]
    if not adapters:
        return []
    return [_train(student, targets, ([input_name(student)], [images]), adapters, outputs,
                   config, progress, held)]


def _check_layerwise(student) -> None:
    masked = set(masked_nodes(student))
    misplaced = [node.name for node in recovery_nodes(student) if prune_group(node) is None
                 and node not in masked and (
                 adapter_site(node) is None
                 or adapter_site(node).side != "input" or len(node.users) != 1)]
    if misplaced:
        raise PreconditionError(
            f"layer-wise recovery trains adapters placed before a conv; {', '.join(misplaced)} "
            "are not (use placement 'paper', or the stage-wise or joint schedule)")


def _check_stage_schedule(student, outputs: tuple[str, ...]) -> None:
    order = {node.name: index for index, node in enumerate(student.graph.nodes)}
    last = max(order[stand_in(student, output)] for output in outputs)
    outside = [node.name for node in recovery_nodes(student) if order[node.name] > last]
    if outside:
        raise PreconditionError(f"adapters after the last stage output cannot be recovered: "
                                f"{', '.join(outside)}")


def _stagewise(student, stages, images, config, progress, only: set[str], held: int
               ) -> list[StepReport]:
    student_outputs, targets = student_targets(student, stages)
    order = {node.name: index for index, node in enumerate(student.graph.nodes)}
    adapters = [node for node in recovery_nodes(student) if node.name in only]
    reports: list[StepReport] = []
    source, features = input_name(student), images
    lower = -1
    stages = tqdm(list(zip(student_outputs, targets)), desc="recover stages", leave=False,
                  disable=not progress or None)
    for output, target in stages:
        upper = order[output]
        inside = [node for node in adapters if lower < order[node.name] < upper]
        if inside:
            reports.append(_train(student, [target], ([source], [features]), inside,
                                  [output], config, progress, held))
        features = run_batched(segment(student, [source], [output]), [features],
                               config.eval_batch_size)[0]
        source, lower = output, upper
    return reports


def _layerwise(teacher, student, images, config, progress, only: set[str], held: int
               ) -> list[StepReport]:
    """The layer-wise steps that train one of the nodes ``only`` names."""
    source = input_name(student)
    reports: list[StepReport] = []
    chosen = [group for group in layer_groups(student)
              if any(node.name in only for node in group[0])]
    groups = tqdm(chosen, desc="recover layers", leave=False, disable=not progress or None)
    for members, starts, convs in groups:
        features = run_batched(segment(student, [source], starts), [images],
                               config.eval_batch_size)
        # one teacher pass per step: holding every conv target at once would cost memory
        # proportional to the whole network's activations on the tiny set
        targets = run_batched(segment(teacher, [input_name(teacher)], convs), [images],
                              config.eval_batch_size)
        reports.append(_train(student, targets, (starts, features), members, convs,
                              config, progress, held))
    return reports
