"""Where the adapters go when blocks are dropped (pure: reads a ``Structure``, returns sites).

``"paper"`` (PRACTISE v1, Sec. 3.4, Fig. 4e): an adapter before the first conv of every
remaining later block of the dropped block's stage; when no later block remains, before the
first conv (and the downsample conv) of the next stage's first remaining block.

``"cvpr"`` (the CVPR'23 code): additionally after the last conv of every remaining earlier
block of the stage and after the stage's downsample conv (between conv and BN), and always
before the next stage's first block (its first conv and its downsample conv).

``"inner"``: the cvpr sites, and inside every remaining block of the stage, before its last
conv (a basic block's second 3x3, an inverted residual's projection 1x1): there an adapter
sits behind the block's non-linearity, where a linear map changes what the block computes and
not only how its input or output is mixed (an adapter after ``x.1``'s last conv and one before
``x+1.1``'s first conv compose to a single linear map when ``x.2`` is gone).

Sites on grouped (depthwise) convs, on subclasses of ``nn.Conv2d`` and on convs whose module is
called at several nodes are skipped: an adapter cannot fold into them.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx

from fxprune.adapters import AdapterSite
from fxprune.analysis.structure import Block, Structure
from fxprune.errors import PreconditionError
from fxprune.graph import foldable_conv, named_modules, owns_module

PLACEMENTS = ("paper", "cvpr", "inner")


def _input_sites(block: Block) -> list[AdapterSite]:
    sites = [AdapterSite(block.convs[0], "input")]
    return sites + [AdapterSite(conv, "input") for conv in block.shortcut_convs]


def _next_stage_first(structure: Structure, stage_index: int, dropped: set[str]) -> Block | None:
    for stage in structure.stages[stage_index + 1:]:
        remaining = [block for block in stage.blocks if block.id not in dropped]
        if remaining:
            return remaining[0]
    return None


def drop_sites(gm: fx.GraphModule, structure: Structure, block_ids: Iterable[str],
               placement: str = "paper") -> list[AdapterSite]:
    """Adapter sites for dropping ``block_ids`` from the graph ``structure`` describes.

    Node names are those of ``gm`` before the drop; the drop keeps every surviving node's name,
    so the sites apply to the graph after ``DropBlocks`` too."""
    if placement not in PLACEMENTS:
        raise PreconditionError(f"unknown adapter placement '{placement}' (use {PLACEMENTS})")
    dropped = set(block_ids)
    sites: list[AdapterSite] = []
    for block_id in dropped:
        structure.block(block_id)  # raises for an unknown id
    for stage_index, stage in enumerate(structure.stages):
        for position, block in enumerate(stage.blocks):
            if block.id not in dropped:
                continue
            earlier = [b for b in stage.blocks[:position] if b.id not in dropped]
            later = [b for b in stage.blocks[position + 1:] if b.id not in dropped]
            for other in later:
                sites.append(AdapterSite(other.convs[0], "input"))
            following = _next_stage_first(structure, stage_index, dropped)
            if following is not None and (placement != "paper" or not later):
                sites += _input_sites(following)
            if placement in ("cvpr", "inner"):
                sites += [AdapterSite(other.convs[-1], "output") for other in earlier]
                sites += [AdapterSite(conv, "output") for conv in stage.blocks[0].shortcut_convs]
            if placement == "inner":
                sites += [AdapterSite(other.convs[-1], "input") for other in earlier + later
                          if len(other.convs) > 1]
    modules = named_modules(gm)
    nodes = {node.name: node for node in gm.graph.nodes}
    return [site for site in dict.fromkeys(sites)
            if foldable_conv(nodes[site.conv], modules) and owns_module(gm, nodes[site.conv])]
