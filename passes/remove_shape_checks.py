"""RemoveShapeChecks: erase the model's own runtime checks (``torch._assert`` and friends)
and the shape arithmetic that only fed them.

A check computes nothing: ``y = f(x)`` with or without ``assert ndim(x) == 4``. Traced, a check
is a node with no users that reads a tensor's ``ndim`` or ``shape``, so every feature map it
inspects gains a second reader that is not a data path. ``fxprune.trace`` propagates shapes
before this pass, so each check has run once, at the traced input size, before it goes.

Does not fire on a graph without such checks; a second run finds none.
"""

from __future__ import annotations

import torch
from torch import fx

from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize

CHECKS = {torch._assert, torch._assert_async, torch._check, torch._check_is_size,
          torch.fx._symbolic_trace._assert_is_none}


class RemoveShapeChecks(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        checks = [node for node in gm.graph.nodes
                  if node.op == "call_function" and node.target in CHECKS]
        for node in checks:
            gm.graph.erase_node(node)
        if checks:
            finalize(gm)  # the ndim / shape comparisons they read are now dead
        return PassResult(gm, bool(checks))
