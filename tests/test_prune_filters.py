"""Prunable feature maps (analysis) and PruneFilters (pass): which maps are found, the Fig. 2
structure, L1 selection, equivalence with a hand-pruned network in float64, the cases that
must not fire, idempotence, and recovery of a pruned network."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxprune
from fxprune import FilterPruning, Options
from fxprune.adapters import Adapter
from fxprune.analysis.channels import prunable_maps
from fxprune.commands.compress import pruning_spec
from fxprune.errors import PreconditionError
from fxprune.meta import prune_group
from fxprune.models import cifar_resnet
from fxprune.passes import PruneFilters, folding
from fxprune.passes.prune_filters import keep_counts, l1_kept
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.tracing import example_input, trace
from tests.helpers import FP64_ATOL, count_modules, randomize_adapters
from tests.helpers import SMALL_SIZE as SIZE


class PlainNet(nn.Module):
    """conv -> BN -> ReLU -> maxpool -> conv -> ReLU -> conv: two maps, one through a pool and
    one without BN; the last conv feeds the head (not prunable)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=True)
        self.conv3 = nn.Conv2d(6, 5, 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = self.conv3(F.relu(self.conv2(x)))
        return x.mean((2, 3))


@pytest.fixture
def resnet(small_resnet):
    return small_resnet


@pytest.mark.slow
def test_maps_found_from_the_graph():
    r56 = fxprune.trace(cifar_resnet(56).eval(), (3, 32, 32))
    maps = prunable_maps(r56, fxprune.find_structure(r56))
    assert len(maps) == 27  # one inner map per basic block
    assert maps[0].block == "1.1" and maps[-1].block == "3.9"
    assert all(m.batchnorm and len(m.chain) == 1 for m in maps)
    r50 = fxprune.trace(torchvision.models.resnet50().eval(), (3, 64, 64))
    assert len(prunable_maps(r50)) == 32  # two per bottleneck, never conv3 (it feeds the add)
    vgg = fxprune.trace(torchvision.models.vgg16_bn().eval(), (3, 64, 64))
    assert len(prunable_maps(vgg)) == 12  # 13 convs; the last feeds the classifier
    mbv2 = fxprune.trace(torchvision.models.mobilenet_v2().eval(), (3, 64, 64))
    assert prunable_maps(mbv2) == []  # expand -> depthwise: the consumer is grouped
    per_channel_slope = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.Conv2d(4, 4, 3))
    assert prunable_maps(fxprune.trace(per_channel_slope.eval(), SIZE)) == []
    plain = prunable_maps(fxprune.trace(PlainNet().eval(), SIZE))
    assert [(m.producer, m.batchnorm, len(m.chain), m.consumer) for m in plain] == [
        ("conv1", "bn1", 2, "conv2"), ("conv2", None, 1, "conv3")]


def test_l1_selection_keeps_the_largest_filters_in_order():
    conv = nn.Conv2d(2, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -4.0, 2.0, 3.0, -2.0]).view(5, 1, 1, 1)
                          .repeat(1, 2, 1, 1))
    assert l1_kept([conv], 3).tolist() == [1, 2, 3]  # |-4|, |3|, then the tie 2 / -2 -> index 2
    assert keep_counts(prunable_maps(fxprune.trace(PlainNet(), SIZE)), 0.5) == {
        "conv1": 4, "conv2": 3}


def _hand_pruned(gm, keep):
    """The L1-pruned network computed directly: pruned channels zeroed after the activation."""
    def zero_pruned(kept):
        def hook(module, inputs):
            mask = torch.zeros(inputs[0].shape[1], dtype=inputs[0].dtype).index_fill(0, kept, 1)
            return (inputs[0] * mask.view(1, -1, 1, 1),)
        return hook

    modules = {node.name: gm.get_submodule(node.target) for node in gm.graph.nodes
               if node.op == "call_module"}
    return [modules[m.consumer].register_forward_pre_hook(
                zero_pruned(l1_kept([modules[m.producer]], keep[m.producer])))
            for m in prunable_maps(gm) if m.producer in keep]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pruned_then_folded_equals_hand_pruning(resnet, dtype):
    gm = resnet.to(dtype)
    x = example_input(SIZE, batch=4, seed=1, dtype=dtype)
    keep = keep_counts(prunable_maps(gm), 0.5)
    handles = _hand_pruned(gm, keep)
    expected = gm(x)
    for handle in handles:
        handle.remove()
    pruned = PruneFilters(keep)(trace(gm, SIZE)).graph_module
    assert sum(prune_group(node) is not None for node in pruned.graph.nodes) == 3 * len(keep)
    tolerance = dict(rtol=0, atol=FP64_ATOL) if dtype == torch.float64 else dict(
        rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pruned(x), expected, **tolerance)
    folded = folding()(pruned).graph_module
    assert count_modules(folded, Adapter) == 0
    torch.testing.assert_close(folded(x), expected, **tolerance)
    convs = {name: module for name, module in folded.named_modules()
             if isinstance(module, nn.Conv2d)}
    assert convs["layer1.0.conv1"].out_channels == 8 and convs["layer1.0.conv2"].in_channels == 8


def test_trained_adapters_fold_exactly(resnet):
    gm = PruneFilters(keep_counts(prunable_maps(resnet), 0.5))(resnet.double()).graph_module
    randomize_adapters(gm, seed=4, scale=0.3)
    for module in gm.modules():  # the pruned BN layers train too
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.mul_(1.3)
    x = example_input(SIZE, batch=3, seed=2, dtype=torch.float64)
    expected = gm(x)
    folded = folding()(gm).graph_module
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=FP64_ATOL)


def test_refusals_change_nothing(resnet):
    before = str(resnet.graph)
    with pytest.raises(PreconditionError, match="'layer1_0_conv2'.*does not head"):
        PruneFilters({"layer1_0_conv2": 8})(resnet)  # conv2 feeds the residual add
    with pytest.raises(PreconditionError, match="cannot keep 0 of the 16"):
        PruneFilters({"layer1_0_conv1": 0})(resnet)
    with pytest.raises(PreconditionError, match="in \\[0, 1\\)"):
        keep_counts(prunable_maps(resnet), 1.0)
    assert str(resnet.graph) == before


def test_idempotent_and_empty_plan(resnet):
    keep = {"layer1_0_conv1": 8}
    first = PruneFilters(keep)(resnet)
    assert first.modified
    graph = str(first.graph_module.graph)
    assert not PruneFilters(keep)(first.graph_module).modified
    assert str(first.graph_module.graph) == graph
    assert not PruneFilters({})(first.graph_module).modified


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["layerwise", "stagewise"])
def test_recovery_of_a_pruned_network(resnet, schedule):
    teacher = trace(resnet, SIZE)
    student = PruneFilters(keep_counts(prunable_maps(resnet), 0.5))(
        trace(resnet, SIZE)).graph_module
    images = example_input(SIZE, batch=24, seed=7)
    pruned = folding()(trace(student, SIZE)).graph_module
    config = RecoveryConfig(schedule=schedule, fit=FitConfig(lr=3e-3, max_steps=40,
                                                              patience=40))
    reports = recover(teacher, student, images, config, progress=False)
    if schedule == "layerwise":  # one step per pruned map: two adapters and the BN
        assert len(reports) == 9 and all(len(report.adapters) == 3 for report in reports)
    assert all(report.loss_after < report.loss_before for report in reports)
    recovered = folding()(student).graph_module
    error = F.mse_loss(recovered(images), teacher(images))
    assert error < 0.7 * F.mse_loss(pruned(images), teacher(images))


@pytest.mark.slow
def test_per_map_requests_mix_counts_and_ratios():
    """``prune_filters={name: int}`` keeps that many filters, ``{name: float}`` prunes that
    fraction of the map; unknown names and bad ratios are refused by name."""
    model = cifar_resnet(20).eval()
    images = example_input((3, 32, 32), batch=4, seed=1)
    def options(amount):
        return Options(drop=None, filters=FilterPruning(amount), recovery=None)

    result = fxprune.compress(model, images, (3, 32, 32), options(
        {"layer1_0_conv1": 0.25, "layer3_0_conv1": 10}), progress=False)
    assert result.report.scheme.prune_filters["kept"] == {"layer1_0_conv1": 12,
                                                          "layer3_0_conv1": 10}
    with pytest.raises(fxprune.FxpruneError, match="no prunable feature map starts at 'nope'"):
        fxprune.compress(model, images, (3, 32, 32), options({"nope": 0.5}), progress=False)
    with pytest.raises(fxprune.FxpruneError, match="ratio of 'layer1_0_conv1' must be in"):
        options({"layer1_0_conv1": 1.5})


@pytest.mark.slow
def test_maps_stage_wise_recovery_cannot_train_are_refused():
    """A plain network's maps all pass through stage outputs, which stage-wise recovery
    compares at full width: a ratio and a request by name are both refused; so are a network
    with no prunable map and a ratio of 1."""
    model, images = PlainNet().eval(), example_input(SIZE, batch=4, seed=1)
    for spec, message in ((0.5, "all prunable feature maps here pass through stage outputs"),
                          ({"conv1": 0.5}, "maps after conv1 pass through stage outputs")):
        with pytest.raises(fxprune.FxpruneError, match=message + ".*--schedule layerwise"):
            fxprune.compress(model, images, SIZE, Options(drop=None, filters=FilterPruning(spec)),
                             progress=False)
    mobilenet = torchvision.models.mobilenet_v2().eval()  # expand -> grouped depthwise only
    with pytest.raises(fxprune.FxpruneError, match="has no prunable feature map"):
        fxprune.compress(mobilenet, images, SIZE, Options(drop=None, filters=FilterPruning(0.5)),
                         progress=False)
    with pytest.raises(fxprune.FxpruneError, match=r"pruning ratio must be in \[0, 1\), not 1.0"):
        FilterPruning(1.0)


def test_cli_pruning_spec():
    assert pruning_spec("0.5") == 0.5
    assert pruning_spec("layer1_0_conv1=0.5, layer2_0_conv1 =0.25") == {
        "layer1_0_conv1": 0.5, "layer2_0_conv1": 0.25}
    for bad in ("half", "a=0.5,b", "=0.5", "a=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=RATIO"):
            pruning_spec(bad)
