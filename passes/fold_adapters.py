"""FoldAdapters: constant-fold every adapter into its neighbouring conv (and every BN into its
conv), so the shipped graph has no extra op. The algebra is in ``fxprune.fold_algebra``.

Every masked conv (``MaskWeights``) becomes the plain conv with weight ``(W * U) ⊙ M``. Then,
per adapter ``A``, first match wins, repeated until nothing changes:

* ``A(conv(x))`` where ``A`` is the conv's only user  -> one conv (``W' = M W``).
* ``conv(A(x))`` where the conv is ``A``'s only user  -> one conv (``W' = W M``); with a bias
  on ``A`` only when the conv has no padding.
* ``bn(conv(x))`` -> one conv (``FoldBatchNorm``), which also turns ``conv -> A -> bn`` into
  ``conv -> A'`` and then a single conv.

Does not fire for an adapter whose producer has other users and whose consumers are several
(a shared feature map), next to a grouped conv, a conv whose module is shared, or a subclass
of ``nn.Conv2d`` (its own ``forward`` would be lost).
With ``strict=True`` (default) any adapter left raises ``PreconditionError`` naming it;
``strict=False`` leaves such adapters in place. ``batchnorm=False`` folds adapters only and
leaves every BN layer (an adapter between a conv and its BN still folds into the conv).
"""

from __future__ import annotations

from torch import fx

from fxprune.adapters import Adapter
from fxprune.errors import PreconditionError
from fxprune.fold_algebra import fold_after, fold_before, fold_mask
from fxprune.graph import (adapter_nodes, foldable_conv, masked_nodes, module_of,
                           named_modules, owns_module)
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize, replace_module
from fxprune.passes.fold_batchnorm import FoldBatchNorm


class FoldAdapters(PassBase):
    def __init__(self, strict: bool = True, batchnorm: bool = True):
        super().__init__()
        self.strict = strict
        self.batchnorm = batchnorm

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        modules = named_modules(gm)
        for node in masked_nodes(gm):
            replace_module(gm, node, fold_mask(modules[node.target]))
            modified = True
        while True:
            folded = self._fold_one_round(gm)
            if self.batchnorm:
                folded |= FoldBatchNorm()(gm).modified
            if not folded:
                break
            modified = True
        if modified:
            finalize(gm)  # before a strict failure too: the graph and its code must agree
        left = [node.name for node in adapter_nodes(gm)]
        if self.strict and left:
            raise PreconditionError(
                f"adapters could not be folded: {', '.join(left)} (each needs a neighbouring "
                "ungrouped conv that is its only producer or only consumer)")
        return PassResult(gm, modified)

    def _fold_one_round(self, gm: fx.GraphModule) -> bool:
        modified = False
        for node in list(gm.graph.nodes):
            modules = named_modules(gm)
            adapter = module_of(node, modules)
            if not isinstance(adapter, Adapter):
                continue
            producer = node.args[0]
            conv = foldable_conv(producer, modules)
            if conv is not None and len(producer.users) == 1 and owns_module(gm, producer):
                replace_module(gm, producer, fold_after(conv, adapter))
                node.replace_all_uses_with(producer)
                gm.graph.erase_node(node)
                modified = True
                continue
            consumers = list(node.users)
            consumer = consumers[0] if len(consumers) == 1 else None
            conv = foldable_conv(consumer, modules) if consumer is not None else None
            if conv is not None and consumer.args[0] is node and \
                    owns_module(gm, consumer) and (adapter.bias is None or
                                                   all(pad == 0 for pad in conv.padding)):
                replace_module(gm, consumer, fold_before(adapter, conv))
                consumer.replace_input_with(node, producer)
                gm.graph.erase_node(node)
                modified = True
        return modified
