"""Seeded random small CNNs for the property tests.

``random_cnn(seed)`` builds, in float64, a stem conv, 2-4 stages of 1-4 blocks each and a
global-average-pool + linear head, for a 3x16x16 input. Blocks are drawn from:

* ``basic``: conv-[BN]-act-conv-[BN] + identity shortcut, optional trailing activation;
* ``projection``: the same branch + a 1x1 conv(+BN) shortcut;
* ``parameter-free``: the same branch + an option-A shortcut (``F.pad(x[:, :, ::2, ::2])``) or
  avg-pool + channel pad (no parameters);
* ``shared``: (rarely) a basic block whose branch calls one conv module twice;
* ``plain``: a conv-[BN]-act unit without shortcut;
* ``inverted``: [expand 1x1] - depthwise 3x3 - linear project 1x1, identity shortcut when the
  shapes match.

Widths are multiples of 4 in 4..16, strides 1 or 2, kernels 1 or 3, ReLU or ReLU6, with or
without BN, each block written either with ``nn.Sequential`` / activation modules or in
functional style (``F.relu``, ``x + y``, ``torch.add``, ``Tensor.add``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS = (4, 8, 12, 16)
INPUT_SIZE = (3, 16, 16)


@dataclass(frozen=True)
class BlockSpec:
    kind: str  # "basic" | "shared" | "projection" | "parameter-free" | "plain" | "inverted"
    in_channels: int
    out_channels: int
    stride: int
    has_shortcut: bool  # a residual join (an add) exists


def _act(kind: str, functional: bool, x: Tensor, module: nn.Module | None) -> Tensor:
    if not functional:
        return module(x)
    return F.relu(x) if kind == "relu" else F.relu6(x)


def _act_module(kind: str) -> nn.Module:
    return nn.ReLU() if kind == "relu" else nn.ReLU6()


class ConvUnit(nn.Module):
    """conv -> [BN] -> [activation], functional or module style."""

    def __init__(self, rng: random.Random, cin: int, cout: int, kernel: int, stride: int,
                 act: str | None, bn: bool, functional: bool, groups: int = 1):
        super().__init__()
        bias = (not bn) or rng.random() < 0.3
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2,
                              groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout, affine=rng.random() < 0.9) if bn else None
        self.act_kind = act
        self.functional = functional
        self.act = _act_module(act) if act is not None and not functional else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act_kind is not None:
            x = _act(self.act_kind, self.functional, x, self.act)
        return x


def _sequential_unit(rng: random.Random, cin: int, cout: int, kernel: int, stride: int,
                     act: str | None, bn: bool, groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2,
                                         groups=groups, bias=(not bn) or rng.random() < 0.3)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(_act_module(act))
    return nn.Sequential(*layers)


def _unit(rng, cin, cout, kernel, stride, act, bn, functional, groups=1) -> nn.Module:
    if functional:
        return ConvUnit(rng, cin, cout, kernel, stride, act, bn, True, groups)
    if rng.random() < 0.5:
        return _sequential_unit(rng, cin, cout, kernel, stride, act, bn, groups)
    return ConvUnit(rng, cin, cout, kernel, stride, act, bn, False, groups)


class OptionAShortcut(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, (cout - cin) // 2
        self.extra = (cout - cin) - 2 * self.pad

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad + self.extra))


class PoolPadShortcut(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            x = F.avg_pool2d(x, 2)
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))


class Residual(nn.Module):
    """``post_act(branch(x) + shortcut(x))`` with a random way of writing the add."""

    def __init__(self, rng: random.Random, branch: nn.Module, shortcut: nn.Module | None,
                 post_act: str | None, functional: bool):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.post_kind = post_act
        self.functional = functional
        self.post = _act_module(post_act) if post_act is not None and not functional else None
        self.add_style = rng.choice(("+", "+r", "torch.add", "method"))

    def forward(self, x: Tensor) -> Tensor:
        y = self.branch(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if self.add_style == "+":
            out = y + s
        elif self.add_style == "+r":
            out = s + y
        elif self.add_style == "torch.add":
            out = torch.add(y, s)
        else:
            out = y.add(s)
        if self.post_kind is not None:
            out = _act(self.post_kind, self.functional, out, self.post)
        return out


class FunctionalBasic(nn.Module):
    """A basic block written out by hand (no nn.Sequential, no submodule for the branch)."""

    def __init__(self, rng: random.Random, channels: int, kernel: int, act: str, bn: bool):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=pad, bias=not bn)
        self.bn1 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=pad, bias=not bn)
        self.bn2 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.act = act
        self.post = rng.random() < 0.8

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))
        out = F.relu(out) if self.act == "relu" else F.relu6(out)
        out = self.bn2(self.conv2(out))
        out = out + x
        if self.post:
            out = F.relu(out) if self.act == "relu" else F.relu6(out)
        return out


class SharedConvBasic(nn.Module):
    """A basic block whose branch calls one conv module twice (shared weights, separate BNs):
    adapters next to the shared conv cannot fold, and its BNs cannot either."""

    def __init__(self, rng: random.Random, channels: int, kernel: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.shared = nn.Conv2d(channels, channels, kernel, padding=kernel // 2,
                                bias=rng.random() < 0.5)
        self.bn2 = nn.BatchNorm2d(channels)
        self.bn3 = nn.BatchNorm2d(channels)
        self.act = _act_module(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.shared(out)))
        out = self.bn3(self.shared(out))
        return self.act(out + x)


class Inverted(nn.Module):
    def __init__(self, rng: random.Random, cin: int, cout: int, stride: int, act: str, bn: bool,
                 functional: bool):
        super().__init__()
        expand = rng.choice((1, 2, 3))
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_unit(rng, cin, hidden, 1, 1, act, bn, functional))
        layers.append(_unit(rng, hidden, hidden, 3, stride, act, bn, functional, groups=hidden))
        layers.append(_unit(rng, hidden, cout, 1, 1, None, bn, functional))
        self.layers = nn.Sequential(*layers) if not functional else nn.ModuleList(layers)
        self.functional = functional
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        if self.functional:
            out = x
            for layer in self.layers:
                out = layer(out)
        else:
            out = self.layers(x)
        return x + out if self.residual else out


class RandomCNN(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], width: int, classes: int,
                 pool_module: bool):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool_module else None
        self.fc = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.pool(x) if self.pool is not None else F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def _branch(rng, cin, cout, kernel, stride, act, bn, functional) -> nn.Module:
    first = _unit(rng, cin, cout, kernel, stride, act, bn, functional)
    second = _unit(rng, cout, cout, kernel, 1, None, bn, functional)
    return nn.Sequential(first, second)


def _block(rng: random.Random, kind: str, cin: int, cout: int, stride: int
           ) -> tuple[nn.Module, BlockSpec]:
    act = rng.choice(("relu", "relu6"))
    bn = rng.random() < 0.75
    functional = rng.random() < 0.5
    kernel = rng.choice((1, 3, 3))
    post = act if rng.random() < 0.8 else None
    if kind == "shared":
        return SharedConvBasic(rng, cin, kernel, act), BlockSpec(kind, cin, cout, 1, True)
    if kind == "basic" and functional and rng.random() < 0.5:
        return FunctionalBasic(rng, cin, kernel, act, bn), BlockSpec(kind, cin, cout, 1, True)
    if kind == "basic":
        block = Residual(rng, _branch(rng, cin, cout, kernel, 1, act, bn, functional), None, post,
                         functional)
    elif kind == "projection":
        shortcut = _unit(rng, cin, cout, 1, stride, None, rng.random() < 0.7, functional)
        block = Residual(rng, _branch(rng, cin, cout, kernel, stride, act, bn, functional),
                         shortcut, post, functional)
    elif kind == "parameter-free":
        shortcut_type = OptionAShortcut if rng.random() < 0.5 else PoolPadShortcut
        block = Residual(rng, _branch(rng, cin, cout, kernel, stride, act, bn, functional),
                         shortcut_type(cin, cout, stride), post, functional)
    elif kind == "plain":
        block = _unit(rng, cin, cout, kernel, stride, act, bn, functional)
    else:
        block = Inverted(rng, cin, cout, stride, act, bn, functional)
        return block, BlockSpec(kind, cin, cout, stride, block.residual)
    return block, BlockSpec(kind, cin, cout, stride, kind != "plain")


def random_cnn_with_specs(seed: int) -> tuple[nn.Module, list[BlockSpec]]:
    """A random float64 CNN in eval mode and the specs of its blocks (stem excluded)."""
    rng = random.Random(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        width = rng.choice(WIDTHS)
        stem = _unit(rng, 3, width, 3, 1, rng.choice(("relu", "relu6")), rng.random() < 0.8,
                     rng.random() < 0.5)
        spatial = INPUT_SIZE[1]
        blocks, specs = [], []
        for _ in range(rng.randint(2, 4)):
            new_width = rng.choice(WIDTHS)
            stride = 2 if spatial >= 2 and rng.random() < 0.5 else 1
            for index in range(rng.randint(1, 4)):
                cin, cout = (width, new_width) if index == 0 else (new_width, new_width)
                block_stride = stride if index == 0 else 1
                same_shape = cin == cout and block_stride == 1
                if same_shape:
                    kinds = ["basic", "basic", "projection", "plain", "inverted"] * 3 + [
                        "shared"]
                else:
                    kinds = ["projection", "plain", "inverted"] + (
                        ["parameter-free", "parameter-free"] if cout >= cin else [])
                block, spec = _block(rng, rng.choice(kinds), cin, cout, block_stride)
                blocks.append(block)
                specs.append(spec)
            width = new_width
            spatial = (spatial + 1) // 2 if stride == 2 else spatial
        model = RandomCNN(stem, blocks, width, rng.randint(2, 5), rng.random() < 0.5)
    return model.double().eval(), specs


def random_cnn(seed: int) -> nn.Module:
    return random_cnn_with_specs(seed)[0]
