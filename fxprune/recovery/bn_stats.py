"""Re-estimating BN running statistics on the tiny set after the network was damaged.

Dropping a block changes the distribution of every later feature, yet each later BN still
normalises with the statistics of the original network. Re-estimating them is forward passes
only. Two ways:

* ``"tiny"``: every BN's statistics become the tiny set's (cumulative average over batches,
  BN in train mode) — the paper's "update BN", but a tiny set's statistics are noisy and
  biased towards its few images, also where the drop changed nothing.
* ``"paired"``: every BN's statistics move by what the damage changed on the tiny set: the
  mean by the student's minus the teacher's tiny-set mean, the variance by their ratio. The
  tiny set's own bias cancels, and a BN before the first change keeps its statistics exactly.
  BNs with no teacher counterpart of the same name and width keep theirs.
"""

from __future__ import annotations

import copy

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
def reestimate_batchnorm(teacher: fx.GraphModule, student: fx.GraphModule,
                         images: torch.Tensor, mode: str, batch_size: int = 100) -> None:
    """Set ``student``'s BN running statistics in place as ``mode`` says (module docstring)."""
    if mode not in BN_STATS:
        raise ValueError(f"unknown BN statistics mode '{mode}' (use {BN_STATS})")
    if mode == "keep":
        return
    student_stats = tiny_set_statistics(student, images, batch_size)
    teacher_stats = tiny_set_statistics(teacher, images, batch_size) if mode == "paired" \
        else {}
    for name, layer in batchnorms(student).items():
        mean, variance = student_stats[name]
        if mode == "tiny":
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(variance)
        elif name in teacher_stats and teacher_stats[name][0].shape == mean.shape:
            teacher_mean, teacher_variance = teacher_stats[name]
            ratio = torch.where(teacher_variance > DEAD_VARIANCE,
                                variance / teacher_variance.clamp_min(DEAD_VARIANCE), 1.0)
            layer.running_mean.add_(mean - teacher_mean)
            layer.running_var.mul_(ratio)
