"""What makes recovery fast: the frozen prefix and frozen BN computed once instead of every
step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.graph import recovery_nodes
from fxprune.models import cifar_resnet
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, InsertAdapters
from fxprune.recovery.fit import FitConfig, _rate
from fxprune.recovery.frozen import training_segment
from fxprune.recovery import practise
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.segments import segment
from fxprune.tracing import example_input, trace
from tests.helpers import calibrate_and_randomize

SIZE = (3, 16, 16)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    gm = trace(cifar_resnet(20).eval(), SIZE)
    calibrate_and_randomize(gm, example_input(SIZE, batch=32, seed=5))
    sites = drop_sites(gm, find_structure(gm), ["1.2", "2.2"], "cvpr")
    gm = PassManager([DropBlocks(["1.2", "2.2"]), InsertAdapters(sites)])(gm).graph_module
    for node in recovery_nodes(gm):  # adapters away from the identity: a real training state
        module = dict(gm.named_modules())[node.target]
        module.weight.data += 0.05 * torch.randn_like(module.weight)
    return gm.eval()


def _first_stage(gm):
    output = find_structure(gm).stages[0].output
    order = {node.name: index for index, node in enumerate(gm.graph.nodes)}
    trained = {node.name for node in recovery_nodes(gm) if order[node.name] < order[output]}
    return output, trained


def test_training_segment_computes_the_same_outputs_and_gradients(student):
    images = example_input(SIZE, batch=10, seed=2)
    output, trained = _first_stage(student)
    full = segment(student, ["x"], [output])
    short, starts = training_segment(student, ["x"], [images], [output], trained, 4)
    assert [node.name for node in short.graph.nodes if node.op == "placeholder"] != ["x"]
    assert _batchnorms(short) < _batchnorms(full)
    modules = dict(student.named_modules())
    adapters = [modules[node.target] for node in student.graph.nodes if node.name in trained]
    results = []
    for module, inputs in ((full, [images]), (short, starts)):
        output_value = module(*inputs)
        output_value.pow(2).mean().backward()
        results.append([output_value.detach()] + [adapter.weight.grad for adapter in adapters])
        for adapter in adapters:
            adapter.weight.grad = None
    for first, second in zip(*results):
        torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-6)


def _batchnorms(gm) -> int:
    return sum(node.op == "call_module" and isinstance(dict(gm.named_modules())[node.target],
                                                       nn.BatchNorm2d)
               for node in gm.graph.nodes)


def test_training_segment_leaves_the_network_alone(student):
    before = copy.deepcopy(student.state_dict())
    output, trained = _first_stage(student)
    training_segment(student, ["x"], [example_input(SIZE, batch=4, seed=3)], [output],
                     trained, 4)
    after = student.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert sum(isinstance(module, nn.BatchNorm2d) for module in student.modules()) == \
        sum(1 for node in student.graph.nodes if "bn" in node.name)


@pytest.mark.parametrize("schedule", ["stagewise", "joint"])
def test_recovery_trains_as_on_the_whole_segment(student, monkeypatch, schedule):
    """Skipping the prefix and fusing BN change only float rounding: 20 Adam steps end at the
    same adapters as on the plain segment."""
    images = example_input(SIZE, batch=12, seed=4)
    config = RecoveryConfig(schedule, FitConfig(lr=3e-3, max_steps=20, patience=20,
                                                batch_size=4))
    teacher = trace(student, SIZE)
    fast = copy.deepcopy(student)
    recover(teacher, fast, images, config, progress=False)
    monkeypatch.setattr(practise, "training_segment", _plain_segment)
    plain = copy.deepcopy(student)
    recover(teacher, plain, images, config, progress=False)
    for node in recovery_nodes(fast):
        torch.testing.assert_close(dict(fast.named_modules())[node.target].weight,
                                   dict(plain.named_modules())[node.target].weight,
                                   rtol=1e-3, atol=1e-5)


def _plain_segment(gm, inputs, features, outputs, trained, batch_size):
    return segment(gm, inputs, outputs), list(features)


def test_batch_statistics_keep_the_whole_segment(student, monkeypatch):
    """With BN in train mode a prefix depends on the minibatch drawn: nothing is cached."""
    def refuse(*args):
        raise AssertionError("training_segment used with BN in train mode")
    monkeypatch.setattr(practise, "training_segment", refuse)
    config = RecoveryConfig(fit=FitConfig(lr=3e-3, max_steps=2, patience=2), bn="train")
    recover(trace(student, SIZE), copy.deepcopy(student), example_input(SIZE, batch=4, seed=4),
            config, progress=False)


def test_wide_weights_train_at_a_rate_scaled_by_their_width():
    """Adam moves every entry by about the rate, so a wider map's output moves more: a weight
    reading more than ``reference_width`` inputs gets the rate times reference / inputs."""
    config = FitConfig(lr=2e-3, reference_width=64)
    assert _rate(nn.Conv2d(64, 64, 1).weight, config) == 2e-3
    assert _rate(nn.Conv2d(192, 192, 1).weight, config) == pytest.approx(2e-3 / 3)
    assert _rate(nn.Conv2d(16, 8, 3).weight, config) == pytest.approx(2e-3 * 64 / 144)
    assert _rate(nn.Conv2d(192, 192, 1).bias, config) == 2e-3  # a bias reads no input
    assert _rate(nn.Conv2d(192, 192, 1).weight, FitConfig(lr=2e-3, reference_width=None)) == 2e-3
    with pytest.raises(ValueError, match="invalid fit configuration"):
        FitConfig(reference_width=0)
