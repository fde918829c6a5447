"""The float64 algebra that folds an adapter, a BN or a mask into a neighbouring conv.

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

import torch
from torch import nn

from fxprune.adapters import Adapter, MaskedConv


def fold_mask(masked: MaskedConv) -> nn.Conv2d:
    """The plain conv a ``MaskedConv`` computes, ``W' = (W * U) ⊙ M``."""
    weight = torch.einsum("ockl,ci->oikl", masked.frozen_weight.double(),
                          masked.adapter.detach().double()) * masked.mask.double()
    conv = nn.Conv2d(masked.in_channels, masked.out_channels, masked.kernel_size, masked.stride,
                     masked.padding, masked.dilation, bias=masked.frozen_bias is not None,
                     device=masked.frozen_weight.device, dtype=masked.frozen_weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if masked.frozen_bias is not None:
            conv.bias.copy_(masked.frozen_bias)
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
