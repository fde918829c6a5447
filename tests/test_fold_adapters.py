"""FoldAdapters (one sweep): an adapter next to an owned plain conv folds into it, BN layers
stay; float64 equivalence; an adapter behind a BN waits for FoldBatchNorm (does not fire);
idempotence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.adapters import Adapter, AdapterSite
from fxprune.models import cifar_resnet
from fxprune.passes import FoldAdapters, InsertAdapters
from fxprune.tracing import example_input, trace
from tests.conftest import SMALL_SIZE as SIZE
from tests.helpers import FP64_ATOL, calibrate_and_randomize, count_modules, randomize_adapters


class BNThenAdapter(nn.Module):
    """conv -> bn -> adapter -> relu: the adapter's producer is a BN, not a conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.a = Adapter(4, bias=True)

    def forward(self, x):
        return F.relu(self.a(self.bn(self.conv(x))))


def test_adapters_fold_into_their_convs_and_bn_stays():
    torch.manual_seed(0)
    gm = trace(cifar_resnet(20).double().eval(), SIZE)
    x = example_input(SIZE, batch=2, seed=1, dtype=torch.float64)
    calibrate_and_randomize(gm, x)
    sites = [AdapterSite("layer1_1_conv1", "input"), AdapterSite("layer2_0_conv2", "output")]
    gm = InsertAdapters(sites)(gm).graph_module
    randomize_adapters(gm, scale=0.3)
    expected, norms = gm(x), count_modules(gm, nn.BatchNorm2d)

    result = FoldAdapters()(gm)

    assert result.modified and count_modules(gm, Adapter) == 0
    assert count_modules(gm, nn.BatchNorm2d) == norms
    torch.testing.assert_close(gm(x), expected, rtol=0, atol=FP64_ATOL)
    code = gm.code
    assert not FoldAdapters()(gm).modified and gm.code == code


def test_adapter_behind_a_batchnorm_does_not_fold():
    gm = trace(BNThenAdapter().double().eval(), (3, 8, 8), leaf_modules=[Adapter])
    code = gm.code
    result = FoldAdapters()(gm)
    assert not result.modified and gm.code == code and count_modules(gm, Adapter) == 1
