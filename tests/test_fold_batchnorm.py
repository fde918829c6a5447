"""FoldBatchNorm: ``bn(conv(x))`` becomes one conv. Equivalence in float64 (and float32) with
random BN statistics and biases, over paddings, strides, dilations and groups; the cases that
must not fold; idempotence; the caller's model left alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxprune.models import cifar_resnet
from fxprune.passes import FoldBatchNorm
from fxprune.tracing import trace
from tests.helpers import (FP32_RTOL, FP64_ATOL, calibrate_and_randomize, count_modules,
                           max_abs_diff, max_rel_diff)




class ConvBN(nn.Module):
    def __init__(self, cin=4, cout=8, kernel=3, stride=1, padding=1, dilation=1, groups=1,
                 bias=False, affine=True, padding_mode="zeros"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias,
                              padding_mode)
        self.bn = nn.BatchNorm2d(cout, affine=affine)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TwoUsers(nn.Module):
    """``conv`` feeds its BN and an add: folding would change the add's operand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.other = ConvBN(4, 4)

    def forward(self, x):
        y = self.conv(x)
        return self.other(F.relu(self.bn(y)) + y)


class SharedConv(nn.Module):
    """One conv module called twice, each call with its own BN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv(F.relu(self.bn1(self.conv(x)))))


class SharedBN(nn.Module):
    """One BN module after two different convs: each call folds into its own conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv2(F.relu(self.bn(self.conv1(x)))))


class NoStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


class AfterNonConv(nn.Module):
    """BNs after a ReLU and after a pooling: nothing to fold into."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(F.max_pool2d(self.bn1(F.relu(self.conv(x))), 2))


def _prepared(model, size=(4, 8, 8), dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            nn.init.normal_(module.bias, std=0.5)
    model = model.to(dtype).eval()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    if all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        calibrate_and_randomize(model, x, seed=seed + 1)
    return model, x, trace(model, size)


def _run(module, x):
    with torch.no_grad():
        return module(x)


def _bn_nodes(gm):
    modules = dict(gm.named_modules())
    return [node.name for node in gm.graph.nodes
            if node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d)]


CONFIGS = {
    "k3_s1_p1": {},
    "k3_s2_p1_bias": {"stride": 2, "bias": True},
    "k1_s1_p0_bias": {"kernel": 1, "padding": 0, "bias": True},
    "k3_s2_p0": {"stride": 2, "padding": 0},
    "k3_dilation2_p2": {"dilation": 2, "padding": 2, "bias": True},
    "grouped": {"groups": 2, "bias": True},
    "depthwise_s2": {"cout": 4, "groups": 4, "stride": 2},
    "reflect_padding": {"padding_mode": "reflect", "bias": True},
    "bn_without_affine": {"affine": False, "bias": True},
}


@pytest.mark.parametrize("config", CONFIGS)
def test_fold_is_exact_in_float64(config):
    model, x, gm = _prepared(ConvBN(**CONFIGS[config]))
    ref, n_nodes = _run(model, x), len(gm.graph.nodes)

    result = FoldBatchNorm()(gm)

    assert result.modified and result.graph_module is gm
    gm.graph.lint()
    assert len(gm.graph.nodes) == n_nodes - 1 and _bn_nodes(gm) == []
    assert count_modules(gm, nn.BatchNorm2d) == 0 and count_modules(gm, nn.Conv2d) == 1
    folded = gm.get_submodule("conv")
    assert folded.bias is not None and folded.weight.dtype == torch.float64
    original = model.conv
    assert (folded.stride, folded.padding, folded.dilation, folded.groups,
            folded.padding_mode) == (original.stride, original.padding, original.dilation,
                                     original.groups, original.padding_mode)
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


@pytest.mark.parametrize("config", ["k3_s2_p1_bias", "depthwise_s2", "bn_without_affine"])
def test_fold_float32_relative_error(config):
    model, x, gm = _prepared(ConvBN(**CONFIGS[config]), dtype=torch.float32)
    ref = _run(model, x)
    assert FoldBatchNorm()(gm).modified
    assert gm.get_submodule("conv").weight.dtype == torch.float32
    assert max_rel_diff(ref, _run(gm, x)) <= FP32_RTOL


def test_whole_cifar_resnet():
    model, x, gm = _prepared(cifar_resnet(20), size=(3, 16, 16))
    ref = _run(model, x)
    assert count_modules(gm, nn.BatchNorm2d) == 19
    assert FoldBatchNorm()(gm).modified
    gm.graph.lint()
    assert count_modules(gm, nn.BatchNorm2d) == 0 and count_modules(gm, nn.Conv2d) == 19
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


def test_shared_bn_module_folds_at_each_call():
    model, x, gm = _prepared(SharedBN())
    ref = _run(model, x)
    assert FoldBatchNorm()(gm).modified
    assert count_modules(gm, nn.BatchNorm2d) == 0 and count_modules(gm, nn.Conv2d) == 2
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


# --- must not fold ----------------------------------------------------------------------------


def test_conv_with_two_users_is_not_folded_but_the_other_bn_is():
    model, x, gm = _prepared(TwoUsers())
    ref = _run(model, x)
    assert _bn_nodes(gm) == ["bn", "other_bn"]

    assert FoldBatchNorm()(gm).modified  # fired exactly once

    gm.graph.lint()
    assert _bn_nodes(gm) == ["bn"]
    assert len(next(n for n in gm.graph.nodes if n.name == "conv").users) == 2
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


@pytest.mark.parametrize("model_type", [SharedConv, NoStats, AfterNonConv])
def test_does_not_fire(model_type):
    model, x, gm = _prepared(model_type())
    code, bns, ref = gm.code, _bn_nodes(gm), _run(gm, x)

    result = FoldBatchNorm()(gm)

    assert not result.modified and result.graph_module is gm
    assert gm.code == code and _bn_nodes(gm) == bns and len(bns) == 2 - (model_type is NoStats)
    assert torch.equal(_run(gm, x), ref)
    if model_type is SharedConv:
        assert gm.get_submodule("conv") is gm.get_submodule("conv")
        assert [n.target for n in gm.graph.nodes if n.op == "call_module"].count("conv") == 2


# --- idempotence and the caller's model -------------------------------------------------------


def test_second_run_does_nothing():
    model, x, gm = _prepared(ConvBN(stride=2, bias=True))
    assert FoldBatchNorm()(gm).modified
    code, out = gm.code, _run(gm, x)
    result = FoldBatchNorm()(gm)
    assert not result.modified
    assert gm.code == code and torch.equal(_run(gm, x), out)


def test_original_module_is_not_modified():
    model, x, gm = _prepared(cifar_resnet(20), size=(3, 16, 16))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    out = _run(model, x)

    FoldBatchNorm()(gm)

    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert count_modules(model, nn.BatchNorm2d) == 19
    assert torch.equal(_run(model, x), out)


class StandardizedConv(nn.Conv2d):
    """A conv subclass with its own forward (weight standardisation): folding into a plain
    nn.Conv2d would silently drop the standardisation."""

    def forward(self, x):
        weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


def test_conv_subclass_is_not_folded():
    model = nn.Sequential(StandardizedConv(3, 4, 3, padding=1), nn.BatchNorm2d(4)).double().eval()
    gm = trace(model, (3, 8, 8), leaf_modules=[StandardizedConv])
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = gm(x)
    assert not FoldBatchNorm()(gm).modified
    torch.testing.assert_close(gm(x), expected, rtol=0, atol=0)
