"""ConvModules: a functional 2-D convolution with a constant weight becomes an ``nn.Conv2d``.

``F.conv2d(x, W, b, stride, padding, dilation, groups)`` is what ``nn.Conv2d`` with those
tensors and hyper-parameters computes. Zoos call it directly where a conv transforms its weight
first (weight standardisation, folded to a constant by ``FoldConstants``) or pads on its own.
Only a module is a conv to the analysis and a target for folding adapters and BN.
``padding='valid'`` is 0; ``padding='same'`` becomes the equal padding it means at stride 1
(it needs an even ``dilation·(k−1)``). The module takes over the same tensors (a ``get_attr``
of a parameter stays that parameter; a folded buffer becomes a parameter of the module).

Does not fire when the weight or bias is computed from the input, when a stride, padding,
dilation or group count is (it comes from the input's shape), for odd 'same' padding, or on
inputs that are not 4-D. A buffer weight (a fixed blur filter) stays fixed: the module's
parameter is created without gradient. A second run finds only modules.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

from fxprune.graph import shape_of
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import as_parameter, fetch_attr, modules_for_functions


_CONV_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _explicit_padding(padding, kernel: tuple[int, int], dilation: tuple[int, int]):
    """Integer padding for ``padding`` (ints, 'valid' or stride-1 'same'), or None."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return None if any(total % 2 for total in totals) else tuple(t // 2 for t in totals)
    return _pair(padding)


def _conv_arguments(node: fx.Node) -> dict | None:
    if node.op != "call_function" or node.target is not F.conv2d:
        return None
    # bound by hand: torch's schema normaliser refuses conv2d's two overloads (int, str padding)
    arguments = dict(bias=None, stride=1, padding=0, dilation=1, groups=1)
    arguments.update(zip(_CONV_PARAMETERS, node.args))
    arguments.update(node.kwargs)
    weight, bias = arguments["weight"], arguments["bias"]
    constant = [isinstance(weight, fx.Node) and weight.op == "get_attr",
                bias is None or isinstance(bias, fx.Node) and bias.op == "get_attr"]
    input_shape = shape_of(arguments["input"])
    settings = [arguments[name] for name in ("stride", "padding", "dilation", "groups")]
    if not all(constant) or input_shape is None or len(input_shape) != 4 or any(
            isinstance(value, fx.Node) or isinstance(value, (tuple, list)) and any(
                isinstance(part, fx.Node) for part in value) for value in settings):
        return None  # a stride or padding computed from the input is not a module's
    return arguments


def _module(gm: fx.GraphModule, arguments: dict) -> nn.Conv2d | None:
    weight = fetch_attr(gm, arguments["weight"].target)
    kernel, dilation = tuple(weight.shape[2:]), _pair(arguments["dilation"])
    padding = _explicit_padding(arguments["padding"], kernel, dilation)
    if padding is None or arguments["padding"] == "same" and _pair(arguments["stride"]) != (1, 1):
        return None
    groups = arguments["groups"]
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], kernel, arguments["stride"],
                     padding, dilation, groups, bias=arguments["bias"] is not None,
                     device=weight.device, dtype=weight.dtype)
    conv.weight = as_parameter(gm, arguments["weight"])
    conv.bias = as_parameter(gm, arguments["bias"])
    return conv


def _replacement(gm: fx.GraphModule, node: fx.Node):
    arguments = _conv_arguments(node)
    conv = _module(gm, arguments) if arguments is not None else None
    if conv is None:
        return None
    reads = {arguments["weight"]} | ({arguments["bias"]} if arguments["bias"] else set())
    return conv, "conv", reads, arguments["input"]


class ConvModules(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, modules_for_functions(gm, _replacement))
