"""CheckFolded: passes a graph without adapters unchanged, refuses (in ``requires``, naming
the node) a graph that still calls one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxprune.adapters import Adapter
from fxprune.errors import PreconditionError
from fxprune.models import cifar_resnet
from fxprune.passes import CheckFolded
from fxprune.tracing import trace
from tests.conftest import SMALL_SIZE as SIZE


class GroupedAfterAdapter(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Adapter(4, bias=False)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        return self.dw(self.a(torch.relu(x)))


def test_graph_without_adapters_passes_unchanged():
    gm = trace(cifar_resnet(20).eval(), SIZE)
    code = gm.code
    assert not CheckFolded()(gm).modified and gm.code == code


def test_adapter_left_is_named():
    gm = trace(GroupedAfterAdapter().eval(), (4, 8, 8), leaf_modules=[Adapter])
    with pytest.raises(PreconditionError, match="could not be folded: a"):
        CheckFolded()(gm)
