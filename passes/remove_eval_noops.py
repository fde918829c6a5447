"""RemoveEvalNoOps: bypass what computes the identity in eval mode — ``nn.Identity``, dropout
modules and functional dropout called with ``training=False``.

``y = dropout(x) = x`` at inference, so every user of ``y`` reads ``x`` instead. Zoos place such
nodes between a conv and its BN or activation (timm's norm layers carry a ``drop`` module), where
they would hide a conv–BN pair from folding and split a conv unit. Dropout is removed from the
graph fxprune compiles and ships, i.e. it is not applied while recovery trains the adapters
either (recovery mimics the eval-mode teacher, which applies none).

Does not fire when there is no such node (a functional dropout whose ``training`` argument is
not the constant ``False`` stays); a second run finds none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from fxprune.graph import module_of, named_modules
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize

DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                   nn.FeatureAlphaDropout)
DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                     F.feature_alpha_dropout, torch.dropout}


def _passes_through(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    module = module_of(node, modules)
    if module is not None:
        return type(module) is nn.Identity or isinstance(module, DROPOUT_MODULES)
    if node.op != "call_function" or node.target not in DROPOUT_FUNCTIONS:
        return False
    bound = normalize_function(node.target, node.args, node.kwargs,
                               normalize_to_only_use_kwargs=True)
    if bound is None:
        return False
    return bound.kwargs.get("training", bound.kwargs.get("train", True)) is False


class RemoveEvalNoOps(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        modules = named_modules(gm)
        bypassed = [node for node in gm.graph.nodes if _passes_through(node, modules)
                    and node.args and isinstance(node.args[0], fx.Node)]
        for node in bypassed:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        if bypassed:
            finalize(gm)
        return PassResult(gm, bool(bypassed))
