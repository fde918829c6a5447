"""BatchNormModules: a functional eval-mode batch norm over constant statistics becomes an
``nn.BatchNorm2d`` module.

``F.batch_norm(x, μ, σ², γ, β, training=False, eps=ε)`` computes ``(x − μ)/√(σ²+ε)·γ + β``
per channel, exactly what ``nn.BatchNorm2d`` with those tensors computes in eval mode. Zoos
write it this way inside their norm + activation layers (timm's ``BatchNormAct2d`` is a
``BatchNorm2d`` subclass whose forward calls ``F.batch_norm`` on its own parameters and then
its ``drop`` and ``act`` children), which leaves the traced graph with no BN module after the
conv and four ``get_attr`` inputs that every analysis would take for extra paths. The module
takes over the same tensor objects (nothing is copied); see ``install_module`` for its path.

Does not fire for batch norms over computed statistics, in training mode (``training`` not
the constant ``False``), on inputs that are not 4-D, or with only one of γ, β. A second run
finds only modules.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from fxprune.graph import shape_of
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import as_parameter, fetch_attr, modules_for_functions

_STATE = ("running_mean", "running_var", "weight", "bias")


def _batchnorm_state(node: fx.Node) -> dict[str, fx.Node | None] | None:
    """The ``get_attr`` nodes of a foldable functional batch norm, by module attribute name."""
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None
    bound = normalize_function(node.target, node.args, node.kwargs,
                               normalize_to_only_use_kwargs=True)
    if bound is None or bound.kwargs.get("training") is not False:
        return None
    state = {name: bound.kwargs.get(name) for name in _STATE}
    constants = [value is None or isinstance(value, fx.Node) and value.op == "get_attr"
                 for value in state.values()]
    input_shape = shape_of(bound.kwargs["input"])
    if not all(constants) or state["running_mean"] is None or state["running_var"] is None \
            or (state["weight"] is None) != (state["bias"] is None) \
            or input_shape is None or len(input_shape) != 4:
        return None
    return {**state, "input": bound.kwargs["input"], "eps": bound.kwargs["eps"],
            "momentum": bound.kwargs["momentum"]}


def _module(gm: fx.GraphModule, state: dict) -> nn.BatchNorm2d:
    mean = fetch_attr(gm, state["running_mean"].target)
    bn = nn.BatchNorm2d(mean.numel(), eps=state["eps"], momentum=state["momentum"],
                        affine=state["weight"] is not None, device=mean.device, dtype=mean.dtype)
    bn.running_mean, bn.running_var = mean, fetch_attr(gm, state["running_var"].target)
    if state["weight"] is not None:
        bn.weight, bn.bias = as_parameter(gm, state["weight"]), as_parameter(gm, state["bias"])
    return bn.eval()


def _replacement(gm: fx.GraphModule, node: fx.Node):
    state = _batchnorm_state(node)
    if state is None:
        return None
    reads = {state[name] for name in _STATE if state[name] is not None}
    return _module(gm, state), "bn", reads, state["input"]


class BatchNormModules(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, modules_for_functions(gm, _replacement))
