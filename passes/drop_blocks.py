"""DropBlocks: remove whole blocks, so that where a block was the graph computes its shortcut.

For a residual block ``y = act(F(x) + S(x))`` the block's output is replaced by ``S(x)`` (``x``
for an identity shortcut). The trailing activation goes too when ``x`` already went through the
same idempotent activation (ReLU after ReLU: ``relu(x) == x``); otherwise it stays, applied to
``S(x)``. A shortcut-free unit (a VGG conv, a MobileNet inverted residual without shortcut)
is replaced by its input. The branch's nodes and modules are then dead and removed.

``gm.meta["fxprune.stand_ins"]`` records which node now carries each removed block output, so
recovery can pair student and teacher features. Block ids are the paper's ``"s.b"`` of the
graph as first analysed: before the first drop the
pass stamps every block's nodes with its id, so later analyses (and later drops) keep the
original numbering. Dropping an id already dropped is a no-op, which makes the pass idempotent.

Does not fire (``modified=False``) for an empty id list or ids all dropped before. Raises
``PreconditionError`` for an unknown id or a block whose input and output shapes differ.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx

from fxprune.analysis.structure import (BLOCK_ID_META, DROPPED_META, STAND_INS_META, Block,
                                        find_structure)
from fxprune.graph import idempotent_activation_key, named_modules
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize

class DropBlocks(PassBase):
    def __init__(self, block_ids: Iterable[str]):
        super().__init__()
        self.block_ids = list(dict.fromkeys(block_ids))

    def call(self, gm: fx.GraphModule) -> PassResult:
        dropped = gm.meta.setdefault(DROPPED_META, [])
        wanted = [block_id for block_id in self.block_ids if block_id not in dropped]
        if not wanted:
            return PassResult(gm, False)
        structure = find_structure(gm)
        blocks = [structure.block(block_id) for block_id in wanted]
        for block in blocks:
            block.require_droppable()
        _stamp_block_ids(gm, structure.blocks)
        nodes = {node.name: node for node in gm.graph.nodes}
        modules = named_modules(gm)
        replaced: dict[str, fx.Node] = {}  # exit of a dropped block -> the node standing in
        for block in blocks:
            _bypass(block, nodes, modules, replaced)
            dropped.append(block.id)
        stand_ins = gm.meta.setdefault(STAND_INS_META, {})
        stand_ins.update({exit_name: node.name for exit_name, node in replaced.items()})
        finalize(gm)
        return PassResult(gm, True)


def _stamp_block_ids(gm: fx.GraphModule, blocks: Iterable[Block]) -> None:
    nodes = {node.name: node for node in gm.graph.nodes}
    for block in blocks:
        for name in block.nodes:
            nodes[name].meta.setdefault(BLOCK_ID_META, block.id)


def _bypass(block: Block, nodes: dict[str, fx.Node], modules,
            replaced: dict[str, fx.Node]) -> None:
    """Rewire the block's consumers; ``replaced`` resolves an entry or shortcut that was itself
    the exit of a block dropped earlier in the same call."""

    def current(name: str) -> fx.Node:
        return replaced.get(name, nodes[name])

    exit_node = nodes[block.exit]
    if block.shortcut_output is None:
        stand_in = current(block.entry)
    else:
        stand_in = current(block.shortcut_output)
        if block.exit != block.join:
            key = idempotent_activation_key(exit_node, modules)
            if key is None or key != idempotent_activation_key(stand_in, modules):
                # keep the trailing activation, now applied to the shortcut alone
                exit_node.replace_input_with(nodes[block.join], stand_in)
                return
    exit_node.replace_all_uses_with(stand_in)
    replaced[block.exit] = stand_in
