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
from fxprune.graph import (foldable_conv, is_activation, is_add, module_of, named_modules,
                           owns_module)

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


@dataclass(frozen=True)
class CoupledMap:
    """Feature maps that share their channels through residual adds (the paper's Fig. 4c/d):
    a residual stream with every conv writing into it and every conv reading from it. A
    channel pruned there is pruned from every producer's filters, every BN on the way and
    every consumer's inputs at once."""

    producers: tuple[str, ...]  # convs whose filters are pruned, in graph order
    batchnorms: tuple[str, ...]  # BN nodes inside the maps
    consumers: tuple[str, ...]  # convs whose input channels are pruned, in graph order
    nodes: tuple[str, ...]  # every per-channel node and add of the maps
    channels: int

    @property
    def name(self) -> str:
        """The first producer's name: what options and reports call the map."""
        return self.producers[0]


def _stream_node(node: fx.Node, modules) -> bool:
    """A node whose output channels are its inputs' channels, one to one (residual adds
    included)."""
    return isinstance(module_of(node, modules), nn.BatchNorm2d) or \
        _per_channel(node, modules) or is_add(node)


def coupled_maps(gm: fx.GraphModule) -> list[CoupledMap]:
    """Every residual stream of ``gm`` whose channels can be pruned together, in graph order of
    the first producer. From a conv's output the search follows per-channel ops (BN,
    activations, pools) and adds forwards to their users and backwards to their other inputs;
    a conv reached forwards is a consumer, one reached backwards a producer. It gives up on a
    stream that reaches anything else — a parameter-free shortcut (slice, channel pad), a
    flatten or pooling head, a concat, a grouped, shared or subclassed conv, the network's
    input or output — since that op would need the pruned channels too. A stream with one
    producer, one consumer and no add is a ``PrunableMap``, not listed here."""
    modules = named_modules(gm)
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    found: list[CoupledMap] = []
    claimed: set[fx.Node] = set()
    for start in gm.graph.nodes:
        if start in claimed or _plain_conv(gm, start, modules) is None:
            continue
        producers, consumers, stream = {start}, set(), set()
        forward = [(start, user) for user in start.users]  # (value, a node that reads it)
        backward: list[fx.Node] = []  # nodes whose value a stream node reads
        valid = True
        while valid and (forward or backward):
            if forward:
                value, node = forward.pop()
                if node in stream or node in consumers:
                    continue
                if _plain_conv(gm, node, modules) is not None and node.args[0] is value \
                        and value not in node.args[1:]:
                    consumers.add(node)
                    continue
            else:
                node = backward.pop()
                if node in stream or node in producers:
                    continue
                if _plain_conv(gm, node, modules) is not None:
                    producers.add(node)
                    forward += [(node, user) for user in node.users]
                    continue
            if not _stream_node(node, modules) or (node.op == "call_module"
                                                   and not owns_module(gm, node)
                                                   and not is_activation(node, modules)):
                valid = False
                continue
            stream.add(node)
            forward += [(node, user) for user in node.users]
            backward += node.all_input_nodes
        claimed |= producers
        simple = len(producers) == 1 and len(consumers) == 1 and not any(map(is_add, stream))
        if not valid or not consumers or simple:
            continue
        bns = [node for node in stream if isinstance(module_of(node, modules), nn.BatchNorm2d)]
        found.append(CoupledMap(
            tuple(node.name for node in sorted(producers, key=order.get)),
            tuple(node.name for node in sorted(bns, key=order.get)),
            tuple(node.name for node in sorted(consumers, key=order.get)),
            tuple(node.name for node in sorted(stream, key=order.get)),
            _plain_conv(gm, start, modules).out_channels))
    return found
