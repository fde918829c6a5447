"""Structure analysis on real architectures and on a functional-style model."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

from fxprune.analysis.structure import find_structure
from fxprune.analysis.trunk import trunk
from fxprune.macs import node_macs, total_macs
from fxprune.models import cifar_resnet
from fxprune.tracing import example_input, trace
from tests.helpers import slow_case
from tests.zoo_modules import FunctionalResNet

SMALL = (3, 64, 64)


def _structure(model: nn.Module, size=SMALL):
    return find_structure(trace(model.eval(), size))


def _counts(structure) -> list[int]:
    return [len(stage.blocks) for stage in structure.stages]


@pytest.mark.parametrize("builder, counts", [
    ("resnet18", [2, 2, 2, 2]),
    ("resnet34", [3, 4, 6, 3]),
    ("resnet50", [3, 4, 6, 3]),
    slow_case("resnet101", [3, 4, 23, 3]),
    slow_case("wide_resnet50_2", [3, 4, 6, 3]),
    ("resnext50_32x4d", [3, 4, 6, 3]),
    slow_case("vgg16", [2, 2, 3, 3, 3]),
    slow_case("vgg16_bn", [2, 2, 3, 3, 3]),
    ("mobilenet_v2", [1, 2, 3, 4, 3, 3, 1]),
    slow_case("mobilenet_v3_large", [1, 2, 3, 4, 2, 3]),
    ("efficientnet_b0", [1, 2, 2, 3, 3, 4, 1]),
    ("regnet_x_400mf", [1, 2, 7, 12]),
])
def test_blocks_per_stage(builder, counts):
    structure = _structure(torchvision.models.get_model(builder))
    assert _counts(structure) == counts
    ids = [block.id for block in structure.blocks]
    assert ids == [f"{stage}.{index}" for stage, n in enumerate(counts, 1)
                   for index in range(1, n + 1)]


def test_resnet50_shortcuts_and_droppability():
    structure = _structure(torchvision.models.resnet50())
    first, second = structure.block("1.1"), structure.block("1.2")
    assert (first.kind, first.shortcut, first.droppable) == ("residual", "projection", False)
    assert len(first.shortcut_convs) == 1 and len(first.convs) == 3
    assert (second.shortcut, second.droppable) == ("identity", True)
    assert second.shortcut_output == second.entry
    assert [b.droppable for b in structure.stages[1].blocks] == [False, True, True, True]
    assert len(structure.stem) == 1 and structure.head == ()


def test_resnet18_first_block_is_droppable():
    structure = _structure(torchvision.models.resnet18())
    assert structure.block("1.1").shortcut == "identity"
    assert structure.block("1.1").droppable and not structure.block("2.1").droppable


@pytest.mark.parametrize("depth, per_stage", [(20, 3), (32, 5), (44, 7), (56, 9), (110, 18)])
def test_cifar_resnets_blocks_per_stage(depth, per_stage):
    assert _counts(_structure(cifar_resnet(depth), (3, 32, 32))) == [per_stage] * 3


def test_cifar_resnet56_option_a_shortcuts():
    structure = _structure(cifar_resnet(56), (3, 32, 32))
    assert _counts(structure) == [9, 9, 9]
    for stage in structure.stages:
        assert all(len(block.convs) == 2 for block in stage.blocks)
    assert structure.block("1.1").shortcut == "identity"
    for block_id in ("2.1", "3.1"):
        block = structure.block(block_id)
        assert (block.shortcut, block.droppable, block.shortcut_convs) == (
            "parameter-free", False, ())
    assert all(block.droppable for stage in structure.stages for block in stage.blocks[1:])


@pytest.mark.slow
def test_vgg16_droppable_convs():
    structure = _structure(torchvision.models.vgg16())
    assert all(block.kind == "conv" and block.shortcut == "none" for block in structure.blocks)
    # the first conv of stages 1-4 widens the features; stage 5 keeps 512 channels
    assert [block.droppable for block in structure.blocks] == [
        False, True, False, True, False, True, True, False, True, True, True, True, True]


def test_mobilenet_v2_inverted_residuals():
    structure = _structure(torchvision.models.mobilenet_v2())
    assert all(block.kind == "inverted_residual" for block in structure.blocks)
    assert [block.shortcut for block in structure.stages[2].blocks] == [
        "none", "identity", "identity"]
    assert len(structure.block("1.1").convs) == 2  # t=1: depthwise + project
    assert len(structure.block("3.2").convs) == 3  # expand + depthwise + project
    assert len(structure.stem) == 1 and len(structure.head) == 1


def test_functional_style_blocks():
    structure = _structure(FunctionalResNet(), (3, 16, 16))
    assert _counts(structure) == [2, 2]
    assert [(b.shortcut, b.droppable) for b in structure.blocks] == [
        ("identity", True), ("identity", True), ("parameter-free", False), ("identity", True)]
    assert structure.block("1.2").exit == structure.block("1.2").join  # no trailing ReLU
    assert structure.block("1.1").exit != structure.block("1.1").join
    assert structure.stem == ("stem",)


def test_trunk_is_a_chain_of_dominators():
    gm = trace(FunctionalResNet().eval(), (3, 16, 16))
    names = [node.name for node in trunk(gm.graph)]
    assert names[0] == "x" and "a1" not in names and "stem" in names


@pytest.mark.parametrize("builder, expected", [
    slow_case("resnet34", 3.66e9), slow_case("resnet50", 4.09e9), ("mobilenet_v2", 300.8e6)])
def test_macs_match_paper_table1(builder, expected):
    gm = trace(torchvision.models.get_model(builder).eval(), (3, 224, 224))
    macs = total_macs(node_macs(gm, [example_input((3, 224, 224))]))
    assert macs == pytest.approx(expected, rel=0.01)


def test_resnet56_macs_and_block_macs():
    gm = trace(cifar_resnet(56).eval(), (3, 32, 32))
    macs = node_macs(gm, [example_input((3, 32, 32))])
    assert total_macs(macs) == pytest.approx(125.49e6, rel=0.01)
    structure = find_structure(gm)
    # an identity block: two 3x3 convs at C channels, HxW: 2 * 9 * C^2 * H * W
    assert total_macs(macs, structure.block("1.2").nodes) == 2 * 9 * 16 * 16 * 32 * 32
    assert total_macs(macs, structure.block("3.9").nodes) == 2 * 9 * 64 * 64 * 8 * 8


class _PaddedInvertedResidualNet(nn.Module):
    """TF-'SAME'-style: an asymmetric ZeroPad2d before a stride-2 depthwise conv, one
    identity inverted-residual block, and a head that flattens with ``x.size(0)``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6())
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, 2, groups=16), nn.ReLU6())
        self.project = nn.Conv2d(16, 8, 1)
        self.block = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6(),
                                   nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
                                   nn.Conv2d(16, 8, 1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        batch = x.size(0)
        x = self.project(self.depthwise(self.pad(self.expand(self.stem(x)))))
        x = x + self.block(x)
        return self.fc(x.mean((2, 3)).view(batch, -1))


def test_padding_and_shape_paths_do_not_hide_blocks():
    gm = trace(_PaddedInvertedResidualNet().eval(), (3, 16, 16))
    assert [node.name for node in trunk(gm.graph)][:2] == ["x", "stem"]  # size(0) is no path
    structure = find_structure(gm)
    first, second = structure.blocks
    assert first.convs == ("expand_0", "depthwise_0", "project")  # the pad stays inside
    assert not first.droppable and second.droppable and second.shortcut == "identity"


def test_structure_after_passes_that_add_nodes_without_shapes():
    """Nodes a pass adds carry no ShapeProp record; the trunk must still see through them."""
    from fxprune.pass_manager import PassManager
    from fxprune.passes import DropBlocks, FactorizeConvs
    gm = trace(cifar_resnet(20).eval(), (3, 32, 32))
    gm = PassManager([FactorizeConvs("dwpw"), DropBlocks(["1.2"])])(gm).graph_module
    assert [block.id for block in find_structure(gm).stages[0].blocks] == ["1.1", "1.2"]
