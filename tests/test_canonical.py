"""The canonical passes, each on the zoo idiom it exists for: the graph it leaves (structure),
a graph it must leave alone (negative), the same outputs in float64, idempotence. Then the
whole canonicalization on a residual network written in those idioms."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from fxprune.analysis.structure import find_structure
from fxprune.canonical import canonical_passes
from fxprune.graph import module_of, named_modules
from fxprune.models import cifar_resnet
from fxprune.passes import (BatchNormModules, ConvModules, FoldConstants, LinearModules,
                            RemoveEvalNoOps, RemoveShapeChecks, StaticSamePadding)
from fxprune.passes.static_same_padding import same_padding
from fxprune.tracing import example_input, propagate_shapes, trace
from tests.helpers import FP64_ATOL, calibrate_and_randomize, max_abs_diff
from tests.zoo_modules import (BatchNormAct, FunctionalLinear, SameConv, StdConv, ZooBlock,
                               ZooResNet)

SIZE = (3, 16, 16)


class ConvThen(nn.Module):
    """A conv, then the module under test."""

    def __init__(self, then: nn.Module, conv: nn.Module | None = None):
        super().__init__()
        self.conv = conv or nn.Conv2d(3, 6, 3, padding=1)
        self.then = then

    def forward(self, x):
        return self.then(self.conv(x))


class Classifier(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = head

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def _raw(model: nn.Module, size=SIZE) -> fx.GraphModule:
    """The trace before canonicalization, BN statistics moved off their defaults, float64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = trace(model.double().eval(), size, canonical=False)
    calibrate_and_randomize(gm, example_input(size, batch=4, dtype=torch.float64, seed=5))
    return gm


def _check(graph_pass, model: nn.Module, size=SIZE) -> fx.GraphModule:
    """Run ``graph_pass``: it fires, outputs stay equal in float64, a second run does nothing."""
    gm = _raw(model, size)
    x = example_input(size, batch=3, dtype=torch.float64, seed=2)
    with torch.no_grad():
        before = gm(x)
        result = graph_pass(gm)
        assert result.modified
        gm = result.graph_module
        gm.graph.lint()
        assert max_abs_diff(before, gm(x)) <= FP64_ATOL
    assert not graph_pass(gm).modified
    return gm


def _ops(gm: fx.GraphModule) -> list[str]:
    modules = named_modules(gm)
    return [type(module_of(node, modules)).__name__ if node.op == "call_module" else
            getattr(node.target, "__name__", str(node.target)) for node in gm.graph.nodes
            if node.op not in ("placeholder", "output")]


def test_shape_checks_go_with_the_shape_arithmetic_they_read():
    gm = _check(RemoveShapeChecks(), ConvThen(BatchNormAct(6)))
    assert not any(node.target in (torch._assert, getattr) for node in gm.graph.nodes)
    assert all(len(node.users) == 1 for node in gm.graph.nodes if node.name == "conv")


def test_eval_noops_are_bypassed():
    gm = _check(RemoveEvalNoOps(), ConvThen(nn.Sequential(nn.Identity(), nn.Dropout2d(0.5),
                                                          nn.ReLU())))
    assert _ops(gm) == ["Conv2d", "ReLU"]


class TrainingDropout(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, training=True)


def test_dropout_that_trains_stays():
    gm = _raw(ConvThen(TrainingDropout()))
    assert not RemoveEvalNoOps()(gm).modified


def test_weight_standardisation_is_folded_then_a_plain_conv():
    model = ConvThen(nn.ReLU(), StdConv(3, 6, 3, padding=1))
    gm = _check(FoldConstants(), model)
    assert not any(node.target is F.batch_norm for node in gm.graph.nodes)
    gm = _raw(model)
    x = example_input(SIZE, batch=2, dtype=torch.float64)
    expected = gm(x)
    for graph_pass in (FoldConstants(), ConvModules()):
        gm = graph_pass(gm).graph_module
    assert _ops(gm) == ["Conv2d", "ReLU"] and type(gm.conv) is nn.Conv2d
    assert max_abs_diff(expected, gm(x)) <= FP64_ATOL
    assert len(list(gm.parameters())) == 2  # the standardised weight and the bias, once


class FunctionalConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, "same", self.dilation, self.groups)


def test_functional_conv_becomes_a_module():
    gm = _check(ConvModules(), ConvThen(nn.ReLU(), FunctionalConv(3, 6, 3, dilation=2)))
    assert type(gm.conv) is nn.Conv2d and gm.conv.padding == (2, 2)
    assert not ConvModules()(_raw(ConvThen(nn.ReLU()))).modified  # already a module


def test_functional_batchnorm_becomes_a_module_and_children_keep_their_paths():
    gm = _check(BatchNormModules(), ConvThen(BatchNormAct(6)))
    assert [type(m).__name__ for m in (gm.then.bn, gm.then.act)] == ["BatchNorm2d", "ReLU"]
    assert type(gm.then) is nn.Module  # a plain container, no BN tensors of its own
    assert {name for name, _ in gm.named_parameters()} == {
        "conv.weight", "conv.bias", "then.bn.weight", "then.bn.bias"}


class BatchStatistics(nn.Module):
    """Batch norm over the batch's own statistics: not a constant per-channel affine map."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(6))

    def forward(self, x):
        return F.batch_norm(x, None, None, self.weight, None, training=True)


def test_batchnorm_over_batch_statistics_stays():
    assert not BatchNormModules()(_raw(ConvThen(BatchStatistics()))).modified


def test_functional_linear_becomes_a_module():
    gm = _check(LinearModules(), Classifier(FunctionalLinear(6, 4)))
    assert type(gm.head) is nn.Linear
    assert not LinearModules()(_raw(Classifier(nn.Linear(6, 4)))).modified


@pytest.mark.parametrize("size,stride", [((3, 16, 16), 2), ((3, 15, 15), 2), ((3, 16, 16), 1)])
def test_same_padding_becomes_static(size, stride):
    gm = _check(StaticSamePadding(), ConvThen(nn.ReLU(), SameConv(3, 6, 3, stride=stride)), size)
    assert type(gm.conv) is nn.Conv2d
    (top, bottom), (left, right) = (same_padding(side, 3, stride, 1) for side in size[1:])
    padded = top != bottom or left != right
    assert _ops(gm) == (["ZeroPad2d"] if padded else []) + ["Conv2d", "ReLU"]


def test_same_padding_formula():
    assert same_padding(16, 3, 2, 1) == (0, 1)  # TensorFlow pads after on even sizes
    assert same_padding(15, 3, 2, 1) == (1, 1)
    assert same_padding(16, 5, 1, 2) == (4, 4)
    assert same_padding(8, 1, 2, 1) == (0, 0)


class NotAPaddedConv(nn.Conv2d):
    """A conv subclass whose forward computes something else: no static form exists."""

    def forward(self, x):
        return super().forward(x) * 2


def test_other_conv_subclasses_stay():
    gm = _raw(ConvThen(nn.ReLU(), NotAPaddedConv(3, 6, 3, padding=1)))
    assert not StaticSamePadding()(gm).modified


def test_canonical_passes_leave_a_plain_model_alone():
    gm = trace(cifar_resnet(20).eval(), (3, 32, 32), canonical=False)
    assert not any(graph_pass(gm).modified for graph_pass in canonical_passes())


def test_zoo_resnet_is_found_and_computes_the_same():
    torch.manual_seed(0)
    model = ZooResNet().double().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm = trace(model, SIZE)
    assert not [w for w in caught if "kept opaque" in str(w.message)]  # SAME convs resolved
    structure = find_structure(gm)
    assert [[block.id for block in stage.blocks] for stage in structure.stages] == [
        ["1.1", "1.2"], ["2.1", "2.2"]]
    assert all(block.droppable and block.shortcut == "identity" for block in structure.blocks)
    assert all(len(block.convs) == 2 for block in structure.blocks)
    x = example_input(SIZE, batch=3, dtype=torch.float64, seed=4)
    with torch.no_grad():
        assert max_abs_diff(model(x), gm(x)) <= FP64_ATOL
    assert not any(isinstance(m, (BatchNormAct, StdConv, SameConv, FunctionalLinear))
                   for m in gm.modules())
    propagate_shapes(gm, [x])  # shapes stay consistent after canonicalization


def test_block_with_dropped_checks_has_no_side_paths():
    """Before canonicalization the asserts' readers make a BN's input a branch point."""
    gm = trace(ZooBlock(4).eval(), (4, 8, 8))
    assert all(len(node.users) == 1 for node in gm.graph.nodes if node.op == "call_module"
               and isinstance(module_of(node, named_modules(gm)), nn.Conv2d))


class BlurThenInPlace(nn.Module):
    """A fixed blur filter held as a buffer (timm's BlurPool2d), an in-place add whose result
    nobody reads, a layer scale reshaped in the forward, and a dropout to bypass."""

    def __init__(self):
        super().__init__()
        self.register_buffer("filt", torch.ones(3, 1, 3, 3) / 9)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 3))
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        y = F.conv2d(x, self.filt, padding=1, groups=3)
        y.add_(1.0)  # mutates y: not dead although its result is unused
        return self.drop(y * self.gamma.reshape(1, -1, 1, 1))


def test_buffers_stay_fixed_mutations_stay_and_folded_sources_go():
    model = BlurThenInPlace().eval()
    x = example_input(SIZE, batch=2)
    gm = trace(model, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)
    assert any(node.target == "add_" for node in gm.graph.nodes)
    blur = next(m for m in gm.modules() if isinstance(m, nn.Conv2d))
    assert blur.groups == 3 and not blur.weight.requires_grad  # a fixed filter stays fixed
    assert [name for name, p in gm.named_parameters() if p.requires_grad] == []  # gamma folded


class BufferAffineNorm(nn.Module):
    def __init__(self):
        super().__init__()
        for name, value in (("mean", torch.zeros(6)), ("var", torch.ones(6) * 2),
                            ("scale", torch.ones(6) * 3), ("shift", torch.ones(6))):
            self.register_buffer(name, value)

    def forward(self, x):
        return F.batch_norm(x, self.mean, self.var, self.scale, self.shift, False, 0.1, 1e-5)


def test_batchnorm_with_buffer_affine_becomes_a_module():
    gm = _check(BatchNormModules(), ConvThen(BufferAffineNorm()))
    assert isinstance(gm.then, nn.BatchNorm2d) and not gm.then.weight.requires_grad
