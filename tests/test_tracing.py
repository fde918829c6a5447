"""Tracing, shape propagation, leaf modules and the errors for untraceable models."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from fxprune.errors import FxpruneWarning, TraceError
from fxprune.graph import shape_of
from fxprune.models import cifar_resnet
from fxprune.meta import auto_leaves
from fxprune.tracing import example_input, trace


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace through it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = DataDependent()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.gate(self.conv(x))
        return self.head(x.mean((2, 3)))


def test_shapes_on_every_tensor_node():
    gm = trace(cifar_resnet(20).eval(), (3, 32, 32))
    shapes = {node.name: shape_of(node) for node in gm.graph.nodes if node.op != "output"}
    assert shapes["x"] == (1, 3, 32, 32)
    assert shapes["linear"] == (1, 10)
    assert all(shape is not None for shape in shapes.values())


def test_traced_equals_eager_and_model_is_untouched():
    model = cifar_resnet(20).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    gm = trace(model, (3, 32, 32))
    x = example_input((3, 32, 32), batch=3)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    gm.train()
    gm(x)  # BN statistics of the traced copy move ...
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # ... the model's do not


def test_untraceable_module_is_named():
    with pytest.raises(TraceError, match=r"module 'gate' \(DataDependent\) at .*test_tracing.py:\d+ `if x.sum\(\) > 0:`.*"
                       r"--leaf gate"):
        trace(Net().eval(), (3, 8, 8), auto_leaf=False)


def test_untraceable_module_becomes_a_named_leaf():
    """By default the innermost untraceable module stays opaque, with a warning naming it and
    nothing left of its failed attempt in the graph."""
    model = Net().eval()
    with pytest.warns(FxpruneWarning, match=r"kept opaque.*gate \(DataDependent at .*"
                                            r"`if x.sum\(\) > 0:`"):
        gm = trace(model, (3, 8, 8))
    assert auto_leaves(gm).keys() == {"gate"}
    assert [node.op for node in gm.graph.nodes] == [
        "placeholder", "call_module", "call_module", "call_method", "call_module", "output"]
    x = example_input((3, 8, 8), batch=2)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(gm(-x), model(-x), rtol=0, atol=0)  # both branches, eagerly


def test_wrong_input_size_is_one_line_naming_the_node():
    model = nn.Sequential(OrderedDict(flat=nn.Flatten(), head=nn.Linear(12, 4))).eval()
    with pytest.raises(TraceError, match=r"input \(1, 3, 8, 8\) at node 'head' \(module 'head', "
                                         r"Linear\): RuntimeError: mat1 and mat2 shapes cannot be "
                                         r"multiplied \(1x192 and 12x4\)\. Check the input size "
                                         r"\(--input-size C,H,W\) against what the model "
                                         r"expects$"):
        trace(model, (3, 8, 8))


def test_leaf_module_makes_it_traceable():
    model = Net().eval()
    gm = trace(model, (3, 8, 8), leaf_modules=["gate"])
    assert [node.op for node in gm.graph.nodes if node.target == "gate"] == ["call_module"]
    x = example_input((3, 8, 8), batch=2)
    torch.testing.assert_close(gm(x), model(x))
    assert trace(model, (3, 8, 8), leaf_modules=[DataDependent]) is not None


def test_example_input_is_reproducible():
    assert torch.equal(example_input((3, 4, 4), seed=3), example_input((3, 4, 4), seed=3))
    assert example_input((3, 4, 4), batch=5, dtype=torch.float64).shape == (5, 3, 4, 4)


def test_train_mode_model_is_traced_in_eval_mode():
    """Stochastic depth and dropout read ``self.training`` while tracing: a model handed over
    in train mode must still give a deterministic graph."""
    import torchvision

    model = torchvision.models.efficientnet_b0().train()
    gm = trace(model, (3, 64, 64))
    x = example_input((3, 64, 64), batch=2)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), gm(x), rtol=0, atol=0)
        torch.testing.assert_close(gm(x), model.eval()(x), rtol=1e-5, atol=1e-5)


class ReadsThenBranches(nn.Module):
    """Reads its parameter, then branches on a value: the read made before the failure must
    not survive into the graph as a reference to an erased node."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, 3, 1, 1), 0.5))

    def forward(self, x):
        y = x * self.scale
        return y if y.sum() > 0 else -y


class SharesTheParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = ReadsThenBranches()

    def forward(self, x):
        return self.gate(x) + self.gate.scale  # the same parameter, read again after the leaf


def test_parameter_read_by_a_failed_attempt_is_read_again_cleanly():
    model = SharesTheParameter().eval()
    with pytest.warns(FxpruneWarning, match="gate"):
        gm = trace(model, (3, 4, 4))
    gm.graph.lint()
    x = example_input((3, 4, 4), batch=2)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(gm(-x), model(-x), rtol=0, atol=0)
