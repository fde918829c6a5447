"""DropBlocks: the graph after a drop, the function it computes (compared with the network
computed by hand without the block), its negative cases, idempotence and block-id stability."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fxprune.analysis.structure import find_structure
from fxprune.errors import PreconditionError
from fxprune.graph import module_of, named_modules
from fxprune.meta import dropped_blocks
from fxprune.models import cifar_resnet
from fxprune.passes import DropBlocks
from fxprune.tracing import trace
from tests.helpers import (FP64_ATOL, assert_equivalent, calibrate_and_randomize, count_modules,
                           max_abs_diff)




# --- tiny models ------------------------------------------------------------------------------


def _act(kind: str | None, x: torch.Tensor) -> torch.Tensor:
    return {"relu": F.relu, "relu6": F.relu6, None: lambda t: t}[kind](x)


class Basic(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (identity or 1x1 conv-BN), then ``post``."""

    def __init__(self, cin: int, cout: int, stride: int = 1, post: str | None = "relu",
                 projection: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout)) if projection else None
        self.post = post

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """What the block computes with its residual branch removed."""
        return _act(self.post, x if self.shortcut is None else self.shortcut(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return _act(self.post, out + (x if self.shortcut is None else self.shortcut(x)))


class InvertedNoShortcut(nn.Module):
    """[expand 1x1] - depthwise 3x3 - linear 1x1 project, no shortcut (MobileNetV2 style)."""

    def __init__(self, cin: int, cout: int, expand: int = 2):
        super().__init__()
        hidden = cin * expand
        layers = [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()] \
            if expand != 1 else []
        layers += [nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyNet(nn.Module):
    """Stem conv-BN(-act), a list of blocks, global average pool + linear."""

    def __init__(self, blocks: list[nn.Module], width: int, stem_width: int | None = None,
                 stem_act: str | None = "relu"):
        super().__init__()
        stem_width = stem_width or width
        self.stem = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem_width)
        self.stem_act = stem_act
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.manual(x, {})

    def manual(self, x: torch.Tensor, replace: dict) -> torch.Tensor:
        """The forward pass with ``blocks[i]`` replaced by ``replace[i]`` (eager only)."""
        x = _act(self.stem_act, self.stem_bn(self.stem(x)))
        for index, block in enumerate(self.blocks):
            x = replace[index](x) if index in replace else block(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _tiny_resnet(stem_act: str | None = "relu", post: str = "relu") -> TinyNet:
    """Blocks 1.1-1.3 (identity, 4 ch, 8x8), 2.1 (projection, stride 2, 8 ch), 2.2 (identity)."""
    torch.manual_seed(0)
    blocks = [Basic(4, 4, post=post), Basic(4, 4, post=post), Basic(4, 4, post=post),
              Basic(4, 8, stride=2, projection=True), Basic(8, 8)]
    return TinyNet(blocks, width=8, stem_width=4, stem_act=stem_act)


def _vgg() -> nn.Sequential:
    """Conv units 1.1 (3->4), 1.2, then max-pool, 2.1 (4->8), 2.2, 2.3."""
    torch.manual_seed(0)

    def unit(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(unit(3, 4), unit(4, 4), nn.MaxPool2d(2), unit(4, 8), unit(8, 8),
                         unit(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _prepared(model: nn.Module, size=(3, 8, 8), dtype=torch.float64):
    """``model`` in ``dtype`` with random BN statistics, an input, and its traced graph."""
    model = model.to(dtype).eval()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    calibrate_and_randomize(model, x, seed=2)
    return model, x, trace(model, size)


def _run(module: nn.Module, x: torch.Tensor, replace: dict | None = None) -> torch.Tensor:
    with torch.no_grad():
        return module(x) if replace is None else module.manual(x, replace)


def _names(gm) -> set[str]:
    return {node.name for node in gm.graph.nodes}


def _ids(gm) -> list[str]:
    return [block.id for block in find_structure(gm).blocks]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    current = model.state_dict()
    return current.keys() == state.keys() and all(torch.equal(current[k], v)
                                                  for k, v in state.items())


# --- residual blocks --------------------------------------------------------------------------


def test_identity_drop_removes_trailing_relu_and_computes_the_shortcut():
    model, x, gm = _prepared(_tiny_resnet())
    block, nxt = find_structure(gm).block("1.2"), find_structure(gm).block("1.3")
    assert (block.kind, block.shortcut, block.droppable) == ("residual", "identity", True)
    assert len(block.nodes) == 7  # conv, bn, relu, conv, bn, add, relu
    names = _names(gm)
    convs, norms = count_modules(gm, nn.Conv2d), count_modules(gm, nn.BatchNorm2d)

    result = DropBlocks(["1.2"])(gm)

    assert result.modified and result.graph_module is gm
    gm.graph.lint()
    assert _names(gm) == names - set(block.nodes)  # the trailing ReLU went too
    assert count_modules(gm, nn.Conv2d) == convs - 2
    assert count_modules(gm, nn.BatchNorm2d) == norms - 2
    entry = next(node for node in gm.graph.nodes if node.name == block.entry)
    assert next(n for n in gm.graph.nodes if n.name == nxt.convs[0]).args[0] is entry
    # The block computes exactly its input (relu(relu(x)) == relu(x)).
    expected = _run(model, x, replace={1: lambda t: t})
    assert torch.equal(_run(gm, x), expected)


@pytest.mark.parametrize("stem_act,post", [(None, "relu"), ("relu", "relu6"), ("relu6", "relu")])
def test_trailing_activation_that_is_not_idempotent_on_the_input_is_kept(stem_act, post):
    """Entry without activation, or a different activation: ``post(x) != x``, so it stays."""
    model, x, gm = _prepared(_tiny_resnet(stem_act=stem_act, post=post))
    block = find_structure(gm).block("1.1")
    names = _names(gm)

    assert DropBlocks(["1.1"])(gm).modified

    gm.graph.lint()
    assert _names(gm) == names - set(block.nodes) | {block.exit}
    kept = next(node for node in gm.graph.nodes if node.name == block.exit)
    assert [arg.name for arg in kept.all_input_nodes] == [block.entry]
    expected = _run(model, x, replace={0: model.blocks[0].skip})
    assert torch.equal(_run(gm, x), expected)
    if stem_act is None:  # the activation really matters here
        assert max_abs_diff(_run(model, x, replace={0: lambda t: t}), expected) > 1e-3


def test_same_shape_projection_block_keeps_its_shortcut_conv():
    torch.manual_seed(0)
    net = TinyNet([Basic(4, 4), Basic(4, 4, projection=True), Basic(4, 4)], width=4)
    model, x, gm = _prepared(net)
    block = find_structure(gm).block("1.2")
    assert block.shortcut == "projection" and block.droppable
    convs = count_modules(gm, nn.Conv2d)

    assert DropBlocks(["1.2"])(gm).modified

    gm.graph.lint()
    assert set(block.shortcut_convs) <= _names(gm)
    assert not set(block.convs) & _names(gm)
    assert count_modules(gm, nn.Conv2d) == convs - 2
    expected = _run(model, x, replace={1: model.blocks[1].skip})
    assert torch.equal(_run(gm, x), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_drop_matches_the_hand_computed_network_with_random_statistics(dtype):
    model, x, gm = _prepared(_tiny_resnet(stem_act=None), dtype=dtype)
    assert DropBlocks(["1.3"])(gm).modified
    assert DropBlocks(["2.2"])(gm).modified
    expected = _run(model, x, replace={2: model.blocks[2].skip, 4: model.blocks[4].skip})
    assert_equivalent(expected, _run(gm, x))


# --- shortcut-free units ----------------------------------------------------------------------


def test_vgg_conv_unit_drop():
    model, x, gm = _prepared(_vgg())
    structure = find_structure(gm)
    assert [b.id for b in structure.blocks] == ["1.1", "1.2", "2.1", "2.2", "2.3"]
    block = structure.block("2.2")
    assert (block.kind, block.shortcut_output, block.droppable) == ("conv", None, True)
    names = _names(gm)

    assert DropBlocks(["2.2"])(gm).modified

    gm.graph.lint()
    assert _names(gm) == names - set(block.nodes)
    assert count_modules(gm, nn.Conv2d) == 4 and count_modules(gm, nn.BatchNorm2d) == 4
    assert _ids(gm) == ["1.1", "1.2", "2.1", "2.2"]  # the dropped graph, numbered anew
    reference = nn.Sequential(*[layer for index, layer in enumerate(model) if index != 4])
    assert torch.equal(_run(gm, x), _run(reference, x))


@pytest.mark.slow
def test_mobilenet_v2_inverted_residual_drop():
    torch.manual_seed(0)
    model, x, gm = _prepared(torchvision.models.mobilenet_v2(), size=(3, 64, 64))
    block = find_structure(gm).block("3.2")  # features[5]: identity shortcut, no activation
    assert (block.kind, block.shortcut, block.exit) == ("inverted_residual", "identity", block.join)
    assert len(block.convs) == 3
    names, convs = _names(gm), count_modules(gm, nn.Conv2d)
    ids = _ids(gm)

    assert DropBlocks(["3.2"])(gm).modified

    gm.graph.lint()
    assert _names(gm) == names - set(block.nodes)
    assert count_modules(gm, nn.Conv2d) == convs - 3
    assert len(_ids(gm)) == len(ids) - 1
    features = nn.Sequential(*[m for index, m in enumerate(model.features) if index != 5])
    with torch.no_grad():
        expected = model.classifier(torch.flatten(F.adaptive_avg_pool2d(features(x), 1), 1))
    assert max_abs_diff(expected, _run(gm, x)) <= FP64_ATOL
    with pytest.raises(PreconditionError, match=r"3\.1"):  # features[4]: stride 2, no shortcut
        DropBlocks(["3.1"])(gm)


# --- block ids, idempotence, several blocks ---------------------------------------------------


def test_block_ids_survive_a_drop():
    """Later drops name blocks as the graph first analysed did; the analysis of the dropped
    graph numbers its own blocks by position."""
    gm = trace(cifar_resnet(20).double().eval(), (3, 16, 16))
    ids = _ids(gm)
    convs_13 = find_structure(gm).block("1.3").convs

    assert DropBlocks(["1.2"])(gm).modified

    assert len(_ids(gm)) == len(ids) - 1  # renumbered: 1.3 is now 1.2
    assert find_structure(gm).block("1.2").convs == convs_13
    assert DropBlocks(["1.3"])(gm).modified  # drops the block first called 1.3
    assert not set(convs_13) & _names(gm)
    assert DropBlocks(["1.1"])(gm).modified  # a whole stage goes
    assert [stage.id for stage in find_structure(gm).stages] == [1, 2]
    assert dropped_blocks(gm) == ["1.2", "1.3", "1.1"]


def test_structure_does_not_depend_on_earlier_drops():
    """``find_structure`` after a drop equals it on the same network built without the block."""
    dropped = trace(cifar_resnet(20).double().eval(), (3, 16, 16))
    assert DropBlocks(["1.2", "2.3"])(dropped).modified
    model = cifar_resnet(20).double().eval()
    del model.layer1[1], model.layer2[2]
    fresh = trace(model, (3, 16, 16))

    def described(gm):
        convs = [node.target for node in gm.graph.nodes
                 if isinstance(module_of(node, named_modules(gm)), nn.Conv2d)]
        structure = find_structure(gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        return [(block.id, block.kind, block.shortcut, block.in_shape, block.out_shape,
                 [convs.index(nodes[name].target) for name in block.convs])
                for block in structure.blocks], len(structure.stem), len(structure.head)

    assert described(dropped) == described(fresh)


def test_dropping_twice_is_a_noop():
    model, x, gm = _prepared(_tiny_resnet())
    assert DropBlocks(["1.2"])(gm).modified
    code, out = gm.code, _run(gm, x)

    result = DropBlocks(["1.2"])(gm)

    assert not result.modified and result.graph_module is gm
    assert gm.code == code and torch.equal(_run(gm, x), out)
    assert not DropBlocks([])(gm).modified


@pytest.mark.parametrize("order", [("1.2", "1.1"), ("1.1", "1.2")])
def test_adjacent_blocks_in_one_call(order):
    """Dropping two neighbouring blocks at once equals dropping them one after the other."""
    model, x, gm = _prepared(_tiny_resnet())
    structure = find_structure(gm)
    dropped = set(structure.block("1.1").nodes) | set(structure.block("1.2").nodes)

    assert DropBlocks(list(order))(gm).modified

    gm.graph.lint()
    assert sorted(dropped & _names(gm)) == []
    assert _ids(gm) == ["1.1", "2.1", "2.2"]
    identity = lambda t: t  # noqa: E731
    assert torch.equal(_run(gm, x), _run(model, x, replace={0: identity, 1: identity}))


def test_adjacent_vgg_units_in_one_call():
    model, x, gm = _prepared(_vgg())
    assert DropBlocks(["2.2", "2.3"])(gm).modified
    assert _ids(gm) == ["1.1", "1.2", "2.1"]
    reference = nn.Sequential(*[layer for index, layer in enumerate(model) if index not in (4, 5)])
    assert torch.equal(_run(gm, x), _run(reference, x))


@pytest.mark.parametrize("case", ["kept_relu_after_linear_project", "projection_before_dw_block",
                                  "last_residual_of_a_plain_net"])
def test_structure_after_drop_keeps_the_other_blocks(case):
    """What stays of a dropped block (its kept activation, its projection shortcut) must not
    change which nodes a later drop of a neighbouring block (by its original id) removes."""
    torch.manual_seed(0)
    if case == "kept_relu_after_linear_project":
        # 1.1 inverted residual without shortcut, ending in a linear 1x1 conv + BN;
        # dropping 1.2 keeps its ReLU (the input is not ReLU'd), right after that projection.
        net = TinyNet([InvertedNoShortcut(8, 4), Basic(4, 4), Basic(4, 4)], width=4,
                      stem_width=8)
        dropped = "1.2"
    elif case == "projection_before_dw_block":
        # dropping 1.2 leaves its 1x1 projection conv + BN + ReLU on the trunk, right before
        # 2.1 (depthwise + linear project, no expand).
        net = TinyNet([Basic(8, 8), Basic(8, 8, projection=True), InvertedNoShortcut(8, 4, 1),
                       Basic(4, 4)], width=4, stem_width=8)
        dropped = "1.2"
    else:
        # the only residual block between plain conv units.
        net = TinyNet([Basic(4, 4, projection=True), nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())], width=8, stem_width=4)
        dropped = "1.1"
    model, x, gm = _prepared(net)
    structure = find_structure(gm)
    assert dropped in [block.id for block in structure.blocks]

    assert DropBlocks([dropped])(gm).modified

    for block in structure.blocks:
        if block.id != dropped and block.droppable:
            names = _names(gm)
            assert DropBlocks([block.id])(gm).modified
            assert names - _names(gm) <= set(block.nodes)
            assert not set(block.convs) & _names(gm)


# --- negative cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("ids,pattern", [(["7.3"], r"7\.3"), (["2.1"], r"2\.1"),
                                         (["1.2", "2.1"], r"2\.1"), (["1.2", "x"], "'x'")])
def test_unknown_or_non_droppable_block_raises_and_changes_nothing(ids, pattern):
    model, x, gm = _prepared(_tiny_resnet())
    code, out = gm.code, _run(gm, x)
    with pytest.raises(PreconditionError, match=pattern):
        DropBlocks(ids)(gm)
    assert gm.code == code and torch.equal(_run(gm, x), out)
    assert DropBlocks(["1.2"])(gm).modified  # nothing was recorded as dropped


def test_vgg_first_unit_is_not_droppable():
    _, _, gm = _prepared(_vgg())
    with pytest.raises(PreconditionError, match=r"block 1\.1 cannot be dropped"):
        DropBlocks(["1.1"])(gm)


def test_original_module_is_not_modified():
    model, x, gm = _prepared(_tiny_resnet())
    state, out = _state(model), _run(model, x)
    children = [copy.copy(list(block.children())) for block in model.blocks]

    DropBlocks(["1.2"])(gm)
    DropBlocks(["2.2"])(gm)

    assert _same_state(model, state)
    assert [list(block.children()) for block in model.blocks] == children
    assert torch.equal(_run(model, x), out)
