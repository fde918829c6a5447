"""FoldBatchNorm: ``bn(conv(x))`` becomes one conv, ``W' = W γ/σ``, ``b' = (b − μ) γ/σ + β``.

Uses the BN's running statistics, i.e. the function the network computes in eval mode.
Does not fire when the conv's output has another user, when the conv's module is called at
more than one node (shared weights), when the conv is a subclass of ``nn.Conv2d`` (its own
``forward`` would be lost), or when the BN keeps no running statistics. Folding
removes the BN node, so a second run finds nothing to do.
"""

from __future__ import annotations

from torch import fx, nn

from fxprune.fold_algebra import fold_batchnorm
from fxprune.graph import foldable_conv, module_of, named_modules, owns_module
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize, replace_module


class FoldBatchNorm(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        modules = named_modules(gm)
        modified = False
        for node in list(gm.graph.nodes):
            bn = module_of(node, modules)
            if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
                continue
            producer = node.args[0]
            conv = foldable_conv(producer, modules, groups=None) if isinstance(
                producer, fx.Node) else None
            if conv is None or len(producer.users) != 1 or not owns_module(gm, producer):
                continue
            folded = fold_batchnorm(conv, bn)
            replace_module(gm, producer, folded)
            modules[producer.target] = folded
            node.replace_all_uses_with(producer)
            gm.graph.erase_node(node)
            modified = True
        if modified:
            finalize(gm)
        return PassResult(gm, modified)
