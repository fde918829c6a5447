"""Stages and blocks of a CNN, found from the traced graph's topology.

The *trunk* is the chain of nodes every input-to-output path passes through (the dominators of
the output node). Between two consecutive trunk nodes the graph is either a single edge or a
multi-path region. A region that ends in an ``add`` is a residual block: its entry is the
join's immediate dominator, the join's operand reached without the main convolutions is the
shortcut (identity, parameter-free such as pad-and-subsample or pooling, or a projection conv).
Convolutions on the trunk form plain conv units (a conv and the same-shaped pointwise ops after
it); a depthwise unit followed by a linear 1x1 unit (and preceded by an expanding 1x1 unit) is
an inverted residual without shortcut, as in MobileNetV2/EfficientNet.

Blocks are the residual and inverted-residual units; a network with none (VGG) uses its conv
units as blocks. Stages are runs of consecutive blocks with the same output shape (width and
resolution). Block ids follow the paper: ``"s.b"``, both 1-based, numbered by position.

Everything here reads the graph's topology, shapes and module types; nothing here changes it,
and nothing a pass recorded on the graph changes the answer (after a drop, ``DropBlocks``
keeps the ids of the structure it first analysed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby

import networkx as nx
from torch import fx, nn

from fxprune.adapters import Adapter
from fxprune.errors import PreconditionError
from fxprune.analysis.trunk import non_feature_nodes, trunk
from fxprune.graph import (conv_of, feature_shape, is_activation, is_add, is_depthwise,
                           is_zero_pad, named_modules, tensor_inputs, to_digraph)

@dataclass(frozen=True)
class Block:
    """A droppable-or-not unit of the network, described by node names of the analysed graph."""

    id: str
    kind: str  # "residual" | "inverted_residual" | "bottleneck" (shortcut-free) | "conv"
    entry: str  # node whose output enters the block
    exit: str  # node whose output leaves the block
    nodes: tuple[str, ...]  # nodes inside the block (entry excluded), in graph order
    convs: tuple[str, ...]  # convs of the main (residual) branch, in graph order
    shortcut: str  # "identity" | "projection" | "parameter-free" | "none"
    shortcut_output: str | None  # the join's operand coming from the shortcut
    shortcut_convs: tuple[str, ...]
    join: str | None  # the add node of a residual block
    in_shape: tuple[int, ...]  # (C, H, W)
    out_shape: tuple[int, ...]

    @property
    def droppable(self) -> bool:
        """The shortcut alone (or nothing, for a shortcut-free unit) can stand in for the block."""
        return self.in_shape == self.out_shape

    def require_droppable(self) -> None:
        if not self.droppable:
            raise PreconditionError(
                f"block {self.id} cannot be dropped: its input {list(self.in_shape)} and output "
                f"{list(self.out_shape)} differ, so no shortcut can stand in for it")

    @property
    def stage(self) -> int:
        return int(self.id.split(".")[0])


@dataclass(frozen=True)
class Stage:
    id: int
    blocks: tuple[Block, ...]
    # the first node every path passes after the last block: its exit, unless the stage lies
    # inside a multi-path region (a CSP split, a DLA tree), where the region's join; recovery
    # cuts the network here
    output: str


@dataclass(frozen=True)
class Structure:
    stages: tuple[Stage, ...]
    stem: tuple[str, ...]  # trunk convs before the first block (not part of any stage)
    head: tuple[str, ...]  # trunk convs after the last block

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(block for stage in self.stages for block in stage.blocks)

    @property
    def last_exit(self) -> str:
        """The last stage's output (the pre-pooling feature). Raises ``PreconditionError``
        when no stage was found; callers add what that rules out."""
        if not self.stages:
            raise PreconditionError("no stage found in this network (no residual block or conv "
                                    "unit that fxprune recognises)")
        return self.stages[-1].output

    def block(self, block_id: str) -> Block:
        for block in self.blocks:
            if block.id == block_id:
                return block
        known = ", ".join(block.id for block in self.blocks) or "none"
        raise PreconditionError(f"no block '{block_id}' in this network (blocks: {known})")


@dataclass(frozen=True)
class _Unit:
    """A block before it has an id."""

    kind: str
    entry: str
    exit: str
    nodes: tuple[str, ...]
    convs: tuple[str, ...]
    shortcut: str = "none"
    shortcut_output: str | None = None
    shortcut_convs: tuple[str, ...] = ()
    join: str | None = None
    linear: bool = False  # no activation after the conv (a linear bottleneck)


class _View:
    """One graph's lookup tables, built once per analysis."""

    def __init__(self, gm: fx.GraphModule):
        self.graph = gm.graph
        self.modules = named_modules(gm)
        self.digraph = to_digraph(gm.graph)
        self.nodes = {node.name: node for node in gm.graph.nodes}
        self.order = {node.name: index for index, node in enumerate(gm.graph.nodes)}
        self.walked: set[tuple[str, str]] = set()  # (entry, operand) paths already walked
        self.non_features = non_feature_nodes(gm.graph)

    def between(self, start: str, end: str) -> set[str]:
        """Nodes on some path from ``start`` to ``end``, both excluded."""
        return (nx.descendants(self.digraph, start) & nx.ancestors(self.digraph, end)) - {
            start, end}

    def sorted(self, names) -> tuple[str, ...]:
        return tuple(sorted(names, key=self.order.__getitem__))

    def conv(self, node: fx.Node) -> nn.Conv2d | None:
        """The conv a node calls; adapters are transparent to the analysis."""
        conv = conv_of(node, self.modules)
        return None if isinstance(conv, Adapter) else conv

    def convs(self, names) -> tuple[str, ...]:
        return self.sorted(name for name in names if self.conv(self.nodes[name]) is not None)


def _residual_unit(view: _View, entry: fx.Node, join: fx.Node, exit_node: fx.Node
                   ) -> _Unit | None:
    """The residual block ``entry -> join``, or None when the region is not one (e.g. both
    operands come through the same nodes, or neither side has a conv)."""
    operands = tensor_inputs(join)
    if len(operands) != 2:
        return None
    sides = []
    for operand in operands:
        side = set() if operand is entry else view.between(entry.name, operand.name) | {
            operand.name}
        sides.append((len(view.convs(side)), len(side), operand, side))
    sides.sort(key=lambda item: item[:2])
    (_, _, short_out, short_nodes), (_, _, _, branch_nodes) = sides
    branch_convs = view.convs(branch_nodes)
    if not branch_convs or short_nodes & branch_nodes:
        return None
    if short_out is entry:
        shortcut = "identity"
    elif view.convs(short_nodes):
        shortcut = "projection"
    else:
        shortcut = "parameter-free"
    depthwise = any(is_depthwise(view.conv(view.nodes[name])) for name in branch_convs)
    inside = view.between(entry.name, exit_node.name) | {exit_node.name}
    return _Unit(kind="inverted_residual" if depthwise else "residual", entry=entry.name,
                 exit=exit_node.name, nodes=view.sorted(inside), convs=branch_convs,
                 shortcut=shortcut, shortcut_output=short_out.name,
                 shortcut_convs=view.convs(short_nodes), join=join.name)


def _is_residual_join(view: _View, previous: fx.Node, node: fx.Node) -> bool:
    return is_add(node) and len(tensor_inputs(node)) == 2 and bool(
        view.between(previous.name, node.name))


def _spatial(view: _View, name: str) -> bool:
    """The node's output is a feature map larger than 1x1 (not pooled features)."""
    return math.prod(feature_shape(view.nodes[name])[1:]) > 1


def _nested(view: _View, start: fx.Node, end: fx.Node) -> bool:
    """The region between two chain nodes convolves feature maps on a path of its own, so
    blocks may sit inside it (a CSP stage's split, a DLA tree, a DPN dual path); a gate on
    pooled features (squeeze-and-excitation) does not count."""
    return any(_spatial(view, name) for name in view.convs(view.between(start.name, end.name)))


def _branch_chain(view: _View, entry: fx.Node, operand: fx.Node) -> list[fx.Node]:
    """The nodes every path of features from ``entry`` to ``operand`` passes through, both
    included (a size read at the entry is no second path)."""
    names = (view.between(entry.name, operand.name) - view.non_features) | {
        entry.name, operand.name}
    dominators = nx.immediate_dominators(view.digraph.subgraph(names), entry.name)
    chain = [operand.name]
    while chain[-1] != entry.name:
        chain.append(dominators[chain[-1]])
    return [view.nodes[name] for name in reversed(chain)]


def _nested_units(view: _View, entry: fx.Node, join: fx.Node) -> list[_Unit]:
    """Units along each path from ``entry`` into ``join`` (operands in graph order), each
    region walked once: paths of a densely connected region share their regions."""
    units: list[_Unit] = []
    reachable = nx.descendants(view.digraph, entry.name)
    for operand in sorted(tensor_inputs(join), key=lambda node: view.order[node.name]):
        if operand.name in reachable and (entry.name, operand.name) not in view.walked:
            view.walked.add((entry.name, operand.name))
            units += [unit for unit in _chain_units(view, _branch_chain(view, entry, operand))
                      if unit.exit not in {known.exit for known in units}]
    return units


def _chain_units(view: _View, chain: list[fx.Node]) -> list[_Unit]:
    """Residual regions and conv units along a chain of dominating nodes (the trunk, or a
    path inside a multi-path region), in order."""
    units: list[_Unit] = []
    index = 1
    while index < len(chain):
        previous, node = chain[index - 1], chain[index]
        if _is_residual_join(view, previous, node):
            following = chain[index + 1] if index + 1 < len(chain) else None
            exit_node = node
            if following is not None and list(node.users) == [following] and \
                    is_activation(following, view.modules):
                exit_node, index = following, index + 1
            unit = _residual_unit(view, previous, node, exit_node)
            if unit is not None:
                units.append(unit)
            elif _nested(view, previous, node):  # a sum of branches (HRNet's fusion)
                units += _nested_units(view, previous, node)
        elif view.conv(node) is None and _nested(view, previous, node):
            units += _nested_units(view, previous, node)
        elif view.conv(node) is not None:
            members = [node]
            while index + 1 < len(chain):
                following = chain[index + 1]
                padding = is_zero_pad(following, view.modules) and \
                    index + 2 < len(chain) and view.conv(chain[index + 2]) is not None
                if view.conv(following) is not None or \
                        feature_shape(following) != feature_shape(node) and not padding or \
                        _is_residual_join(view, members[-1], following) or \
                        _nested(view, members[-1], following):
                    break
                members.append(following)
                index += 1
            inside = {member.name for member in members}
            for first, second in zip(members, members[1:]):
                inside |= view.between(first.name, second.name)  # side branches such as SE
            activated = any(is_activation(member, view.modules) for member in members)
            units.append(_Unit(kind="conv", entry=previous.name, exit=members[-1].name,
                               nodes=view.sorted(inside), convs=(node.name,),
                               linear=not activated))
        index += 1
    return units


def _merge_inverted_residuals(view: _View, units: list[_Unit]) -> list[_Unit]:
    """Fold [1x1 expand] + spatial (depthwise or k x k) + linear 1x1 project conv units into one
    shortcut-free unit: MobileNetV2's first block of a stage (an inverted residual), or a
    bottleneck without shortcut (RegNetZ's first block of a stage)."""

    def pointwise(unit: _Unit) -> bool:
        conv = view.conv(view.nodes[unit.convs[0]])
        return unit.kind == "conv" and conv.kernel_size == (1, 1) and conv.groups == 1

    def spatial(unit: _Unit) -> bool:
        conv = view.conv(view.nodes[unit.convs[0]])
        return unit.kind == "conv" and not unit.linear and (
            is_depthwise(conv) or conv.kernel_size != (1, 1))

    def starts_stage(index: int, project: _Unit) -> bool:
        """A dense bottleneck without shortcut is a block only where residual blocks of its
        output shape follow (RegNetZ), not between stages (a CSP transition)."""
        following = units[index] if index < len(units) else None
        return following is not None and following.kind != "conv" and \
            feature_shape(view.nodes[following.exit]) == feature_shape(view.nodes[project.exit])

    merged: list[_Unit] = []
    index = 0
    while index < len(units):
        unit = units[index]
        project = units[index + 1] if index + 1 < len(units) else None
        if spatial(unit) and project is not None and pointwise(project) and project.linear \
                and project.entry == unit.exit:
            depthwise = is_depthwise(view.conv(view.nodes[unit.convs[0]]))
            if not depthwise and not starts_stage(index + 2, project):
                merged.append(unit)
                index += 1
                continue
            parts = [unit, project]
            if merged and pointwise(merged[-1]) and not merged[-1].linear and \
                    merged[-1].exit == unit.entry:
                parts.insert(0, merged.pop())
            merged.append(_Unit(
                kind="inverted_residual" if depthwise else "bottleneck",
                entry=parts[0].entry, exit=project.exit,
                nodes=view.sorted(name for part in parts for name in part.nodes),
                convs=tuple(name for part in parts for name in part.convs)))
            index += 2
            continue
        merged.append(unit)
        index += 1
    return merged


def find_structure(gm: fx.GraphModule) -> Structure:
    """Stages and blocks of ``gm``, which must carry shapes (``fxprune.tracing.trace``)."""
    view = _View(gm)
    chain = trunk(view.graph)
    units = _merge_inverted_residuals(view, _chain_units(view, chain))
    is_block = [unit.kind != "conv" for unit in units]
    if not any(is_block):
        # plain networks (VGG): every conv unit is a block, but for those on pooled 1x1
        # features (a classifier written as convs)
        is_block = [_spatial(view, unit.exit) for unit in units]
    first = is_block.index(True) if any(is_block) else len(units)
    last = len(is_block) - is_block[::-1].index(True) if any(is_block) else len(units)
    block_units = [unit for unit, keep in zip(units, is_block) if keep]
    stem = tuple(name for unit in units[:first] for name in unit.convs)
    head = tuple(name for unit in units[last:] for name in unit.convs)

    stages = []
    out_shape = lambda unit: feature_shape(view.nodes[unit.exit])  # noqa: E731
    for stage_index, (_, group) in enumerate(groupby(block_units, key=out_shape), start=1):
        blocks = []
        for block_index, unit in enumerate(group, start=1):
            blocks.append(Block(
                id=f"{stage_index}.{block_index}",
                kind=unit.kind, entry=unit.entry, exit=unit.exit, nodes=unit.nodes,
                convs=unit.convs, shortcut=unit.shortcut, shortcut_output=unit.shortcut_output,
                shortcut_convs=unit.shortcut_convs, join=unit.join,
                in_shape=feature_shape(view.nodes[unit.entry]),
                out_shape=feature_shape(view.nodes[unit.exit])))
        output = next((node.name for node in chain
                       if view.order[node.name] >= view.order[blocks[-1].exit]),
                      blocks[-1].exit)  # a region that ends at the graph's output
        stages.append(Stage(id=blocks[0].stage, blocks=tuple(blocks), output=output))
    return Structure(stages=tuple(stages), stem=stem, head=head)
