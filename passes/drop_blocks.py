"""DropBlocks: remove whole blocks, so that where a block was the graph computes its shortcut.

For a residual block ``y = act(F(x) + S(x))`` the block's output is replaced by ``S(x)`` (``x``
for an identity shortcut). The trailing activation goes too when ``x`` already went through the
same idempotent activation (ReLU after ReLU: ``relu(x) == x``); otherwise it stays, applied to
``S(x)``. A shortcut-free unit (a VGG conv, a MobileNet inverted residual without shortcut)
is replaced by its input. The branch's nodes and modules are then dead and removed.

Recovery pairs student and teacher features through ``fxprune.meta.stand_in``, which names the
node now carrying each removed block output. Block ids are the paper's ``"s.b"`` of the graph
as first analysed: the first drop records that structure (``fxprune.meta.record_drop``) and
later drops resolve their ids in it, mapping its nodes to the current graph by their stand-ins,
so ids keep the original numbering. Dropping an id already dropped is a no-op, which makes the
pass idempotent.

Does not fire (``modified=False``) for an empty id list or ids all dropped before. Raises
``PreconditionError`` for an unknown id or a block whose input and output shapes differ.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx

from fxprune.analysis.structure import Block, Structure, find_structure
from fxprune.graph import idempotent_activation_key, named_modules
from fxprune.meta import drop_structure, dropped_blocks, record_drop, stand_in
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize


class DropBlocks(PassBase):
    def __init__(self, block_ids: Iterable[str]):
        super().__init__()
        self.block_ids = list(dict.fromkeys(block_ids))
        self._checked: tuple[fx.GraphModule | None, Structure | None] = (None, None)

    def requires(self, gm: fx.GraphModule) -> None:
        """Every wanted id names a block (checked first), and each of them is droppable."""
        wanted = self._wanted(gm)
        if not wanted:
            return
        structure = _structure(gm)
        for block in [structure.block(block_id) for block_id in wanted]:
            block.require_droppable()
        self._checked = (gm, structure)  # so that call analyses the graph once

    def call(self, gm: fx.GraphModule) -> PassResult:
        wanted = self._wanted(gm)
        if not wanted:
            return PassResult(gm, False)
        checked_gm, structure = self._checked
        if checked_gm is not gm:
            structure = _structure(gm)
        self._checked = (None, None)
        nodes = {node.name: node for node in gm.graph.nodes}
        modules = named_modules(gm)
        for block_id in wanted:
            block = structure.block(block_id)
            record_drop(gm, structure, block.id, _bypass(gm, block, nodes, modules))
        finalize(gm)
        return PassResult(gm, True)

    def _wanted(self, gm: fx.GraphModule) -> list[str]:
        dropped = dropped_blocks(gm)
        return [block_id for block_id in self.block_ids if block_id not in dropped]


def _structure(gm: fx.GraphModule) -> Structure:
    """The structure ids refer to: the graph's before its first drop."""
    return drop_structure(gm) or find_structure(gm)


def _bypass(gm: fx.GraphModule, block: Block, nodes: dict[str, fx.Node], modules
            ) -> dict[str, str]:
    """Rewire the block's consumers and return the stand-in of its exit, if it has one (none
    when its trailing activation stays). An entry or shortcut that was itself the exit of a
    block dropped before resolves to its stand-in."""

    def current(name: str) -> fx.Node:
        return nodes[stand_in(gm, name)]

    exit_node = nodes[block.exit]
    if block.shortcut_output is None:
        replacement = current(block.entry)
    else:
        replacement = current(block.shortcut_output)
        if block.exit != block.join:
            key = idempotent_activation_key(exit_node, modules)
            if key is None or key != idempotent_activation_key(replacement, modules):
                # keep the trailing activation, now applied to the shortcut alone
                exit_node.replace_input_with(nodes[block.join], replacement)
                return {}
    exit_node.replace_all_uses_with(replacement)
    return {block.exit: replacement.name}
