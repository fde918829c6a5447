"""From options to concrete arguments, read off a graph (pure): which blocks a ``Drop`` names,
how many channels each pruned map keeps, which convs are trainable, masked or factorized.

A plan is built by alternating these reads with rewriting passes on a scratch copy, since what
a later option may touch depends on what the earlier passes did (a drop's adapters hide a
conv from factorization, a pruned stream changes a map's width)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

from torch import fx, nn

from fxprune.analysis.channels import coupled_maps, prunable_maps
from fxprune.analysis.droppable import nothing_to_drop
from fxprune.analysis.structure import Structure
from fxprune.meta import stand_in
from fxprune.errors import FxpruneError, PreconditionError
from fxprune.graph import adapter_nodes, conv_of, named_modules, owns_module
from fxprune.options import Drop, PruningAmount
from fxprune.passes.prune_filters import kept_count


def paper_rule(structure: Structure) -> list[str]:
    """The paper's choice: the 2nd block of every stage that has a droppable one."""
    return [stage.blocks[1].id for stage in structure.stages
            if len(stage.blocks) > 1 and stage.blocks[1].droppable]


def drop_ids(structure: Structure, drop: Drop | None, gm: fx.GraphModule) -> list[str]:
    """The block ids ``drop`` names (``Drop.rule`` or ``Drop.blocks``; an auto drop is resolved
    to ``Drop.blocks`` before), none for ``None``; each must exist and be droppable. ``gm``,
    the analysed graph, lets the error for a network with nothing to drop name what applies."""
    if drop is None:
        return []
    ids = paper_rule(structure) if drop.kind == "rule" else list(drop.ids)
    if not ids:
        raise FxpruneError(f"nothing to drop: {nothing_to_drop(structure, gm)}")
    for block_id in ids:
        structure.block(block_id).require_droppable()
    return ids


def explicit_counts(asked: Mapping[str, int | float], channels: Mapping[str, int],
                    what: str) -> dict[str, int]:
    """Per-map requests as kept counts: an int is the count kept, a float the fraction of that
    map's channels pruned (``channels``: per map name, the maps that exist)."""
    counts = {}
    for name, value in asked.items():
        if name not in channels:
            raise FxpruneError(f"no {what} starts at '{name}'; there are: "
                               + (", ".join(channels) or "none"))
        counts[name] = int(value) if isinstance(value, numbers.Integral) else \
            kept_count(channels[name], value)
    return counts


def kept_channels(pruning: PruningAmount | None, channels: Mapping[str, int], *,
                  excluded: set[str], what: str, why_excluded: str, none_found: str
                  ) -> dict[str, int]:
    """Channels kept per map (``channels``: per map name, its width) for a ratio pruned from
    every map, or explicit (``explicit_counts``). Maps in ``excluded`` are left out of a
    ratio, or refused by name."""
    if pruning is None:
        return {}
    if pruning.ratio is None:
        refused = sorted(excluded & set(pruning.amount))
        if refused:
            raise FxpruneError(f"the {what}s after {', '.join(refused)} {why_excluded}; use "
                               "--schedule layerwise")
        return explicit_counts(pruning.amount, channels, what)
    if not channels:
        raise FxpruneError(none_found)
    if set(channels) <= excluded:
        raise FxpruneError(f"all {what}s here {why_excluded}; use --schedule layerwise")
    return {name: kept_count(width, pruning.ratio) for name, width in channels.items()
            if name not in excluded}


def kept_filters(gm: fx.GraphModule, pruning: PruningAmount | None,
                 full_width: set[str] = frozenset()) -> dict[str, int]:
    """Filters kept per producer conv (``kept_channels`` over ``prunable_maps``). Maps whose
    chain holds a node of ``full_width`` (stage outputs that stage-wise recovery compares
    with the teacher's, channel for channel) are left out, or refused by name."""
    maps = prunable_maps(gm)
    return kept_channels(
        pruning, {m.producer: m.channels for m in maps},
        excluded={m.producer for m in maps if full_width & set(m.chain)},
        what="prunable feature map",
        why_excluded="pass through stage outputs, which stage-wise and joint recovery compare "
        "at full width",
        none_found="this network has no prunable feature map: none runs an ungrouped conv -> "
        "[BN] -> activation -> an ungrouped conv, each output used once")


def kept_streams(gm: fx.GraphModule, pruning: PruningAmount | None,
                 trainable: set[str] | None = None) -> dict[str, int]:
    """Channels kept per residual stream (``kept_channels`` over ``coupled_maps``, named by
    the first producer). With ``trainable`` (the nodes stage-wise and joint recovery reach),
    a stream whose convs reach past the last stage output is left out, or refused by name:
    an adapter there could not train."""
    maps = coupled_maps(gm)
    return kept_channels(
        pruning, {m.name: m.channels for m in maps},
        excluded={m.name for m in maps if trainable is not None
                  and not set(m.producers + m.consumers) <= trainable},
        what="residual stream",
        why_excluded="feed convs past the last stage output, which stage-wise and joint "
        "recovery cannot train",
        none_found="no residual stream of this network can be pruned: each reaches an op that "
        "would need the pruned channels too (a parameter-free shortcut such as a slice and "
        "channel pad, or the pooling head)")


def up_to_last_stage(gm: fx.GraphModule, structure: Structure) -> set[str]:
    """Names of ``gm``'s nodes up to the last stage output (``structure`` from before any
    drop; a dropped exit counts where its stand-in is): what stage-wise and joint recovery
    can train."""
    try:
        exit_name = stand_in(gm, structure.last_exit)
    except PreconditionError as error:
        raise PreconditionError(f"{error}, so stage-wise and joint recovery have no stage "
                                "output to mimic; use --schedule layerwise") from None
    names = []
    for node in gm.graph.nodes:
        names.append(node.name)
        if node.name == exit_name:
            break
    return set(names)


def convs_without_adapters(gm: fx.GraphModule) -> list[str]:
    """Ungrouped plain convs with no adapter as producer or consumer."""
    modules = named_modules(gm)
    adapters = set(adapter_nodes(gm))
    return [node.name for node in gm.graph.nodes
            if type(conv_of(node, modules)) is nn.Conv2d and conv_of(node, modules).groups == 1
            and owns_module(gm, node) and node.args[0] not in adapters
            and not adapters & set(node.users)]


def zero_fraction(gm: fx.GraphModule, convs: Sequence[str]) -> float:
    """Fraction of exactly-zero weights over the named convs (after folding)."""
    modules = named_modules(gm)
    weights = [conv_of(node, modules).weight for node in gm.graph.nodes if node.name in convs]
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))
