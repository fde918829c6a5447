"""Re-estimating BN running statistics on the tiny set after the network was damaged.

Dropping a block changes the distribution of every later feature, yet each later BN still
normalises with the statistics of the original network. Re-estimating them is forward passes
only. Two ways:

* ``"tiny"``: every BN's statistics become the tiny set's (cumulative average over batches,
  BN in train mode) — the paper's "update BN", but a tiny set's statistics are noisy and
  biased towards its few images, also where the drop changed nothing.
* ``"paired"``: every BN's statistics are set so that, on the tiny set, its output has the
  per-channel mean and variance that the teacher's BN of the same name gives the teacher's
  (both in eval mode). What the tiny set shares with the teacher's training data needs no
  estimate, so its own bias cancels, and a BN before the first change keeps its statistics
  exactly. BNs with no teacher counterpart of the same name and width keep theirs. A BN's
  input depends on the BNs before it, so each is matched during one forward pass of the whole
  tiny set, when its input is known (memory: one forward pass of the tiny set, no gradients).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import fx, nn

BN_STATS = ("keep", "tiny", "paired")
# Below this variance in the teacher a channel is treated as dead: its variance is not scaled.
DEAD_VARIANCE = 1e-8


def batchnorms(module: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: child for name, child in module.named_modules()
            if isinstance(child, nn.modules.batchnorm._BatchNorm)}


@torch.no_grad()
def tiny_set_statistics(module: nn.Module, images: torch.Tensor, batch_size: int
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BN of ``module`` (by name), the (mean, variance) of its input on ``images``, as BN in
    train mode averages them over batches; ``module`` itself is left as it was."""
    scratch = copy.deepcopy(module).eval()
    layers = batchnorms(scratch)
    for layer in layers.values():
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every batch counts the same
        layer.train()
    for begin in range(0, len(images), batch_size):
        scratch(images[begin:begin + batch_size])
    return {name: (layer.running_mean, layer.running_var) for name, layer in layers.items()}


@torch.no_grad()
def _forward_with_inputs(module: nn.Module, images: torch.Tensor, on_input: Callable) -> None:
    """One eval-mode forward pass of all of ``images`` (one batch: a BN's statistics are over
    the whole set); before every BN normalises, ``on_input(name, layer, mean, variance)`` gets
    the per-channel mean and biased variance of that BN's input."""
    def hook(name):
        return lambda layer, args: on_input(name, layer, *reversed(torch.var_mean(
            args[0], dim=[d for d in range(args[0].dim()) if d != 1], unbiased=False)))

    training = module.training
    handles = [layer.register_forward_pre_hook(hook(name))
               for name, layer in batchnorms(module).items()]
    try:
        module.eval()
        module(images)
    finally:
        for handle in handles:
            handle.remove()
        module.train(training)


def _match_teacher(layer, original, student_input, teacher_input) -> None:
    """Running statistics with which ``layer`` maps the student's tiny-set input to the
    per-channel mean and variance that ``original`` (the teacher's BN) gives the teacher's."""
    (mean, variance), (teacher_mean, teacher_variance) = student_input, teacher_input
    ratio = torch.where(teacher_variance > DEAD_VARIANCE,
                        variance / teacher_variance.clamp_min(DEAD_VARIANCE), 1.0)
    scale = (original.running_var + layer.eps) * ratio
    layer.running_var.copy_((scale - layer.eps).clamp_min(0.0))
    offset = (teacher_mean - original.running_mean) * ratio.sqrt()
    layer.running_mean.copy_(mean - offset)


@torch.no_grad()
def reestimate_batchnorm(teacher: fx.GraphModule, student: fx.GraphModule,
                         images: torch.Tensor, mode: str, batch_size: int = 100) -> None:
    """Set ``student``'s BN running statistics in place as ``mode`` says (module docstring)."""
    if mode not in BN_STATS:
        raise ValueError(f"unknown BN statistics mode '{mode}' (use {BN_STATS})")
    if mode == "tiny":
        for name, (mean, variance) in tiny_set_statistics(student, images, batch_size).items():
            student.get_submodule(name).running_mean.copy_(mean)
            student.get_submodule(name).running_var.copy_(variance)
    if mode != "paired":
        return
    originals = batchnorms(teacher)
    teacher_inputs = {}
    _forward_with_inputs(teacher, images, lambda name, _, *statistics:
                         teacher_inputs.__setitem__(name, statistics))

    def match(name, layer, mean, variance):
        original = originals.get(name)
        if original is not None and original.running_mean.shape == layer.running_mean.shape:
            _match_teacher(layer, original, (mean, variance), teacher_inputs[name])

    # BN by BN in the order the pass reaches them: each sees the earlier ones already matched.
    _forward_with_inputs(student, images, match)
