"""Feature maps whose channels can be pruned independently (pure: reads the graph only).

A *prunable map* is the output of a producer conv that reaches exactly one consumer conv
through a chain of per-channel ops, every node of the chain used once:

    producer conv -> [BN] -> activation -> [max/avg pool] -> consumer conv

— the inner feature maps of residual blocks (between conv1 and conv2 of a basic block; conv1
-> conv2 -> conv3 of a bottleneck) and the maps between the convs of a plain network (VGG). A
channel removed there is removed from the producer's filters, the BN and the consumer's inputs
and nothing else. Maps that feed a residual add (or several consumers) are *coupled*: their
channels are shared with other feature maps and are not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from fxprune.adapters import Adapter
from fxprune.analysis.structure import Structure
from fxprune.graph import foldable_conv, is_activation, module_of, named_modules, owns_module

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, torch.max_pool2d}


@dataclass(frozen=True)
class PrunableMap:
    producer: str  # conv node whose filters are pruned
    batchnorm: str | None  # BN node right after it, if any
    chain: tuple[str, ...]  # the per-channel nodes from the BN (or producer) to the consumer
    consumer: str  # conv node whose input channels are pruned
    channels: int
    block: str | None  # id of the block holding the producer (None outside blocks)


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _per_channel(node: fx.Node, modules) -> bool:
    if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        return True
    module = module_of(node, modules)
    if isinstance(module, nn.PReLU) and module.num_parameters > 1:
        return False  # one slope per channel: pruning would have to slice it too
    return is_activation(node, modules) or isinstance(module, _POOLS)


def _plain_conv(gm: fx.GraphModule, node: fx.Node | None, modules) -> nn.Conv2d | None:
    """The conv of ``node`` when it is a plain, ungrouped, zero-padded conv it alone calls."""
    conv = foldable_conv(node, modules) if node is not None else None
    if conv is None or isinstance(conv, Adapter) or conv.padding_mode != "zeros" \
            or not owns_module(gm, node):
        return None
    return conv


def prunable_maps(gm: fx.GraphModule, structure: Structure | None = None
                  ) -> list[PrunableMap]:
    """Every prunable map of ``gm``, in topological order of the producer; ``structure``
    (from ``find_structure``) names the block of each."""
    modules = named_modules(gm)
    block_of = {conv: block.id for block in (structure.blocks if structure else ())
                for conv in block.convs}
    found: list[PrunableMap] = []
    for node in gm.graph.nodes:
        producer = _plain_conv(gm, node, modules)
        if producer is None:
            continue
        batchnorm, chain, current = None, [], _single_user(node)
        if current is not None and isinstance(module_of(current, modules), nn.BatchNorm2d):
            batchnorm, current = current.name, _single_user(current)
        while current is not None and _per_channel(current, modules):
            chain.append(current.name)
            current = _single_user(current)
        if not chain or _plain_conv(gm, current, modules) is None \
                or current.args[0].name != chain[-1]:
            continue
        found.append(PrunableMap(node.name, batchnorm, tuple(chain), current.name,
                                 producer.out_channels, block_of.get(node.name)))
    return found
