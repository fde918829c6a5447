"""FoldMaskedConvs: every masked conv (``MaskWeights``) becomes the plain conv it computes,
``W' = (W * U) ⊙ M`` in float64 (``fxprune.fold_algebra.fold_mask``), so the mask's zeros and
the trained adapter ``U`` end up in one ordinary weight.

Does not fire when the graph calls no ``MaskedConv`` (so a second run finds nothing to do).
"""

from __future__ import annotations

from torch import fx

from fxprune.fold_algebra import fold_mask
from fxprune.graph import masked_nodes, named_modules
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize, replace_module


class FoldMaskedConvs(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        modules = named_modules(gm)
        masked = masked_nodes(gm)
        for node in masked:
            replace_module(gm, node, fold_mask(modules[node.target]))
        if masked:
            finalize(gm)
        return PassResult(gm, bool(masked))
