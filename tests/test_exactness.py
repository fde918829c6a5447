"""Folding is exact on every supported architecture: drop the paper's blocks, insert adapters
at the derived sites, move them and the BN statistics away from the identity, fold, compare."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fxprune.adapters import Adapter
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.resolve import paper_rule
from fxprune.models import cifar_resnet
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, InsertAdapters, folding
from fxprune.tracing import example_input, trace
from tests.helpers import (calibrate_and_randomize, count_modules, max_abs_diff, max_rel_diff,
                           randomize_adapters)
from tests.test_structure import FunctionalResNet

ARCHITECTURES = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet34": lambda: torchvision.models.resnet34(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "resnet101": lambda: torchvision.models.resnet101(),
    "wide_resnet50_2": lambda: torchvision.models.wide_resnet50_2(),
    "resnext50_32x4d": lambda: torchvision.models.resnext50_32x4d(),
    "vgg16": lambda: torchvision.models.vgg16(),
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "mobilenet_v3_large": lambda: torchvision.models.mobilenet_v3_large(),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(),
    "cifar_resnet56": lambda: cifar_resnet(56),
    "functional": FunctionalResNet,
}
SIZES = {"cifar_resnet56": (3, 32, 32), "functional": (3, 16, 16)}


def _compressed(model: nn.Module, size, dtype, placement: str):
    model = model.to(dtype).eval()
    x = example_input(size, batch=2, dtype=dtype, seed=1)
    gm = trace(model, size)
    calibrate_and_randomize(gm, x)
    structure = find_structure(gm)
    ids = paper_rule(structure)
    sites = drop_sites(gm, structure, ids, placement)
    gm = PassManager([DropBlocks(ids), InsertAdapters(sites)])(gm).graph_module
    return gm, x, ids, sites


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fold_is_exact(name):
    size = SIZES.get(name, (3, 64, 64))
    model = ARCHITECTURES[name]()
    for dtype, placement, tolerance, metric in [
            (torch.float64, "paper", 1e-9, max_abs_diff),
            (torch.float64, "cvpr", 1e-9, max_abs_diff),
            (torch.float32, "cvpr", 1e-4, max_rel_diff)]:
        gm, x, ids, sites = _compressed(model, size, dtype, placement)
        assert ids and sites, "the paper's rule drops blocks and the drop needs adapters"
        identity_output = gm(x).detach()
        assert randomize_adapters(gm, scale=0.3) == len(sites)
        with torch.no_grad():
            unfolded = gm(x)
            assert max_abs_diff(unfolded, identity_output) > 1e-6  # the adapters do something
            assert folding()(gm).modified
            folded = gm(x)
        assert count_modules(gm, (Adapter, nn.BatchNorm2d)) == 0
        error = metric(unfolded, folded)
        assert error <= tolerance, f"{name} {dtype} {placement}: error {error:.3g}"
