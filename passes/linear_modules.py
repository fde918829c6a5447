"""LinearModules: a functional linear layer with constant weights becomes an ``nn.Linear``.

``F.linear(x, W, b) = x Wᵀ + b`` is what ``nn.Linear`` with those tensors computes. Zoos reach
it by subclassing ``nn.Linear`` (timm's classifier ``Linear`` calls ``F.linear`` on its own
parameters), which traces into ``get_attr`` nodes instead of a module: the classifier then
counts for no MACs and is no module to export or inspect. The module takes over the same
tensors (see ``install_module`` for its path).

Does not fire when the weight or bias is computed from the input, or the weight is not a
matrix; a second run finds only modules.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import as_parameter, fetch_attr, modules_for_functions


def _is_constant(value) -> bool:
    return isinstance(value, fx.Node) and value.op == "get_attr"


def _linear(gm: fx.GraphModule, weight: fx.Node, bias: fx.Node | None) -> nn.Linear:
    tensor = fetch_attr(gm, weight.target)
    linear = nn.Linear(tensor.shape[1], tensor.shape[0], bias=bias is not None,
                       device=tensor.device, dtype=tensor.dtype)
    linear.weight = as_parameter(gm, weight)
    linear.bias = as_parameter(gm, bias)
    return linear


def _replacement(gm: fx.GraphModule, node: fx.Node):
    if node.op != "call_function" or node.target is not F.linear:
        return None
    bound = normalize_function(node.target, node.args, node.kwargs,
                               normalize_to_only_use_kwargs=True)
    weight, bias = (bound.kwargs["weight"], bound.kwargs.get("bias")) if bound else (None, None)
    if not _is_constant(weight) or not (bias is None or _is_constant(bias)) or \
            fetch_attr(gm, weight.target).dim() != 2:
        return None
    reads = {weight} | ({bias} if bias is not None else set())
    return _linear(gm, weight, bias), "linear", reads, bound.kwargs["input"]


class LinearModules(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, modules_for_functions(gm, _replacement))
