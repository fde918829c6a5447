"""InsertAdapters (and the drop sites it is fed with): where the adapter nodes go, that an
identity adapter changes nothing, idempotence, the sites it refuses, and that block structure
and the caller's model are left alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fxprune.adapters import Adapter, AdapterSite
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.errors import PreconditionError
from fxprune.graph import module_of, named_modules
from fxprune.meta import adapter_site, tensor_meta
from fxprune.models import cifar_resnet
from fxprune.passes import DropBlocks, InsertAdapters
from fxprune.tracing import trace
from tests.helpers import (FP64_ATOL, assert_equivalent, calibrate_and_randomize, count_modules,
                           max_abs_diff, randomize_adapters)




class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                  nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """Blocks 1.1, 1.2, 1.3 (4 ch, 8x8), 2.1 (stride 2, projection, 8 ch), 2.2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.layers = nn.Sequential(Block(4, 4), Block(4, 4), Block(4, 4), Block(4, 8, 2),
                                    Block(8, 8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Odd(nn.Module):
    """A conv read by two consumers, a depthwise conv and a conv module called twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y = F.relu(self.bn(y)) + y
        y = self.shared(F.relu(self.dw(y)))
        return self.shared(F.relu(y))


def _vgg() -> nn.Sequential:
    def unit(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(unit(3, 4), unit(4, 4), unit(4, 4), unit(4, 4), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def _prepared(model: nn.Module, size=(3, 8, 8), dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    for module in model.modules():  # fresh parameters after the manual seed
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model = model.to(dtype).eval()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    calibrate_and_randomize(model, x, seed=2)
    return model, x, trace(model, size)


def _run(module, x):
    with torch.no_grad():
        return module(x)


def _node(gm, name):
    return next(node for node in gm.graph.nodes if node.name == name)


def _adapter_nodes(gm):
    modules = named_modules(gm)
    return [node for node in gm.graph.nodes if isinstance(module_of(node, modules), Adapter)]


def _ids(gm):
    return [block.id for block in find_structure(gm).blocks]


# --- where the adapters go --------------------------------------------------------------------


def test_input_adapter_feeds_only_its_conv():
    model, x, gm = _prepared(TinyResNet())
    ref, n_nodes = _run(gm, x), len(gm.graph.nodes)
    conv = _node(gm, "layers_1_conv1")
    source = conv.args[0]
    site = AdapterSite("layers_1_conv1", "input")

    result = InsertAdapters([site])(gm)

    assert result.modified and result.graph_module is gm
    gm.graph.lint()
    assert len(gm.graph.nodes) == n_nodes + 1 and count_modules(gm, Adapter) == 1
    (adapter_node,) = _adapter_nodes(gm)
    adapter = gm.get_submodule(adapter_node.target)
    assert adapter.bias is None and adapter.weight.dtype == torch.float64
    assert torch.equal(adapter.matrix, torch.eye(4, dtype=torch.float64))
    assert adapter_node.args == (source,) and conv.args[0] is adapter_node
    assert list(adapter_node.users) == [conv]
    assert any(user.name.startswith("add") for user in source.users)  # the shortcut reads x
    assert tensor_meta(adapter_node).shape == tensor_meta(source).shape
    assert adapter_site(adapter_node) == site
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL
    randomize_adapters(gm, seed=3)
    assert max_abs_diff(ref, _run(gm, x)) > 1e-6  # the adapter is live


def test_output_adapter_takes_over_every_consumer():
    model, x, gm = _prepared(Odd())
    ref = _run(gm, x)
    conv = _node(gm, "conv")
    consumers = set(conv.users)
    assert len(consumers) == 2

    assert InsertAdapters([AdapterSite("conv", "output")])(gm).modified

    gm.graph.lint()
    (adapter_node,) = _adapter_nodes(gm)
    assert list(conv.users) == [adapter_node] and set(adapter_node.users) == consumers
    adapter = gm.get_submodule(adapter_node.target)
    assert adapter.bias is not None and not adapter.bias.any()
    assert tensor_meta(adapter_node).shape == (1, 4, 4, 4)  # stride 2, padding 1
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


def test_shared_conv_gets_an_adapter_at_one_call_only():
    model, x, gm = _prepared(Odd())
    ref = _run(gm, x)
    calls = [node for node in gm.graph.nodes if node.target == "shared"]
    assert [c.name for c in calls] == ["shared", "shared_1"]

    assert InsertAdapters([AdapterSite("shared", "input"), AdapterSite("shared_1", "output")]
                          )(gm).modified

    gm.graph.lint()
    first, second = _adapter_nodes(gm)
    assert list(first.users) == [calls[0]] and calls[1].args[0] is not first
    assert second.args == (calls[1],) and list(calls[0].users) != [second]
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_identity_adapters_do_not_change_the_function(dtype):
    model, x, gm = _prepared(TinyResNet(), dtype=dtype)
    ref = _run(model, x)
    sites = [AdapterSite(node.name, side) for node in gm.graph.nodes
             if isinstance(module_of(node, named_modules(gm)), nn.Conv2d)
             for side in ("input", "output")]

    assert InsertAdapters(sites)(gm).modified

    assert count_modules(gm, Adapter) == len(_adapter_nodes(gm)) > len(sites) // 2
    assert all(gm.get_submodule(n.target).weight.dtype == dtype for n in _adapter_nodes(gm))
    assert_equivalent(ref, _run(gm, x))


# --- idempotence ------------------------------------------------------------------------------


def test_second_run_and_duplicate_sites_do_nothing():
    model, x, gm = _prepared(TinyResNet())
    sites = [AdapterSite("layers_1_conv1", "input"), AdapterSite("layers_0_conv2", "output")]

    assert InsertAdapters(sites + sites[:1])(gm).modified
    assert count_modules(gm, Adapter) == 2
    randomize_adapters(gm, seed=4)
    code, out = gm.code, _run(gm, x)

    result = InsertAdapters(sites)(gm)

    assert not result.modified and result.graph_module is gm
    assert gm.code == code and count_modules(gm, Adapter) == 2
    assert torch.equal(_run(gm, x), out)
    assert InsertAdapters(sites + [AdapterSite("layers_2_conv1", "input")])(gm).modified
    assert count_modules(gm, Adapter) == 3


class Fork(nn.Module):
    """``p`` feeds two convs directly (no BN or activation in between)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.d = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.p(x)
        return self.c(y) + self.d(y)


@pytest.mark.parametrize("first,second", [(AdapterSite("p", "output"), AdapterSite("c", "input")),
                                          (AdapterSite("c", "input"), AdapterSite("p", "output"))])
def test_neighbouring_sites_in_two_calls_equal_one_call(first, second):
    """An adapter at another site next to a conv is not this site's adapter: inserting the
    sites one call at a time gives the graph one call gives (two adapters)."""
    _, x, one_call = _prepared(Fork())
    assert InsertAdapters([first, second])(one_call).modified
    assert count_modules(one_call, Adapter) == 2

    _, _, two_calls = _prepared(Fork())
    assert InsertAdapters([first])(two_calls).modified
    assert InsertAdapters([second])(two_calls).modified
    sites = lambda gm: sorted((adapter_site(n).conv, adapter_site(n).side)  # noqa: E731
                              for n in _adapter_nodes(gm))
    assert sites(two_calls) == sites(one_call)


# --- refused sites ----------------------------------------------------------------------------


@pytest.mark.parametrize("site,pattern", [
    (AdapterSite("bn", "output"), "'bn' is not a conv"),
    (AdapterSite("nowhere", "input"), "no node named 'nowhere'"),
    (AdapterSite("dw", "input"), r"grouped conv 'dw' \(groups=4\)"),
    (AdapterSite("dw", "output"), r"grouped conv 'dw' \(groups=4\)"),
])
def test_refused_sites_raise_naming_the_node(site, pattern):
    model, x, gm = _prepared(Odd())
    code = gm.code
    with pytest.raises(PreconditionError, match=pattern):
        InsertAdapters([site])(gm)
    assert gm.code == code and count_modules(gm, Adapter) == 0


def test_bad_side_is_rejected():
    with pytest.raises(ValueError, match="'middle'"):
        AdapterSite("conv", "middle")


def test_refused_site_after_a_good_one_leaves_the_graph_unchanged():
    """A pass that raises must not leave a half-rewritten graph (whose code is stale)."""
    model, x, gm = _prepared(Odd())
    names = [node.name for node in gm.graph.nodes]
    with pytest.raises(PreconditionError, match="'dw'"):
        InsertAdapters([AdapterSite("conv", "input"), AdapterSite("dw", "input")])(gm)
    assert [node.name for node in gm.graph.nodes] == names
    assert count_modules(gm, Adapter) == 0


# --- drop sites -------------------------------------------------------------------------------


@pytest.mark.parametrize("dropped,placement,expected", [
    (["1.2"], "paper", [("layers_2_conv1", "input")]),
    (["1.3"], "paper", [("layers_3_conv1", "input"), ("layers_3_down_0", "input")]),
    (["1.2"], "cvpr", [("layers_2_conv1", "input"), ("layers_3_conv1", "input"),
                       ("layers_3_down_0", "input"), ("layers_0_conv2", "output")]),
    (["2.2"], "cvpr", [("layers_3_conv2", "output"), ("layers_3_down_0", "output")]),
    (["2.2"], "paper", []),
    (["1.2"], "inner", [("layers_2_conv1", "input"), ("layers_3_conv1", "input"),
                        ("layers_3_down_0", "input"), ("layers_0_conv2", "output"),
                        ("layers_0_conv2", "input"), ("layers_2_conv2", "input")]),
])
def test_drop_sites_then_insert(dropped, placement, expected):
    model, x, gm = _prepared(TinyResNet())
    structure = find_structure(gm)
    sites = drop_sites(gm, structure, dropped, placement=placement)
    assert [(site.conv, site.side) for site in sites] == expected

    DropBlocks(dropped)(gm)
    ref = _run(gm, x)
    result = InsertAdapters(sites)(gm)

    assert result.modified == bool(sites)
    gm.graph.lint()
    nodes = _adapter_nodes(gm)
    assert sorted((adapter_site(n).conv, adapter_site(n).side) for n in nodes) == \
        sorted(expected)
    for node in nodes:  # biases on output adapters only
        site = adapter_site(node)
        assert (gm.get_submodule(node.target).bias is not None) == (site.side == "output")
    assert max_abs_diff(ref, _run(gm, x)) <= FP64_ATOL


def test_drop_sites_skip_depthwise_convs_in_mobilenet_v2():
    torch.manual_seed(0)
    gm = trace(torchvision.models.mobilenet_v2().eval(), (3, 64, 64))
    structure = find_structure(gm)
    paper = drop_sites(gm, structure, ["3.2"], placement="paper")
    cvpr = drop_sites(gm, structure, ["3.2"], placement="cvpr")
    assert [(s.conv, s.side) for s in paper] == [("features_6_conv_0_0", "input")]
    assert set(paper) < set(cvpr)
    assert ("features_4_conv_2", "output") in {(s.conv, s.side) for s in cvpr}
    assert ("features_7_conv_0_0", "input") in {(s.conv, s.side) for s in cvpr}
    modules = named_modules(gm)
    nodes = {node.name: node for node in gm.graph.nodes}
    assert all(modules[nodes[s.conv].target].groups == 1 for s in cvpr)
    DropBlocks(["3.2"])(gm)
    assert InsertAdapters(cvpr)(gm).modified
    assert count_modules(gm, Adapter) == len(cvpr)


def test_inner_sites_sit_before_the_projection_of_inverted_residuals():
    gm = trace(torchvision.models.mobilenet_v2().eval(), (3, 64, 64))
    structure = find_structure(gm)
    cvpr = drop_sites(gm, structure, ["3.2"], placement="cvpr")
    inner = drop_sites(gm, structure, ["3.2"], placement="inner")
    projections = {(block.convs[-1], "input") for block in structure.stages[2].blocks
                   if block.id != "3.2"}
    assert {(s.conv, s.side) for s in inner} == {(s.conv, s.side) for s in cvpr} | projections
    assert ("features_4_conv_2", "input") in projections  # block 3.1's projection 1x1
    DropBlocks(["3.2"])(gm)
    assert InsertAdapters(inner)(gm).modified and count_modules(gm, Adapter) == len(inner)


def test_drop_sites_reject_unknown_block_and_placement():
    _, _, gm = _prepared(TinyResNet())
    structure = find_structure(gm)
    with pytest.raises(PreconditionError, match=r"'4\.4'"):
        drop_sites(gm, structure, ["4.4"])
    with pytest.raises(PreconditionError, match="'v2'"):
        drop_sites(gm, structure, ["1.2"], placement="v2")


# --- structure and the caller's model ---------------------------------------------------------


def test_adapters_do_not_change_residual_block_ids():
    gm = trace(cifar_resnet(20).double().eval(), (3, 16, 16))
    structure = find_structure(gm)
    DropBlocks(["2.2"])(gm)
    ids = _ids(gm)
    assert InsertAdapters(drop_sites(gm, structure, ["2.2"], placement="cvpr"))(gm).modified
    assert _ids(gm) == ids


def test_adapters_do_not_become_blocks_of_a_plain_network():
    """In a VGG-style network an adapter on the trunk is a 1x1 conv: it must not be taken for
    a conv unit (a block), or block ids repeat and a later drop removes the adapter."""
    model, x, gm = _prepared(_vgg())
    structure = find_structure(gm)
    assert _ids(gm) == ["1.1", "1.2", "1.3", "1.4"]
    DropBlocks(["1.2"])(gm)
    assert InsertAdapters(drop_sites(gm, structure, ["1.2"], placement="paper"))(gm).modified
    assert count_modules(gm, Adapter) == 2

    assert _ids(gm) == ["1.1", "1.2", "1.3"]  # the dropped graph, numbered anew
    convs = structure.block("1.3").convs
    DropBlocks(["1.3"])(gm)
    assert not set(convs) & {node.name for node in gm.graph.nodes}


def test_original_module_is_not_modified():
    model, x, gm = _prepared(TinyResNet())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    out = _run(model, x)
    sites = [AdapterSite("layers_1_conv1", "input"), AdapterSite("layers_3_down_0", "output")]

    InsertAdapters(sites)(gm)
    randomize_adapters(gm, seed=5)

    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert count_modules(model, Adapter) == 0
    assert torch.equal(_run(model, x), out)
