"""Small modules written the way model zoos write them (timm's idioms, without timm): a norm +
activation layer that calls ``F.batch_norm`` on its own parameters, shape asserts, a
weight-standardised conv, a TF-'SAME' conv that pads from the input's size, a linear layer
that calls ``F.linear``. ``ZooResNet`` puts them together into a small residual network.
``FunctionalResNet`` writes residual blocks as plain functional code."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchNormAct(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d``: a BN subclass whose forward asserts 4-D, calls the
    functional BN on its own tensors, then its ``drop`` and ``act`` children."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels)
        self.drop = nn.Dropout(0.1)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(self.drop(x))


class StdConv(nn.Conv2d):
    """A weight-standardised conv (BiT / NF-ResNet): ``W' = (W − mean W) / std W``, per
    output channel, computed in the forward."""

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class SameConv(nn.Conv2d):
    """TF-'SAME' padding computed from the input's size (timm's ``Conv2dSame``):
    ``math.ceil`` on a traced size makes torch.fx give up."""

    def forward(self, x):
        pads = []
        for size, kernel, stride, dilation in zip(x.shape[-2:], self.kernel_size, self.stride,
                                                  self.dilation):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1
                        - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.conv2d(F.pad(x, [left, right, top, bottom]), self.weight, self.bias,
                        self.stride, 0, self.dilation, self.groups)


class FunctionalLinear(nn.Linear):
    """A classifier that calls ``F.linear`` on its own tensors (timm's ``Linear``)."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class ZooBlock(nn.Module):
    """A basic residual block made of the zoo idioms above."""

    def __init__(self, channels: int, conv=nn.Conv2d):
        super().__init__()
        self.conv1 = conv(channels, channels, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct(channels)
        self.conv2 = conv(channels, channels, 3, padding=1, bias=False)
        self.bn2 = BatchNormAct(channels, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x):
        return F.relu(self.drop_path(self.bn2(self.conv2(self.bn1(self.conv1(x))))) + x)


class ZooResNet(nn.Module):
    """Stem (a TF-'SAME' stride-2 conv), two stages of two blocks (the second stage's convs
    weight-standardised), a stride-2 'SAME' conv between them, a functional classifier."""

    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.stem = SameConv(3, width, 3, stride=2, bias=False)
        self.stem_bn = BatchNormAct(width)
        self.stage1 = nn.Sequential(ZooBlock(width), ZooBlock(width))
        self.down = SameConv(width, 2 * width, 3, stride=2, bias=False)
        self.down_bn = BatchNormAct(2 * width)
        self.stage2 = nn.Sequential(ZooBlock(2 * width, StdConv), ZooBlock(2 * width, StdConv))
        self.head = FunctionalLinear(2 * width, classes)

    def forward(self, x):
        x = self.stage1(self.stem_bn(self.stem(x)))
        x = self.stage2(self.down_bn(self.down(x)))
        return self.head(x.mean((2, 3)))


class CSPStage(nn.Module):
    """A cross-stage-partial stage (CSPNet): half the channels go through residual blocks,
    the other half around them, and a 1x1 conv mixes the two again."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False),
                                    nn.BatchNorm2d(2 * channels), nn.ReLU())
        self.blocks = nn.Sequential(*(ZooBlock(channels) for _ in range(blocks)))
        self.mix = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x):
        around, through = self.expand(x).chunk(2, dim=1)
        return self.mix(torch.cat([around, self.blocks(through)], dim=1))


class CSPNet(nn.Module):
    """Stem, a CSP stage of three blocks, a stride-2 conv, a CSP stage of two blocks, head."""

    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = CSPStage(width, 3)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.stage2 = CSPStage(2 * width, 2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(x.mean((2, 3)))


class FunctionalResNet(nn.Module):
    """Residual blocks written as plain functional code: no nn.Sequential, no block modules,
    ``torch.add`` and ``+`` joins, a pooling shortcut, and a block without trailing ReLU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.d1, self.d2 = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(torch.add(self.a2(F.relu(self.a1(x))), x))
        x = x + self.b2(F.relu(self.b1(x)))
        shortcut = F.avg_pool2d(x, 2).repeat(1, 2, 1, 1)
        x = F.relu(self.c2(F.relu(self.c1(x))) + shortcut)
        x = F.relu(self.d2(F.relu(self.d1(x))) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
