"""folding(): every foldable adapter (and BN) disappears and the function is unchanged in
float64 (<= 1e-9) and float32 (relative <= 1e-4) with random BN statistics, biases and
non-identity adapters, across padding and stride; the adapters that must stay (shared
producer, grouped conv, shared conv module, biased adapter before a padded conv) stay with
``strict=False`` and are named with ``strict=True``; idempotence; the caller's model is kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxprune.adapters import Adapter, AdapterSite
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.errors import PreconditionError
from fxprune.graph import module_of, named_modules
from fxprune.models import cifar_resnet
from fxprune.passes import DropBlocks, InsertAdapters, folding
from fxprune.tracing import trace
from tests.helpers import (FP32_RTOL, FP64_ATOL, assert_equivalent, calibrate_and_randomize,
                           count_modules, max_abs_diff, max_rel_diff, randomize_adapters)




class Chain(nn.Module):
    """stem conv-BN-ReLU, then conv 3x3 stride 2 padding 1 (with bias) - BN - ReLU, then a
    1x1 conv - BN, then global pool + linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.point = nn.Conv2d(8, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.down(x)))
        x = self.bn2(self.point(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class HandPlaced(nn.Module):
    """Adapters placed by hand (traced as leaves), one per neighbourhood ``case``."""

    def __init__(self, case: str):
        super().__init__()
        self.case = case
        padding = 0 if case == "biased_before_unpadded" else 1
        self.conv = nn.Conv2d(4, 4, 3, stride=2 if padding == 0 else 1, padding=padding)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.a = Adapter(4, bias=case != "unbiased_before_padded")

    def forward(self, x):
        if self.case == "shared_producer":  # conv -> a -> add, conv -> add
            y = self.conv(x)
            return self.a(y) + y
        if self.case == "after_grouped":  # dw -> a -> relu
            return F.relu(self.a(self.dw(x)))
        if self.case == "before_grouped":  # relu -> a -> dw
            return self.dw(self.a(F.relu(x)))
        return self.conv(self.a(F.relu(x)))  # relu -> a -> conv (padded or not)


class SharedConv(nn.Module):
    """One 3x3 conv module called twice, each call followed by its own BN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn1(self.conv(x)))
        return self.bn2(self.conv(x))


class SharedConvBlock(nn.Module):
    """A residual block whose branch ends with a second call of a shared conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.shared = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.shared(out)))
        return F.relu(self.bn3(self.shared(out)) + x)


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class SharedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(SharedConvBlock(4), BasicBlock(4), BasicBlock(4))

    def forward(self, x):
        return self.blocks(F.relu(self.stem(x)))


def _prepared(model, size=(3, 8, 8), dtype=torch.float64, seed=0, leaf_modules=()):
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and not isinstance(module, Adapter):
            module.reset_parameters()
    model = model.to(dtype).eval()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    calibrate_and_randomize(model, x, seed=seed + 1)
    return model, x, trace(model, size, leaf_modules=leaf_modules)


def _run(module, x):
    with torch.no_grad():
        return module(x)


def _adapters(gm) -> list[str]:
    modules = named_modules(gm)
    return [node.name for node in gm.graph.nodes if isinstance(module_of(node, modules), Adapter)]


def _randomized(gm, x, seed=0):
    """Random adapters (bias included) and BN statistics; returns the reference output."""
    randomize_adapters(gm, seed=seed)
    calibrate_and_randomize(gm, x, seed=seed + 7)
    return _run(gm, x)


# --- adapters that fold -----------------------------------------------------------------------


@pytest.mark.parametrize("sites", [
    [("down", "input")],  # bias-free adapter before a 3x3 stride-2 padding-1 conv
    [("down", "output")],  # biased adapter between a padded conv and its BN
    [("point", "input"), ("point", "output")],
    [("stem", "output"), ("down", "input"), ("down", "output"), ("point", "input")],
])
def test_fold_is_exact_in_float64(sites):
    model, x, gm = _prepared(Chain())
    assert InsertAdapters([AdapterSite(*site) for site in sites])(gm).modified
    ref = _randomized(gm, x)
    assert max_abs_diff(ref, _run(model, x)) > 1e-6  # the adapters do something
    n_nodes = len(gm.graph.nodes)

    result = folding()(gm)

    assert result.modified and result.graph_module is gm
    gm.graph.lint()
    assert _adapters(gm) == [] and count_modules(gm, Adapter) == 0
    assert count_modules(gm, nn.BatchNorm2d) == 0 and count_modules(gm, nn.Conv2d) == 3
    assert len(gm.graph.nodes) == n_nodes - len(sites) - 3
    down = gm.get_submodule("down")
    assert (down.stride, down.padding, type(down)) == ((2, 2), (1, 1), nn.Conv2d)
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


def test_fold_float32_relative_error():
    model, x, gm = _prepared(Chain(), dtype=torch.float32)
    InsertAdapters([AdapterSite("down", "input"), AdapterSite("down", "output")])(gm)
    ref = _randomized(gm, x)
    assert folding()(gm).modified
    assert _adapters(gm) == []
    assert gm.get_submodule("down").weight.dtype == torch.float32
    assert max_rel_diff(ref, _run(gm, x)) <= FP32_RTOL


def test_biased_adapter_folds_before_an_unpadded_conv():
    model, x, gm = _prepared(HandPlaced("biased_before_unpadded"), size=(4, 9, 9),
                             leaf_modules=[Adapter])
    assert _adapters(gm) == ["a"]
    ref = _randomized(gm, x)
    assert folding()(gm).modified
    assert _adapters(gm) == [] and count_modules(gm, nn.Conv2d) == 1
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_drop_insert_fold_cifar_resnet(dtype):
    model, x, gm = _prepared(cifar_resnet(20), size=(3, 16, 16), dtype=dtype)
    structure = find_structure(gm)
    sites = drop_sites(gm, structure, ["2.2"], placement="cvpr")
    DropBlocks(["2.2"])(gm)
    InsertAdapters(sites)(gm)
    assert count_modules(gm, Adapter) == len(sites) == 3
    ref = _randomized(gm, x)

    assert folding(strict=True)(gm).modified

    gm.graph.lint()
    assert count_modules(gm, Adapter) == 0 and count_modules(gm, nn.BatchNorm2d) == 0
    assert count_modules(gm, nn.Conv2d) == 17
    assert_equivalent(ref, _run(gm, x))


# --- adapters that must stay ------------------------------------------------------------------


@pytest.mark.parametrize("case", ["shared_producer", "after_grouped", "before_grouped",
                                  "biased_before_padded"])
def test_unfoldable_adapter_stays_or_is_named(case):
    model, x, gm = _prepared(HandPlaced(case), size=(4, 8, 8), leaf_modules=[Adapter])
    assert _adapters(gm) == ["a"]
    ref = _randomized(gm, x)
    code = gm.code

    result = folding(strict=False)(gm)

    assert not result.modified and gm.code == code
    assert _adapters(gm) == ["a"]
    assert torch.equal(_run(gm, x), ref)
    with pytest.raises(PreconditionError, match="adapters could not be folded: a "):
        folding(strict=True)(gm)


def test_unbiased_adapter_before_padded_conv_folds():
    model, x, gm = _prepared(HandPlaced("unbiased_before_padded"), size=(4, 8, 8),
                             leaf_modules=[Adapter])
    ref = _randomized(gm, x)
    assert folding()(gm).modified and _adapters(gm) == []
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


def test_shared_conv_module_is_not_folded():
    model, x, gm = _prepared(SharedConv())
    shared = gm.get_submodule("conv")
    weight = shared.weight.clone()
    # An output adapter at the first call, an input adapter at the second, one at the stem.
    sites = [AdapterSite("conv", "output"), AdapterSite("conv_1", "input"),
             AdapterSite("stem", "output")]
    assert InsertAdapters(sites)(gm).modified
    ref = _randomized(gm, x)

    result = folding(strict=False)(gm)

    assert result.modified  # the stem adapter folded, and the BN after the first adapter
    gm.graph.lint()
    left = _adapters(gm)
    assert len(left) == 2
    assert gm.get_submodule("conv") is shared and torch.equal(shared.weight, weight)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"].count("conv") == 2
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL
    with pytest.raises(PreconditionError) as error:
        folding(strict=True)(gm)
    assert all(name in str(error.value) for name in left)


def test_mixed_graph_folds_exactly_the_foldable_adapter():
    """Input adapter at the first call of a shared conv (producer: a ReLU -> must stay) and an
    input adapter at the stem (folds): one fold, and the other adapter is the one left."""
    model, x, gm = _prepared(SharedConv())
    InsertAdapters([AdapterSite("conv", "input"), AdapterSite("stem", "input")])(gm)
    assert len(_adapters(gm)) == 2
    stays = next(node for node in gm.graph.nodes if node.name == "conv").args[0].name
    ref = _randomized(gm, x)

    assert folding(strict=False)(gm).modified

    assert _adapters(gm) == [stays]
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


def test_strict_failure_leaves_a_consistent_graph():
    """After ``strict=True`` raises, the GraphModule must still compute what it computed
    before (its code must match its graph). Here the stem adapter folds (no BN follows, so
    nothing recompiles the graph) and the adapter before the shared conv stays."""
    model, x, gm = _prepared(SharedConv())
    InsertAdapters([AdapterSite("stem", "output"), AdapterSite("conv_1", "input")])(gm)
    ref = _randomized(gm, x)
    with pytest.raises(PreconditionError):
        folding(strict=True)(gm)
    diff = max_abs_diff(ref, _run(gm, x))
    assert diff <= FP64_ATOL, f"the graph module computes something else now: {diff:.3g}"


def test_drop_sites_adapters_fold_next_to_a_shared_conv():
    """drop_sites promises sites that fold; "cvpr" puts one after the last conv of the earlier
    block, here the second call of a shared conv."""
    model, x, gm = _prepared(SharedConvNet())
    structure = find_structure(gm)
    assert [b.id for b in structure.blocks] == ["1.1", "1.2", "1.3"]
    sites = drop_sites(gm, structure, ["1.2"], placement="cvpr")
    DropBlocks(["1.2"])(gm)
    InsertAdapters(sites)(gm)
    ref = _randomized(gm, x)
    folding(strict=True)(gm)
    assert _adapters(gm) == []
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


# --- idempotence and the caller's model -------------------------------------------------------


def test_second_run_does_nothing():
    model, x, gm = _prepared(Chain())
    InsertAdapters([AdapterSite("down", "input"), AdapterSite("down", "output")])(gm)
    _randomized(gm, x)
    assert folding()(gm).modified
    code, out = gm.code, _run(gm, x)

    result = folding()(gm)

    assert not result.modified and result.graph_module is gm
    assert gm.code == code and torch.equal(_run(gm, x), out)


def test_original_module_is_not_modified():
    model, x, gm = _prepared(cifar_resnet(20), size=(3, 16, 16))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    out = _run(model, x)
    structure = find_structure(gm)
    sites = drop_sites(gm, structure, ["1.2"], placement="cvpr")
    DropBlocks(["1.2"])(gm)
    InsertAdapters(sites)(gm)
    randomize_adapters(gm, seed=3)

    folding()(gm)

    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert count_modules(model, nn.BatchNorm2d) == 19 and count_modules(model, Adapter) == 0
    assert torch.equal(_run(model, x), out)
