"""MaskWeights: unstructured magnitude pruning of conv weights, recoverable with the paper's
masked adapter (Sec. 3.3) and folded back into a sparse plain conv.

For an ungrouped conv ``W`` (O x C x kh x kw) the mask ``M`` keeps the ``round((1 - s) |W|)``
entries of largest magnitude (ties to the lower flat index). The conv becomes a
``MaskedConv`` computing ``conv(x, (W * U) ⊙ M)`` with ``(W * U)[o, i] = sum_c W[o, c] U[c, i]``:
``U`` (C x C, the identity at first) is the only trainable parameter, ``W``, ``M`` and the bias
are buffers. At ``U = I`` it is the magnitude-pruned conv. ``FoldMaskedConvs`` replaces it by an
``nn.Conv2d`` with weight ``(W * U) ⊙ M`` (computed in float64), so the shipped weight has
exactly the mask's zeros whatever ``U`` learned.

Fires on every exactly-``nn.Conv2d`` node with ``groups == 1`` and zero padding whose module
it owns, or on the
``convs`` named; does not fire for convs already masked (idempotent), grouped convs, conv
subclasses or shared conv modules. Raises ``PreconditionError`` for a sparsity outside [0, 1)
or a named node that is not such a conv.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx, nn

from fxprune.adapters import MaskedConv
from fxprune.errors import PreconditionError
from fxprune.graph import foldable_conv, named_modules, owns_module
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import replace_module


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """1 where ``weight`` is among the ``round((1 - sparsity) * numel)`` largest magnitudes."""
    flat = weight.detach().abs().flatten().double()
    keep = round((1.0 - sparsity) * flat.numel())
    # stable sort: equal magnitudes keep the lower index first
    order = torch.sort(-flat, stable=True).indices[:keep]
    mask = torch.zeros_like(flat)
    mask[order] = 1.0
    return mask.view_as(weight).to(weight.dtype)


class MaskWeights(PassBase):
    def __init__(self, sparsity: float, convs: Iterable[str] | None = None):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise PreconditionError(f"sparsity must be in [0, 1), not {sparsity}")
        self.sparsity = sparsity
        self.convs = None if convs is None else list(convs)

    def requires(self, gm: fx.GraphModule) -> None:
        """Every named conv is masked already or maskable."""
        modules = named_modules(gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        for name in self.convs or ():
            node = nodes.get(name)
            if node is None or not isinstance(modules.get(getattr(node, "target", None)),
                                              MaskedConv) and not self._maskable(gm, node,
                                                                                 modules):
                raise PreconditionError(f"cannot mask '{name}': not an ungrouped nn.Conv2d "
                                        "node that owns its module")

    def call(self, gm: fx.GraphModule) -> PassResult:
        modules = named_modules(gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        if self.convs is not None:
            chosen = [nodes[name] for name in self.convs]
        else:
            chosen = [node for node in gm.graph.nodes if self._maskable(gm, node, modules)]
        chosen = [node for node in chosen if not isinstance(modules[node.target], MaskedConv)]
        for node in chosen:
            conv = modules[node.target]
            replace_module(gm, node, MaskedConv(conv, magnitude_mask(conv.weight, self.sparsity)))
        if chosen:
            gm.recompile()
        return PassResult(gm, bool(chosen))

    @staticmethod
    def _maskable(gm: fx.GraphModule, node: fx.Node, modules) -> bool:
        conv = foldable_conv(node, modules)
        return conv is not None and type(conv) is nn.Conv2d and conv.padding_mode == "zeros" \
            and owns_module(gm, node)
