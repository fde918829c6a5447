"""FoldAdapters: constant-fold adapters into their neighbouring convs, one sweep over the
graph. The algebra is in ``fxprune.fold_algebra``. Per adapter ``A``, first match wins:

* ``A(conv(x))`` where ``A`` is the conv's only user  -> one conv (``W' = M W``).
* ``conv(A(x))`` where the conv is ``A``'s only user  -> one conv (``W' = W M``); with a bias
  on ``A`` only when the conv has no padding.

Does not fire for an adapter whose producer has other users and whose consumers are several
(a shared feature map), next to a grouped conv, a conv whose module is shared, or a subclass
of ``nn.Conv2d`` (its own ``forward`` would be lost). An adapter between a conv and its BN
folds once ``FoldBatchNorm`` has folded the BN: ``fxprune.passes.folding`` runs both to a
fixpoint.
"""

from __future__ import annotations

from torch import fx

from fxprune.adapters import Adapter
from fxprune.fold_algebra import fold_after, fold_before
from fxprune.graph import foldable_conv, module_of, named_modules, owns_module
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize, replace_module


class FoldAdapters(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            modules = named_modules(gm)
            adapter = module_of(node, modules)
            if isinstance(adapter, Adapter):
                modified |= _fold_after_producer(gm, node, adapter, modules) or \
                    _fold_before_consumer(gm, node, adapter, modules)
        if modified:
            finalize(gm)
        return PassResult(gm, modified)


def _fold_after_producer(gm: fx.GraphModule, node: fx.Node, adapter: Adapter, modules) -> bool:
    producer = node.args[0]
    conv = foldable_conv(producer, modules)
    if conv is None or len(producer.users) != 1 or not owns_module(gm, producer):
        return False
    replace_module(gm, producer, fold_after(conv, adapter))
    node.replace_all_uses_with(producer)
    gm.graph.erase_node(node)
    return True


def _fold_before_consumer(gm: fx.GraphModule, node: fx.Node, adapter: Adapter, modules) -> bool:
    consumers = list(node.users)
    consumer = consumers[0] if len(consumers) == 1 else None
    conv = foldable_conv(consumer, modules) if consumer is not None else None
    if conv is None or consumer.args[0] is not node or not owns_module(gm, consumer) or (
            adapter.bias is not None and any(pad != 0 for pad in conv.padding)):
        return False
    replace_module(gm, consumer, fold_before(adapter, conv))
    consumer.replace_input_with(node, node.args[0])
    gm.graph.erase_node(node)
    return True
