"""Every supported architecture, and the paper's compression of one up to the fold: shared by
the exactness test and ``tools/fold_errors.py``, which measures the same folds."""

from __future__ import annotations

import torch
import torchvision
from torch import fx, nn

from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.models import cifar_resnet
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, InsertAdapters
from fxprune.resolve import paper_rule
from fxprune.tracing import example_input, trace
from tests.helpers import calibrate_and_randomize
from tests.zoo_modules import FunctionalResNet

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
DEFAULT_SIZE = (3, 64, 64)


def input_size(name: str) -> tuple[int, int, int]:
    return SIZES.get(name, DEFAULT_SIZE)


def compressed_with_adapters(model: nn.Module, size, dtype, placement: str
                             ) -> tuple[fx.GraphModule, torch.Tensor, list[str], list]:
    """``model`` traced in ``dtype`` with randomised BN statistics, the paper's blocks dropped
    and identity adapters at their ``placement`` sites: (graph, input, dropped ids, sites)."""
    model = model.to(dtype).eval()
    x = example_input(size, batch=2, dtype=dtype, seed=1)
    gm = trace(model, size)
    calibrate_and_randomize(gm, x)
    structure = find_structure(gm)
    ids = paper_rule(structure)
    sites = drop_sites(gm, structure, ids, placement)
    gm = PassManager([DropBlocks(ids), InsertAdapters(sites)])(gm).graph_module
    return gm, x, ids, sites
