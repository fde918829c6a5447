"""Coupled maps (analysis) and PruneCoupledMaps (pass): residual streams found from the graph,
the streams that must not be listed, equivalence with a hand-pruned network in float64, exact
folding to narrower convs, refusals, idempotence, layer-wise recovery and the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import fx, nn
from torchvision.models.resnet import BasicBlock, ResNet

import fxprune
from fxprune import Drop, Options, Placement, Recovery, Schedule, StreamPruning
from fxprune.adapters import Adapter
from fxprune.analysis.channels import coupled_maps
from fxprune.analysis.structure import find_structure
from fxprune.cli import main
from fxprune.errors import FxpruneError, PreconditionError
from fxprune.graph import named_modules
from fxprune.meta import kept_channels, prune_group, stand_in
from fxprune.models import cifar_resnet
from fxprune.passes import PruneCoupledMaps, PruneFilters, folding
from fxprune.resolve import explicit_counts
from fxprune.recovery.finetune import FinetuneConfig
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.layer_groups import layer_groups
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.recovery.targets import student_targets, teacher_stages
from fxprune.segments import run_batched, segment
from fxprune.tracing import example_input, trace
from tests.helpers import FP64_ATOL, calibrate_and_randomize, count_modules, randomize_adapters

SIZE = (3, 32, 32)


def _tiny_resnet() -> nn.Module:
    """torchvision's ResNet with 2, 1, 1, 1 basic blocks and 1x1-conv downsample shortcuts,
    narrowed to 8-64 channels: three prunable streams (the last one feeds the pooling head)."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 1, 1, 1], num_classes=10, width_per_group=64)
    widths = {64: 8, 128: 16, 256: 32, 512: 64}
    for name, module in model.named_modules():  # narrow every layer, keeping the topology
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(widths.get(module.in_channels, module.in_channels),
                            widths[module.out_channels], module.kernel_size, module.stride,
                            module.padding, bias=False)
            model.set_submodule(name, new)
        elif isinstance(module, nn.BatchNorm2d):
            model.set_submodule(name, nn.BatchNorm2d(widths[module.num_features]))
    model.fc = nn.Linear(64, 10)
    return model.double().eval()


@pytest.fixture
def resnet():
    gm = trace(_tiny_resnet(), SIZE)
    calibrate_and_randomize(gm, example_input(SIZE, batch=8, seed=3, dtype=torch.float64))
    return gm


def test_streams_found_from_the_graph(resnet):
    streams = coupled_maps(resnet)
    assert [(m.name, m.channels) for m in streams] == [
        ("conv1", 8), ("layer2_0_conv2", 16), ("layer3_0_conv2", 32)]
    first, second = streams[0], streams[1]
    assert first.producers == ("conv1", "layer1_0_conv2", "layer1_1_conv2")
    assert first.consumers == ("layer1_0_conv1", "layer1_1_conv1", "layer2_0_conv1",
                               "layer2_0_downsample_0")
    assert first.batchnorms == ("bn1", "layer1_0_bn2", "layer1_1_bn2")
    assert second.producers == ("layer2_0_conv2", "layer2_0_downsample_0")
    assert second.consumers == ("layer3_0_conv1", "layer3_0_downsample_0")
    # a bottleneck network: the stem map feeds conv1 and the downsample (no add: 2 consumers)
    r50 = coupled_maps(trace(torchvision.models.resnet50().eval(), (3, 64, 64)))
    assert [(m.name, len(m.producers), len(m.consumers)) for m in r50] == [
        ("conv1", 1, 2), ("layer1_0_conv3", 4, 4), ("layer2_0_conv3", 5, 5),
        ("layer3_0_conv3", 7, 7)]


@pytest.mark.slow
def test_streams_that_must_not_be_listed():
    # option-A shortcuts slice and pad the stream: no CIFAR ResNet stream can be pruned
    assert coupled_maps(trace(cifar_resnet(20).eval(), SIZE)) == []
    # a single conv -> BN -> ReLU -> conv map is a PrunableMap, not a coupled one
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3))
    assert coupled_maps(trace(plain.eval(), SIZE)) == []
    # a stream read by a depthwise conv: its groups would have to shrink too
    assert coupled_maps(trace(_DepthwiseResidual().eval(), SIZE)) == []
    # MobileNetV2: the streams between inverted residuals (project -> add -> expand) qualify
    mbv2 = coupled_maps(trace(torchvision.models.mobilenet_v2().eval(), (3, 64, 64)))
    assert [(m.channels, len(m.producers)) for m in mbv2] == [
        (24, 2), (32, 3), (64, 4), (96, 3), (160, 3)]


class _DepthwiseResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(self.depthwise(x) + x)


def _hand_pruned(gm: fx.GraphModule, keep: dict[str, int]) -> fx.GraphModule:
    """The L1-pruned network computed directly: every BN of a stream outputs exact zeros on the
    pruned channels (gamma = beta = 0), which adds and ReLUs keep at zero."""
    modules, targets = named_modules(gm), {node.name: node.target for node in gm.graph.nodes}
    for stream in coupled_maps(gm):
        if stream.name not in keep:
            continue
        norms = sum(modules[targets[name]].weight.abs().flatten(1).sum(1)
                    for name in stream.producers)
        pruned = norms.argsort(descending=True, stable=True)[keep[stream.name]:]
        for name in stream.batchnorms:
            with torch.no_grad():
                modules[targets[name]].weight[pruned] = 0.0
                modules[targets[name]].bias[pruned] = 0.0
    return gm


def test_pruned_then_folded_equals_hand_pruning(resnet):
    x = example_input(SIZE, batch=4, seed=1, dtype=torch.float64)
    keep = {"conv1": 5, "layer2_0_conv2": 8, "layer3_0_conv2": 30}
    pruned = PruneCoupledMaps(keep)(trace(resnet, SIZE)).graph_module
    bn2 = next(node for node in pruned.graph.nodes if node.name == "layer1_0_bn2")
    assert pruned.get_submodule(bn2.target).num_features == 5
    expected = _hand_pruned(trace(resnet, SIZE), keep)(x)
    assert not torch.allclose(expected, resnet(x))  # the pruning does something
    torch.testing.assert_close(pruned(x), expected, rtol=0, atol=FP64_ATOL)
    folded = folding()(pruned).graph_module
    assert count_modules(folded, Adapter) == 0
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=FP64_ATOL)
    convs = {name: m for name, m in folded.named_modules() if isinstance(m, nn.Conv2d)}
    assert [convs[name].out_channels for name in ("conv1", "layer1.0.conv2", "layer1.1.conv2")] \
        == [5, 5, 5]
    assert convs["layer1.0.conv1"].in_channels == 5 and convs["layer2.0.conv1"].in_channels == 5
    assert convs["layer2.0.downsample.0"].in_channels == 5
    assert convs["layer2.0.downsample.0"].out_channels == 8


def test_trained_adapters_fold_exactly(resnet):
    gm = PruneCoupledMaps({"conv1": 4, "layer2_0_conv2": 12})(resnet).graph_module
    assert sum(prune_group(node) is not None for node in gm.graph.nodes) == (3 + 4 + 3) + \
        (2 + 2 + 2)  # per stream: producers' and consumers' adapters, BNs
    randomize_adapters(gm, seed=4, scale=0.3)
    x = example_input(SIZE, batch=3, seed=2, dtype=torch.float64)
    expected = gm(x)
    torch.testing.assert_close(folding()(gm).graph_module(x), expected, rtol=0,
                               atol=FP64_ATOL)


def test_refusals_change_nothing(resnet):
    before = str(resnet.graph)
    with pytest.raises(PreconditionError, match="'layer1_0_conv2': it heads no coupled map.*"
                                                "conv1, layer2_0_conv2, layer3_0_conv2"):
        PruneCoupledMaps({"conv1": 4, "layer1_0_conv2": 4})(resnet)
    with pytest.raises(PreconditionError, match="cannot keep 17 of the 16 channels"):
        PruneCoupledMaps({"layer2_0_conv2": 17})(resnet)
    assert str(resnet.graph) == before


def test_idempotent_and_empty_plan(resnet):
    first = PruneCoupledMaps({"conv1": 4})(resnet)
    assert first.modified
    graph = str(first.graph_module.graph)
    again = PruneCoupledMaps({"conv1": 4})(first.graph_module)
    assert not again.modified and str(again.graph_module.graph) == graph
    assert not PruneCoupledMaps({})(again.graph_module).modified


def test_layerwise_recovery_trains_a_stream_against_all_its_consumers(resnet):
    teacher = trace(resnet, SIZE)
    student = PruneCoupledMaps({"conv1": 4})(trace(resnet, SIZE)).graph_module
    images = example_input(SIZE, batch=16, seed=5, dtype=torch.float64)
    reports = recover(teacher, student, images, RecoveryConfig(
        schedule="layerwise", fit=FitConfig(lr=1e-3, max_steps=40, patience=40)),
        progress=False)
    assert len(reports) == 1
    assert reports[0].target == "layer1_0_conv1,layer1_1_conv1,layer2_0_conv1," \
        "layer2_0_downsample_0"
    assert len(reports[0].adapters) == 3 + 4 + 3
    assert reports[0].loss_after < 0.8 * reports[0].loss_before


def test_compress_prunes_streams_with_a_dropped_block():
    model = _tiny_resnet()
    images = example_input(SIZE, batch=8, seed=6, dtype=torch.float64)
    quick = Recovery(schedule=Schedule.LAYERWISE, placement=Placement.PAPER,
                     fit=FitConfig(lr=1e-3, max_steps=5, patience=5))
    result = fxprune.compress(model, images, SIZE, Options(
        drop=Drop.blocks("1.2"), streams=StreamPruning(0.5), recovery=quick), progress=False)
    report = result.report
    assert report.scheme.prune_streams == {"ratio": 0.5, "kept": {
        "conv1": 4, "layer2_0_conv2": 8, "layer3_0_conv2": 16}}
    models = report.models
    assert models["compressed"].macs == models["pruned"].macs < models["original"].macs
    assert count_modules(result.model, Adapter) == 0
    assert result.model.get_submodule("layer2.0.downsample.0").in_channels == 4
    with pytest.raises(FxpruneError, match="no residual stream of this network"):
        fxprune.compress(cifar_resnet(20).eval(), images.float(), SIZE, Options(
            drop=None, streams=StreamPruning(0.5), recovery=None), progress=False)


@pytest.mark.parametrize("schedule", ["stagewise", "joint"])
def test_stage_schedules_compare_a_narrowed_stage_output_at_its_kept_channels(schedule):
    """Stage outputs 1-3 lie on pruned streams: the student's N channels are compared with the
    teacher's same N channels, and recovery lowers that loss."""
    model = _tiny_resnet()
    images = example_input(SIZE, batch=8, seed=6, dtype=torch.float64)
    teacher = trace(model, SIZE)
    student = PruneCoupledMaps({"conv1": 4, "layer2_0_conv2": 8, "layer3_0_conv2": 16})(
        trace(model, SIZE)).graph_module
    outputs, targets = student_targets(student, teacher_stages(teacher, images))
    full = dict(zip(outputs, run_batched(
        segment(teacher, ["x"], [stand_in(teacher, s.blocks[-1].exit)
                                 for s in find_structure(teacher).stages]), [images], 8)))
    kept = [kept_channels(node) for node in student.graph.nodes
            if node.name in outputs]
    assert [len(channels) if channels else None for channels in kept] == [4, 8, 16, None]
    for name, target, channels in zip(outputs, targets, kept):
        expected = full[name] if channels is None else full[name][:, channels]
        torch.testing.assert_close(target, expected, rtol=0, atol=0)
    reports = recover(teacher, student, images, RecoveryConfig(
        schedule=schedule, fit=FitConfig(lr=1e-3, max_steps=20, patience=20)), progress=False)
    assert sum(r.loss_after for r in reports) < sum(r.loss_before for r in reports)


@pytest.mark.slow
def test_cli_prunes_streams_end_to_end(tmp_path):
    """``--prune-streams`` on torchvision's ResNet-18 (untrained; 32x32 noise images): streams
    narrowed, every adapter folded, ONNX matching, the scheme in the report."""
    out = tmp_path / "streams"
    assert main(["compress", "torchvision:resnet18", "--input-size", "3,32,32",
                 "--data", "noise:24:32", "--images", "8", "--prune-streams", "0.5",
                 "--schedule", "layerwise", "--init", "identity", "--steps", "3",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["prune_streams"]["kept"] == {"conv1": 32, "layer2_0_conv2": 64,
                                               "layer3_0_conv2": 128}
    assert report["adapters"] == 7 + 6 + 6  # producers and consumers of the three streams
    assert report["compressed"]["macs"] == report["pruned"]["macs"]
    assert report["compressed"]["macs"] / report["original"]["macs"] == pytest.approx(
        0.599, abs=0.001)
    assert report["onnx_max_abs_diff"] <= 1e-4
    assert "pruned 50% of the channels of 3 residual streams" in (out / "report.md").read_text()


class _TwoBranches(nn.Module):
    """RepVGG-like: a 3x3 and a 1x1 branch read the same map and are added: the stream's two
    producers share their input."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.wide, self.wide_bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.point, self.point_bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.stem_bn(self.stem(x)))
        return self.head(torch.relu(self.wide_bn(self.wide(h)) + self.point_bn(self.point(h))))


class _GatedStream(nn.Module):
    """A producer downstream of another one whose input also reads a map from before the
    stream: the segment must start from that map too."""

    def __init__(self):
        super().__init__()
        self.stem, self.pre = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.first, self.first_bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.middle = nn.Conv2d(8, 8, 3, padding=1)
        self.second, self.second_bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        early = torch.relu(self.stem(x))
        stream = torch.relu(self.first_bn(self.first(torch.relu(self.pre(early)))))
        gated = torch.relu(self.middle(stream)) * early
        return self.head(torch.relu(stream + self.second_bn(self.second(gated))))


class _PreActivation(nn.Module):
    """A pre-activation block whose shortcut conv is traced before conv1: the stream's first
    adapter comes before the pruned inner map that feeds its other producer, conv2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 16, 3, 2, 1)
        self.short = nn.Conv2d(8, 16, 1, 2)
        self.bn2, self.conv2 = nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, 1, 1)
        self.bn3, self.head = nn.BatchNorm2d(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        out = torch.relu(self.bn1(self.stem(x)))
        shortcut = self.short(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out)))) + shortcut
        return self.head(torch.relu(self.bn3(out)))


@pytest.mark.parametrize("network, stream, starts", [
    (_TwoBranches, "wide", ["relu"]),
    (_GatedStream, "first", ["relu", "relu_1"])])
def test_layerwise_segments_start_where_the_stream_reads(network, stream, starts):
    torch.manual_seed(0)
    teacher = trace(network().double().eval(), (3, 16, 16))
    images = example_input((3, 16, 16), batch=8, seed=5, dtype=torch.float64)
    calibrate_and_randomize(teacher, images)
    student = PruneCoupledMaps({stream: 5})(trace(teacher, (3, 16, 16))).graph_module
    assert [group[1] for group in layer_groups(student)] == [starts]
    reports = recover(teacher, student, images, RecoveryConfig(
        schedule="layerwise", fit=FitConfig(lr=1e-3, max_steps=30, patience=30)),
        progress=False)
    assert reports[0].loss_after < reports[0].loss_before


def test_layerwise_trains_what_feeds_a_stream_first():
    gm = trace(_PreActivation().eval(), (3, 16, 16))
    gm = PruneCoupledMaps({"short": 8})(gm).graph_module
    gm = PruneFilters({"conv1": 8})(gm).graph_module
    groups = [(sorted({prune_group(node) for node in members}), convs)
              for members, _, convs in layer_groups(gm)]
    assert groups == [(["conv1"], ["conv2"]), (["short"], ["head"])]


@pytest.mark.slow
def test_streams_feeding_the_head_conv_need_the_layerwise_schedule():
    """MobileNetV3's last stream feeds the head conv, past the last stage output: stage-wise
    recovery leaves it out (or refuses it by name); layer-wise prunes it, and the `mir`
    finetune then compares the narrowed pre-pooling feature at its kept channels."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    images, size = torch.randn(4, 3, 64, 64), (3, 64, 64)
    quick = FitConfig(lr=1e-3, max_steps=2, patience=2)
    staged = fxprune.compress(model, images, size, Options(
        drop=None, streams=StreamPruning(0.25), recovery=Recovery(fit=quick)), progress=False)
    assert list(staged.report.scheme.prune_streams["kept"]) == [
        "features_2_block_2_0", "features_4_block_3_0", "features_7_block_3_0"]
    with pytest.raises(FxpruneError, match="after features_9_block_3_0 feed convs past"):
        fxprune.compress(model, images, size, Options(
            drop=None, recovery=Recovery(fit=quick),
            streams=StreamPruning({"features_9_block_3_0": 0.5})), progress=False)
    layerwise = fxprune.compress(model, images, size, Options(
        drop=None, streams=StreamPruning(0.25),
        recovery=Recovery(schedule=Schedule.LAYERWISE, fit=quick),
        finetune=FinetuneConfig("mir", epochs=1)), progress=False)
    assert layerwise.report.scheme.prune_streams["kept"]["features_9_block_3_0"] == 72
    assert count_modules(layerwise.model, Adapter) == 0


def test_explicit_counts_take_integers_and_refuse_booleans():
    channels = {"conv1": 8}
    assert explicit_counts({"conv1": np.int64(3)}, channels, "map") == {"conv1": 3}
    assert explicit_counts({"conv1": 0.5}, channels, "map") == {"conv1": 4}
    with pytest.raises(FxpruneError, match="not True"):
        StreamPruning({"conv1": True})
