"""CheckFolded: the graph calls no adapter any more. It never changes the graph; its
``requires`` raises ``PreconditionError`` naming every adapter left (each needs a neighbouring
ungrouped conv that is its only producer or only consumer), so a shipped graph has no extra op.
"""

from __future__ import annotations

from torch import fx

from fxprune.errors import PreconditionError
from fxprune.graph import adapter_nodes
from fxprune.pass_manager import PassBase, PassResult


class CheckFolded(PassBase):
    def requires(self, gm: fx.GraphModule) -> None:
        left = [node.name for node in adapter_nodes(gm)]
        if left:
            raise PreconditionError(
                f"adapters could not be folded: {', '.join(left)} (each needs a neighbouring "
                "ungrouped conv that is its only producer or only consumer)")

    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, False)
