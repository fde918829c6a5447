"""Module types of recovery: the 1x1 ``Adapter`` conv, where one goes (``AdapterSite``) and
the ``MaskedConv`` of unstructured pruning. ``fxprune.fold_algebra`` folds them away."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AdapterSite:
    """Where an adapter goes: at the ``"input"`` of conv node ``conv`` (for that conv only) or
    at its ``"output"`` (between the conv and all its consumers, e.g. its BN)."""

    conv: str
    side: str

    def __post_init__(self):
        if self.side not in ("input", "output"):
            raise ValueError(f"adapter side must be 'input' or 'output', not {self.side!r}")

    def __str__(self) -> str:
        return f"{self.side} of {self.conv}"


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
