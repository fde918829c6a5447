"""What stays constant while a few adapters train, computed once instead of every step.

A recovery step trains a segment of the student (a stage, or the region around one adapter)
with everything but a few nodes frozen. With BN in eval mode two things are fixed for the whole
fit, and each costs a share of every optimizer step when left in the segment:

* the *frozen prefix*: every node that no trained node reaches. Its values on the tiny set
  never change, so they are computed once and the trained segment starts where the trained
  nodes' influence begins (on ResNet-56's first stage, the stem and the first block);
* *frozen BN*: an eval-mode BN after a frozen conv is an affine map of that conv's output, so
  the pair runs as one conv with folded weights (one pass less forward and backward).

Neither holds with BN in train mode (batch statistics couple the images of a minibatch), so the
caller uses this only for ``bn="eval"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fxprune.graph import shape_of
from fxprune.segments import run_batched, segment


def variable_nodes(gm: fx.GraphModule, trained: set[str]) -> set[str]:
    """Names of the nodes whose value depends on a node of ``trained`` (those included)."""
    variable: set[str] = set()
    for node in gm.graph.nodes:
        if node.name in trained or any(arg.name in variable for arg in node.all_input_nodes):
            variable.add(node.name)
    return variable


def frontier(gm: fx.GraphModule, trained: set[str]) -> list[str] | None:
    """The constant nodes a segment without the frozen prefix starts from (those a variable
    node or the output reads), in graph order; None when one of them is not known to be a
    batched tensor (shape propagation did not record it), since only those can be cached."""
    variable = variable_nodes(gm, trained)
    starts = [node for node in gm.graph.nodes
              if node.name not in variable and node.op not in ("get_attr", "output")
              and any(user.name in variable or user.op == "output" for user in node.users)]
    if any(node.op != "placeholder" and not shape_of(node) for node in starts):
        return None
    return [node.name for node in starts]


def fuse_frozen_batchnorm(gm: fx.GraphModule, trained: set[str]) -> fx.GraphModule:
    """``gm`` (changed in place) with every eval-mode ``BatchNorm2d`` that is the only user of
    a plain frozen ``Conv2d`` folded into a new conv; neither is in ``trained``. The new convs
    are owned by ``gm`` alone: the network ``gm`` was cut from keeps its conv and BN."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if type(conv) is not nn.Conv2d or conv.training or node.name in trained \
                or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        bn = modules.get(user.target) if user.op == "call_module" else None
        if type(bn) is not nn.BatchNorm2d or bn.training or user.name in trained:
            continue
        name = f"fxprune_fused_{node.name}"
        gm.add_submodule(name, fuse_conv_bn_eval(conv, bn))
        node.target = name
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    gm.recompile()
    return gm


def training_segment(gm: fx.GraphModule, inputs: Sequence[str],
                     features: Sequence[torch.Tensor], outputs: Sequence[str],
                     trained: set[str], batch_size: int
                     ) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """The segment of ``gm`` from ``inputs`` (with values ``features``) to ``outputs`` to train
    the nodes ``trained`` in, and its inputs: the frozen prefix already run, frozen BN folded.
    Its outputs equal those of ``segment(gm, inputs, outputs)`` up to float rounding."""
    whole = segment(gm, inputs, outputs)
    starts = frontier(whole, trained)
    if starts is not None and list(starts) != list(inputs):
        features = run_batched(segment(whole, inputs, starts), list(features), batch_size)
        inputs = starts
    return fuse_frozen_batchnorm(segment(gm, inputs, outputs), trained), list(features)
