"""MaskWeights: magnitude masks, the masked adapter, exact zeros after folding, equivalence in
float64, what must not be masked, idempotence, and recovery of a masked network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune import Drop, Options, Recovery, Sparsity
from fxprune.adapters import MaskedConv
from fxprune.errors import PreconditionError
from fxprune.graph import masked_nodes, named_modules
from fxprune.models import cifar_resnet
from fxprune.passes import MaskWeights, folding
from fxprune.passes.mask_weights import magnitude_mask
from fxprune.recovery.finetune import FinetuneConfig, finetune
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.tracing import example_input, trace
from tests.helpers import FP64_ATOL
from tests.helpers import SMALL_SIZE as SIZE


@pytest.fixture
def resnet(small_resnet):
    return small_resnet


def test_magnitude_mask_keeps_the_largest_and_breaks_ties_by_index():
    weight = torch.tensor([0.5, -3.0, 2.0, -2.0, 0.1, 1.0]).view(1, 6, 1, 1)
    assert magnitude_mask(weight, 0.5).flatten().tolist() == [0, 1, 1, 1, 0, 0]
    assert magnitude_mask(weight, 0.0).sum() == 6
    assert magnitude_mask(torch.randn(8, 4, 3, 3), 0.9).sum() == round(0.1 * 288)


def test_masked_network_is_magnitude_pruning_and_folds_with_exact_zeros(resnet):
    gm = resnet.double()
    masked = MaskWeights(0.9)(trace(gm, SIZE)).graph_module
    nodes = masked_nodes(masked)
    assert len(nodes) == 19  # every conv of ResNet-20 (no grouped convs, no shared modules)
    x = example_input(SIZE, batch=3, seed=1, dtype=torch.float64)
    modules = named_modules(masked)
    masks = {node.name: modules[node.target].mask.clone() for node in nodes}
    hand = trace(gm, SIZE)  # magnitude pruning by hand: zero the small weights in place
    for name, module in named_modules(hand).items():
        if isinstance(module, nn.Conv2d):
            with torch.no_grad():
                module.weight.mul_(magnitude_mask(module.weight, 0.9))
    torch.testing.assert_close(masked(x), hand(x), rtol=0, atol=FP64_ATOL)
    for node in nodes:  # a trained adapter U: far from the identity
        with torch.no_grad():
            modules[node.target].adapter.add_(0.3 * torch.randn_like(modules[node.target].adapter))
    expected = masked(x)
    folded = folding()(masked).graph_module
    assert not masked_nodes(folded)
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=FP64_ATOL)
    # BN folded into the conv scales rows: the zeros are exactly the mask's
    folded_modules = named_modules(folded)
    for node in folded.graph.nodes:
        if node.name in masks:
            weight = folded_modules[node.target].weight
            assert torch.equal(weight == 0, masks[node.name] == 0), node.name


def test_only_the_adapter_trains():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    masked = MaskedConv(conv, magnitude_mask(conv.weight, 0.5))
    assert [name for name, _ in masked.named_parameters()] == ["adapter"]


def test_refusals_and_what_is_skipped(resnet):
    with pytest.raises(PreconditionError, match="sparsity must be in"):
        MaskWeights(1.0)
    with pytest.raises(PreconditionError, match="cannot mask 'relu'"):
        MaskWeights(0.5, ["relu"])(resnet)

    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.pw = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.pw(self.dw(x))

    gm = MaskWeights(0.5)(trace(Grouped(), (4, 8, 8))).graph_module
    assert [node.name for node in masked_nodes(gm)] == ["pw"]


def test_idempotent(resnet):
    first = MaskWeights(0.8)(resnet)
    assert first.modified
    before = {name: buffer.clone() for name, buffer in first.graph_module.named_buffers()
              if name.endswith("mask")}
    assert not MaskWeights(0.8)(first.graph_module).modified
    after = dict(first.graph_module.named_buffers())
    assert all(torch.equal(after[name], mask) for name, mask in before.items())


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["layerwise", "stagewise"])
def test_recovery_of_a_masked_network(resnet, schedule):
    teacher = trace(resnet, SIZE)
    student = MaskWeights(0.9)(trace(resnet, SIZE)).graph_module
    images = example_input(SIZE, batch=24, seed=7)
    pruned_error = torch.nn.functional.mse_loss(student(images), teacher(images)).item()
    config = RecoveryConfig(schedule=schedule, fit=FitConfig(lr=1e-2, max_steps=80,
                                                              patience=80))
    reports = recover(teacher, student, images, config, progress=False)
    assert all(report.loss_after < report.loss_before for report in reports)
    folded = folding()(student).graph_module
    error = torch.nn.functional.mse_loss(folded(images), teacher(images)).item()
    assert error < 0.7 * pruned_error


def test_compress_with_sparsity_reports_the_zeros():
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    images = example_input(SIZE, batch=8, seed=2)
    quick = Recovery(fit=FitConfig(lr=1e-3, max_steps=5, patience=5))
    result = fxprune.compress(model, images, SIZE, Options(
        drop=Drop.blocks("1.2"), sparsity=Sparsity(0.9), recovery=quick), progress=False)
    sparsity = result.report.scheme.sparsity
    # convs next to the drop's adapters stay dense; every other conv is 90% zeros exactly
    assert 0 < len(sparsity["masked_convs"]) < 19
    assert sparsity["weights_zero"] == pytest.approx(0.9, abs=0.001)


def test_baseline_finetune_of_a_masked_network_keeps_its_zeros():
    """``recover="none"`` + finetune trains the weights themselves (momentum SGD, which would
    move a zero weight); the mask is re-applied after every step."""
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    images = example_input(SIZE, batch=8, seed=2)
    # a small step: an untrained network's features are large, and a NaN would hide the zeros
    quick = FinetuneConfig("mse", epochs=3, batch_size=4, lr=1e-6, augment=False)
    result = fxprune.compress(model, images, SIZE, Options(
        drop=None, sparsity=Sparsity(0.9), recovery=None, finetune=quick), progress=False)
    masked = result.report.scheme.sparsity["masked_convs"]
    assert len(masked) == 19
    assert result.report.scheme.sparsity["weights_zero"] == pytest.approx(0.9, abs=0.001)
    pruned, compressed = named_modules(result.pruned), named_modules(result.model)
    targets = {node.name: node.target for node in result.model.graph.nodes}
    for name in masked:
        before = pruned[targets[name]].weight
        after = compressed[targets[name]].weight
        assert torch.equal(before == 0, after == 0), name  # exactly the same zeros
    assert any(not torch.allclose(pruned[targets[name]].weight,
                                  compressed[targets[name]].weight) for name in masked)


def test_finetune_refuses_a_mask_for_no_parameter(resnet):
    teacher = trace(resnet, SIZE)
    with pytest.raises(PreconditionError, match="nope.weight"):
        finetune(teacher, trace(resnet, SIZE), example_input(SIZE, batch=2), None,
                 FinetuneConfig(objective="mse", epochs=1), progress=False,
                 masks={"nope.weight": torch.ones(1)})


@pytest.mark.slow
def test_closed_form_recovery_trains_masked_convs_by_gradient(resnet):
    """The closed form does not cover U; with fit=None it still trains, layer-wise."""
    teacher = trace(resnet, SIZE)
    student = MaskWeights(0.9)(trace(resnet, SIZE)).graph_module
    images = example_input(SIZE, batch=16, seed=7)
    reports = recover(teacher, student, images, RecoveryConfig(init="lstsq", fit=None),
                      progress=False)
    assert len(reports) == 19 and all(report.epochs > 0 for report in reports)
    modules = named_modules(student)
    assert all(not torch.equal(modules[node.target].adapter, torch.eye(
        modules[node.target].in_channels)) for node in masked_nodes(student))
