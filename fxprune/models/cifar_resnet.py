"""The CIFAR ResNet of He et al. 2016 (section 4.2) with option-A shortcuts.

This is our own definition of the architecture behind the pretrained akamaster checkpoints
(see the shared data README, section 1). Attribute names follow that checkpoint's keys once
the ``module.`` prefix is stripped, so its weights load strictly. The forward pass uses only
ops that ``torch.fx.symbolic_trace`` can record (no data-dependent Python control flow), so
the compression passes can rewrite it like any other graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED_DEPTHS = (20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample space by 2 and zero-pad channels, with no parameters.

    Used where a block halves the resolution and doubles the channels. ``symbolic_trace``
    records it inline (a slice and an ``F.pad`` whose channel padding is a constant); being a
    module still names those nodes in their ``nn_module_stack`` metadata, so passes that
    change the channel count around it can find them.
    """

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # None means identity: the input is added as is, so the graph holds no extra node.
        self.shortcut: PadShortcut | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """Stem, three stages of ``blocks_per_stage`` BasicBlocks (16/32/64 ch), GAP + linear."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """Kaiming-normal convs and linear, as the original training recipe assumed."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10) -> nn.Module:
    """A randomly initialised CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110)."""
    if depth not in SUPPORTED_DEPTHS:
        raise ValueError(
            f"CIFAR ResNet depth must be one of {', '.join(map(str, SUPPORTED_DEPTHS))}; "
            f"got {depth}"
        )
    return CifarResNet((depth - 2) // 6, num_classes)
