"""StaticSamePadding: a conv that pads TensorFlow-style ('SAME') from its input's size in its
own forward becomes a static zero pad plus a plain ``nn.Conv2d``, for the traced input size.

TF 'SAME' pads each spatial dim of size ``i`` by ``p = max((⌈i/s⌉ − 1)·s + (k − 1)·d + 1 − i, 0)``,
``⌊p/2⌋`` before and the rest after. Such a conv (timm's ``Conv2dSame``) computes its padding
from ``x.shape`` with ``math.ceil``, so torch.fx cannot trace it and ``fxprune.trace`` keeps it
as an opaque leaf. Its input size is known from shape propagation, so the padding is a
constant: equal padding becomes the conv's own ``padding``, unequal padding (stride 2 on even
sizes) an ``nn.ZeroPad2d`` node before an unpadded conv — the form analysis and folding know.

Because only the class, not the forward, is visible, the rewrite is checked before it is made:
the leaf and its replacement run on the same random input (float64) and must agree to 1e-9
relative. Does not fire for plain ``nn.Conv2d`` modules, subclasses whose forward computes
something else (weight standardisation), modules called at several nodes, or inputs without
a recorded 4-D shape. The rewritten conv is a plain module, so a second run finds nothing.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from fxprune.adapters import Adapter, MaskedConv
from fxprune.graph import module_of, named_modules, owns_module, shape_of
from fxprune.meta import set_tensor_meta, tensor_meta
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import finalize, free_child_name, replace_module

TOLERANCE = 1e-9


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) TF-'SAME' padding of one spatial dim."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _static_form(conv: nn.Conv2d, height: int, width: int) -> nn.Module:
    """A plain conv (equal padding) or ZeroPad2d + conv (unequal) sharing ``conv``'s tensors."""
    top, bottom = same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
    left, right = same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
    equal = top == bottom and left == right
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      (top, left) if equal else 0, conv.dilation, conv.groups,
                      conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    plain.weight = conv.weight
    plain.bias = conv.bias
    return plain if equal else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), plain)


def _computes_the_same(original: nn.Module, static: nn.Module, shape: tuple[int, ...]) -> bool:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, *shape[1:]), generator=generator, dtype=torch.float64)
    with torch.no_grad():
        try:
            expected = copy.deepcopy(original).double()(x)
        except Exception:  # a forward that needs more than the input is not a padded conv
            return False
        got = copy.deepcopy(static).double()(x)
    return expected.shape == got.shape and bool(
        (expected - got).abs().max() <= TOLERANCE * expected.abs().max().clamp_min(1))


class StaticSamePadding(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        modules = named_modules(gm)
        modified = False
        for node in list(gm.graph.nodes):
            conv = module_of(node, modules)
            shape = shape_of(node.args[0]) if node.args and isinstance(
                node.args[0], fx.Node) else None
            if not isinstance(conv, nn.Conv2d) or type(conv) in (nn.Conv2d, Adapter, MaskedConv) \
                    or shape is None or len(shape) != 4 or not owns_module(gm, node):
                continue
            static = _static_form(conv, shape[2], shape[3])
            if not _computes_the_same(conv, static, shape):
                continue
            if isinstance(static, nn.Sequential):
                _insert_pad(gm, node, static[0])
                static = static[1]
            replace_module(gm, node, static)
            modified = True
        if modified:
            finalize(gm)
        return PassResult(gm, modified)


def _insert_pad(gm: fx.GraphModule, conv_node: fx.Node, pad: nn.ZeroPad2d) -> None:
    """Register ``pad`` beside the conv's module and call it on the conv's input."""
    parent_path, _, leaf = conv_node.target.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    name = free_child_name(parent, f"{leaf}_pad")
    parent.add_module(name, pad)
    with gm.graph.inserting_before(conv_node):
        pad_node = gm.graph.call_module(f"{parent_path}.{name}" if parent_path else name,
                                        (conv_node.args[0],))
    source = tensor_meta(conv_node.args[0])  # the padded shape, computed on the meta device
    padded = pad(torch.empty(source.shape, dtype=source.dtype, device="meta"))
    set_tensor_meta(pad_node, _extract_tensor_metadata(padded))
    conv_node.args = (pad_node, *conv_node.args[1:])
