"""FactorizeConvs: depthwise + pointwise and low-rank pairs — exact where the conv has that
structure, the adapter between the pair folds exactly, what must not fire, idempotence, and
recovery of a factorized network."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import fxprune
from fxprune import Decouple, Init, Options, Recovery
from fxprune.adapters import AdapterSite
from fxprune.errors import FxpruneError, PreconditionError
from fxprune.meta import factorized_by
from fxprune.models import cifar_resnet
from fxprune.passes import FactorizeConvs, InsertAdapters, folding
from fxprune.passes.factorize_convs import (OutputStatistics, dwpw_pair,
                                            factorizable, lowrank_pair)
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.tracing import example_input, trace
from tests.helpers import FP64_ATOL, randomize_adapters
from tests.helpers import SMALL_SIZE as SIZE


@pytest.fixture
def resnet(small_resnet):
    return small_resnet.double()


def test_dwpw_is_exact_for_a_separable_conv():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True).double()
    pointwise, depthwise = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, 9,
                                                                               dtype=torch.float64)
    with torch.no_grad():  # W[:, c] = p_c d_cᵀ: rank 1 per input channel
        conv.weight.copy_(torch.einsum("oc,ck->ock", pointwise, depthwise).view(6, 4, 3, 3))
    first, second = dwpw_pair(conv)
    assert first.groups == 4 and first.stride == (2, 2) and second.kernel_size == (1, 1)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(second(first(x)), conv(x), rtol=0, atol=1e-10)


def test_lowrank_at_full_energy_is_exact_and_projects_otherwise():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 8, 3, padding=1).double()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    outputs = conv(x).detach()
    statistics = OutputStatistics()
    for half in outputs.split(3):  # accumulated batch by batch
        statistics.add(half)
    first, second = lowrank_pair(conv, statistics, 1.0)
    torch.testing.assert_close(second(first(x)), outputs, rtol=0, atol=1e-9)
    small_first, small_second = lowrank_pair(conv, statistics, 0.4)
    assert small_first.out_channels < 8
    residual = second(first(x)) - small_second(small_first(x))
    # the kept part is the projection on the top principal directions: orthogonal residual
    approx = small_second(small_first(x)) - outputs.mean((0, 2, 3), keepdim=True)
    assert abs((residual * approx).sum().item()) < 1e-6 * residual.pow(2).sum().item() + 1e-9


@pytest.mark.parametrize("method", ["dwpw", "lowrank"])
def test_adapter_between_the_pair_folds_exactly(resnet, method):
    images = example_input(SIZE, batch=8, seed=4, dtype=torch.float64)
    gm = FactorizeConvs(method, energy=0.6, images=images)(trace(resnet, SIZE)).graph_module
    names = [node.name for node in gm.graph.nodes
             if node.args and isinstance(node.args[0], fx.Node) and factorized_by(node.args[0])]
    assert len(names) == 19  # every conv of ResNet-20 is 3x3 (option-A shortcuts have none)
    gm = InsertAdapters([AdapterSite(name, "input") for name in names])(gm).graph_module
    randomize_adapters(gm, seed=5, scale=0.3)
    x = example_input(SIZE, batch=3, seed=6, dtype=torch.float64)
    expected = gm(x)
    folded = folding()(gm).graph_module
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=FP64_ATOL)


def test_refusals_and_idempotence(resnet):
    with pytest.raises(PreconditionError, match="unknown factorization"):
        FactorizeConvs("svd")
    with pytest.raises(PreconditionError, match="calibration images"):
        FactorizeConvs("lowrank")
    with pytest.raises(PreconditionError, match="cannot factorize 'relu'"):
        FactorizeConvs("dwpw", ["relu"])(resnet)
    assert "conv1" in factorizable(resnet, "dwpw")
    first = FactorizeConvs("dwpw", ["conv1"])(resnet)
    assert first.modified
    graph = str(first.graph_module.graph)
    assert not FactorizeConvs("dwpw", ["conv1"])(first.graph_module).modified
    assert str(first.graph_module.graph) == graph


@pytest.mark.slow
def test_recovery_of_a_factorized_network(resnet):
    resnet = resnet.float()
    teacher = trace(resnet, SIZE)
    images = example_input(SIZE, batch=24, seed=7)
    student = FactorizeConvs("dwpw", ["layer1_0_conv1", "layer2_0_conv2"])(
        trace(resnet, SIZE)).graph_module
    student = InsertAdapters([AdapterSite("layer1_0_conv1", "input"),
                              AdapterSite("layer2_0_conv2", "input")])(student).graph_module
    before = torch.nn.functional.mse_loss(student(images), teacher(images)).item()
    for config in (RecoveryConfig(init="lstsq", fit=None),
                   RecoveryConfig(fit=FitConfig(lr=3e-3, max_steps=40, patience=40))):
        recover(teacher, student, images, config, progress=False)
    after = torch.nn.functional.mse_loss(folding()(student).graph_module(images),
                                         teacher(images)).item()
    assert after < 0.7 * before


@pytest.mark.slow
def test_compress_decouple_option():
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    images = example_input(SIZE, batch=8, seed=2)
    result = fxprune.compress(model, images, SIZE, Options(
        drop=None, decouple=Decouple.lowrank(0.5), recovery=Recovery(init=Init.LSTSQ, steps=0)),
        progress=False)
    report = result.report
    decoupled = report.scheme.decouple
    assert decoupled["method"] == "lowrank:0.5" and len(decoupled["convs"]) == 19
    models = report.models
    assert models["compressed"].macs == models["pruned"].macs < models["original"].macs
    with pytest.raises(FxpruneError, match="energy must be in"):
        Decouple.lowrank(1.5)


def test_lowrank_of_a_constant_output_keeps_one_component():
    conv = nn.Conv2d(2, 6, 1).double()
    statistics = OutputStatistics()
    statistics.add(torch.ones(2, 6, 3, 3, dtype=torch.float64))
    first, second = lowrank_pair(conv, statistics, 0.4)
    assert first.out_channels == 1 and second.out_channels == 6
