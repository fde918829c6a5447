"""The 1x1 adapter convolution and the float64 algebra that folds it into a neighbouring conv.

An adapter ``A`` is a 1x1 conv with weight ``M`` (C x C) and optional bias ``a``, initialised to
the identity; around a pruned feature map it is rectangular (C -> N selecting the kept filters,
N -> C putting them back). Folding, for a conv ``W`` (O x I x kh x kw, bias ``b``):

* after the conv (``A(W*x + b)``):  ``W'[o] = sum_c M[o, c] W[c]``, ``b' = M b + a``.
* before the conv (``W*(A x)``):   ``W'[:, i] = sum_c W[:, c] M[c, i]``; a bias ``a`` folds to
  ``b' = b + sum_{c,kh,kw} W[:, c, kh, kw] a[c]`` only when the conv has no padding, since
  zero padding of ``A x`` is not ``A`` of the zero-padded ``x`` at the borders.
* BN after a conv: ``W' = W γ/σ``, ``b' = (b − μ) γ/σ + β`` with ``σ = sqrt(var + eps)``.
* a masked conv (unstructured pruning, ``MaskedConv``): ``W' = (W * U) ⊙ M`` — the adapter
  ``U`` acts inside the conv so that the mask's zeros survive the fold.

All folds compute in float64 and cast back, and build new modules, so a module shared with the
caller's original model is never changed in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


ADAPTER_META = "fxprune.adapter_site"  # node.meta of an adapter node: its AdapterSite
# node.meta of the nodes a filter pruning inserted or changed (adapters, BN): the producer's name
PRUNE_GROUP_META = "fxprune.prune_group"
# node.meta of a node on a pruned residual stream: the indices of the original channels it
# still carries, so its value can be compared with the teacher's at those channels
KEPT_CHANNELS_META = "fxprune.kept_channels"


@dataclass(frozen=True)
class AdapterSite:
    """Where an adapter goes: at the ``"input"`` of conv node ``conv`` (for that conv only) or
    at its ``"output"`` (between the conv and all its consumers, e.g. its BN)."""

    conv: str
    side: str

    def __post_init__(self):
        if self.side not in ("input", "output"):
            raise ValueError(f"adapter side must be 'input' or 'output', not {self.side!r}")


class Adapter(nn.Conv2d):
    """A 1x1 conv that a recovery step trains and a fold removes. It starts as ``[I | 0]``
    (out x in): the identity when square, a selection of the first channels otherwise (a
    pruning pass then sets the selection it wants)."""

    def __init__(self, channels: int, bias: bool, out_channels: int | None = None):
        out_channels = channels if out_channels is None else out_channels
        super().__init__(channels, out_channels, kernel_size=1, bias=bias)
        with torch.no_grad():
            self.weight.copy_(torch.eye(out_channels, channels).view(out_channels, channels, 1, 1))
            if self.bias is not None:
                self.bias.zero_()

    @property
    def matrix(self) -> torch.Tensor:
        return self.weight[:, :, 0, 0]


class MaskedConv(nn.Module):
    """``conv(x, (W * U) ⊙ M)``: a frozen conv, its fixed mask and a trainable 1x1 adapter."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor):
        super().__init__()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kernel_size, self.in_channels = conv.kernel_size, conv.in_channels
        self.out_channels = conv.out_channels
        self.register_buffer("frozen_weight", conv.weight.detach().clone())
        self.register_buffer("frozen_bias", None if conv.bias is None else
                             conv.bias.detach().clone())
        self.register_buffer("mask", mask.to(conv.weight.dtype))
        self.adapter = nn.Parameter(torch.eye(conv.in_channels, dtype=conv.weight.dtype,
                                              device=conv.weight.device))

    def masked_weight(self) -> torch.Tensor:
        return torch.einsum("ockl,ci->oikl", self.frozen_weight, self.adapter) * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.masked_weight(), self.frozen_bias, self.stride, self.padding,
                        self.dilation)

    def folded(self) -> nn.Conv2d:
        """The plain conv this computes, weight in float64 then cast back."""
        weight = torch.einsum("ockl,ci->oikl", self.frozen_weight.double(),
                              self.adapter.detach().double()) * self.mask.double()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, bias=self.frozen_bias is not None,
                         device=self.frozen_weight.device, dtype=self.frozen_weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight.to(conv.weight.dtype))
            if self.frozen_bias is not None:
                conv.bias.copy_(self.frozen_bias)
        return conv


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None,
               in_channels: int | None = None) -> nn.Conv2d:
    """A new conv with ``conv``'s geometry and the given parameters; an adapter stays an
    adapter (so a BN folded into an unfoldable adapter does not hide it)."""
    conv_type = Adapter if isinstance(conv, Adapter) else nn.Conv2d
    new = nn.Conv2d(in_channels or conv.in_channels, weight.shape[0], conv.kernel_size,
                    stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    groups=conv.groups, bias=bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight.to(conv.weight.dtype))
        if bias is not None:
            new.bias.copy_(bias.to(conv.weight.dtype))
    new.train(conv.training)
    new.__class__ = conv_type  # Adapter adds no state to nn.Conv2d
    return new


def _bias64(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        return torch.zeros(conv.out_channels, dtype=torch.float64, device=conv.weight.device)
    return conv.bias.detach().double()


def fold_after(conv: nn.Conv2d, adapter: nn.Conv2d) -> nn.Conv2d:
    """The conv computing ``adapter(conv(x))``; requires ``conv.groups == 1``."""
    matrix = adapter.weight.detach().double()[:, :, 0, 0]
    weight = torch.einsum("oc,cikl->oikl", matrix, conv.weight.detach().double())
    bias = matrix @ _bias64(conv)
    if adapter.bias is not None:
        bias = bias + adapter.bias.detach().double()
    has_bias = conv.bias is not None or adapter.bias is not None
    return _conv_like(conv, weight, bias if has_bias else None)


def fold_before(adapter: nn.Conv2d, conv: nn.Conv2d) -> nn.Conv2d:
    """The conv computing ``conv(adapter(x))``; requires ``conv.groups == 1`` and, when the
    adapter has a bias, no padding."""
    matrix = adapter.weight.detach().double()[:, :, 0, 0]
    weight64 = conv.weight.detach().double()
    weight = torch.einsum("ockl,ci->oikl", weight64, matrix)
    bias = _bias64(conv)
    if adapter.bias is not None:
        bias = bias + torch.einsum("ockl,c->o", weight64, adapter.bias.detach().double())
    has_bias = conv.bias is not None or adapter.bias is not None
    return _conv_like(conv, weight, bias if has_bias else None, in_channels=adapter.in_channels)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """The conv computing ``bn(conv(x))`` with ``bn``'s running statistics."""
    scale = bn.weight.detach().double() if bn.affine else torch.ones_like(
        bn.running_var, dtype=torch.float64)
    shift = bn.bias.detach().double() if bn.affine else torch.zeros_like(scale)
    scale = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    bias = (_bias64(conv) - bn.running_mean.double()) * scale + shift
    return _conv_like(conv, weight, bias)
