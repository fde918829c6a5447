"""Why a network has nothing to drop, in one clause with what applies instead: the answer a
user gets for ``--drop rule`` or ``--drop auto`` on a network without a droppable block.

Everything here reads the graph; nothing here changes it.
"""

from __future__ import annotations

from torch import fx

from fxprune.analysis.channels import prunable_maps
from fxprune.analysis.structure import Structure


def nothing_to_drop(structure: Structure, gm: fx.GraphModule | None = None) -> str:
    """Why the paper's rule finds no block to drop, in one clause, with what applies instead
    (``gm``, the analysed graph, gives the number of prunable feature maps)."""
    maps = f"; --prune-filters applies to {len(prunable_maps(gm, structure))} feature maps" \
        if gm is not None else ""
    droppable = ", ".join(block.id for block in structure.blocks if block.droppable) or "none"
    if not structure.stages:
        return f"this network has no stage fxprune recognises{maps}"
    if not any(block.join for block in structure.blocks):
        return (f"this network has no residual (add) block, and no stage has a 2nd conv unit "
                f"that keeps its input's shape (droppable units: {droppable}){maps}")
    if droppable == "none":
        changing = ", ".join(block.id for block in structure.blocks)
        return (f"every block changes its input's shape ({changing}), so no shortcut can "
                f"stand in for one{maps}")
    return (f"no stage has a droppable 2nd block, the paper's rule's choice (droppable: "
            f"{droppable}; name them with --drop){maps}")
