"""Closed-form adapters: where the mimicked feature is linear in the adapter, the layer-wise
objective is a linear least-squares problem, solved here exactly instead of by gradient steps.

An adapter ``A`` (C x C, optional bias ``a``) feeding a conv ``W`` (O x C x kh x kw, no
activation in between) produces ``y = W * (A x + a)``. With ``U = unfold(x)`` (the conv's
patches: channel ``c'``, kernel offset ``k``, output position ``p``)

    y[o, p] = sum_{c, c', k} W[o, c, k] A[c, c'] U[c', k, p]

so ``y`` is linear in ``vec(A)``. The normal equations of ``min ||y - t||^2`` have the Gram

    G[(c, c'), (d, d')] = sum_{k, l} M[c, k, d, l] R[c', k, d', l],
    M = W^T W (over o),  R = U U^T (over images and positions),

and right-hand side ``b[c, c'] = sum_{k, p} (W^T t)[c, k, p] U[c', k, p]``: both need one pass
over the tiny set, and ``G`` has (C·C')^2 entries whatever the set size. A bias enters as a
constant input channel that is zero where the conv pads, exactly as ``a`` is (zero padding acts
after the adapter). An adapter *after* a conv (``y = A x + a``, compared with the teacher's
conv output) is the case ``W = I``, ``k = 1``; its Gram is block diagonal and solved as such.

A ridge ``lambda ||A - A0||^2`` towards the adapter's current value ``A0`` (the identity, or
the selection of a pruned map; ``lambda`` relative to the Gram's mean diagonal) keeps the solve
well posed on very small sets and leaves unused directions where they were. Adapters may be
rectangular (C' inputs, C outputs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_BATCH = 64


def _with_bias_channel(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(x.shape[0], 1, *x.shape[2:])], dim=1)


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(batch, C', K, P) patches of ``x`` as ``conv`` sees them (zero padding)."""
    unfolded = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                        stride=conv.stride)
    kernel = conv.kernel_size[0] * conv.kernel_size[1]
    return unfolded.view(x.shape[0], x.shape[1], kernel, -1)


def _ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, prior: torch.Tensor,
                 ridge: float) -> torch.Tensor:
    strength = ridge * gram.diagonal().mean().clamp_min(1e-12)
    system = gram + strength * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(system, rhs + strength * prior)


def _current(adapter: nn.Conv2d) -> torch.Tensor:
    """The adapter as an out x (in [+ 1]) matrix, the bias (if any) as the last column."""
    matrix = adapter.weight.detach().double()[:, :, 0, 0]
    if adapter.bias is None:
        return matrix
    return torch.cat([matrix, adapter.bias.detach().double()[:, None]], dim=1)


@torch.no_grad()
def solve_before_conv(adapter: nn.Conv2d, conv: nn.Conv2d, features: torch.Tensor,
                      target: torch.Tensor, ridge: float = 1e-4) -> None:
    """Set ``adapter`` (feeding ``conv``) to the least-squares fit of ``conv(adapter(x))`` to
    ``target`` (the teacher's conv output) over ``features`` (the adapter's inputs)."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("closed-form adapters need an ungrouped, zero-padded conv")
    weight = conv.weight.detach().double().flatten(2)  # O x C x K
    channels, kernel = weight.shape[1], weight.shape[2]
    inputs = adapter.in_channels + (adapter.bias is not None)
    mixing = torch.einsum("ock,odl->ckdl", weight, weight)
    exact = dict(dtype=torch.float64, device=weight.device)
    patch_gram = torch.zeros(inputs, kernel, inputs, kernel, **exact)
    rhs = torch.zeros(channels, inputs, **exact)
    bias = conv.bias.detach().double().view(1, -1, 1) if conv.bias is not None else 0.0
    for begin in range(0, len(features), _BATCH):
        x = features[begin:begin + _BATCH].double()
        x = _with_bias_channel(x) if adapter.bias is not None else x
        patches = _patches(conv, x)
        wanted = target[begin:begin + _BATCH].double().flatten(2) - bias  # B x O x P
        patch_gram += torch.einsum("bxkp,bylp->xkyl", patches, patches)
        back_projected = torch.einsum("ock,bop->bckp", weight, wanted)
        rhs += torch.einsum("bckp,bxkp->cx", back_projected, patches)
    gram = torch.einsum("ckdl,xkyl->cxdy", mixing, patch_gram).reshape(channels * inputs, -1)
    solution = _ridge_solve(gram, rhs.reshape(-1), _current(adapter).reshape(-1),
                            ridge).view(channels, inputs)
    _assign(adapter, solution)


@torch.no_grad()
def solve_after_conv(adapter: nn.Conv2d, features: torch.Tensor, target: torch.Tensor,
                     ridge: float = 1e-4) -> None:
    """Set ``adapter`` to the least-squares fit of ``adapter(x)`` to ``target`` (the teacher's
    feature at the same place) over ``features`` (the adapter's inputs)."""
    channels = adapter.out_channels
    inputs = adapter.in_channels + (adapter.bias is not None)
    exact = dict(dtype=torch.float64, device=features.device)
    gram = torch.zeros(inputs, inputs, **exact)
    rhs = torch.zeros(inputs, channels, **exact)
    for begin in range(0, len(features), _BATCH):
        x = features[begin:begin + _BATCH].double()
        x = _with_bias_channel(x) if adapter.bias is not None else x
        x = x.transpose(0, 1).flatten(1)  # C' x (B·H·W)
        gram += x @ x.T
        rhs += x @ target[begin:begin + _BATCH].double().transpose(0, 1).flatten(1).T
    solution = _ridge_solve(gram, rhs, _current(adapter).T, ridge).T
    _assign(adapter, solution)


def _assign(adapter: nn.Conv2d, solution: torch.Tensor) -> None:
    inputs = adapter.in_channels
    adapter.weight.copy_(solution[:, :inputs].reshape(adapter.weight.shape))
    if adapter.bias is not None:
        adapter.bias.copy_(solution[:, inputs])
