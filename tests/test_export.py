"""ONNX export: ONNX Runtime matches PyTorch, any batch size runs, the write is atomic, and a
folded recovered model exports to exactly the ops of the plain pruned network."""

from __future__ import annotations

import onnx
import pytest
import torch
import torchvision
from torch import nn

from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.export import (ExportError, export_onnx, onnx_macs, onnx_max_abs_diff,
                            onnx_op_counts, onnx_params)
from fxprune.macs import count_params, node_macs, total_macs
from fxprune.models import cifar_resnet
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, FoldBatchNorm, InsertAdapters, folding
from fxprune.tracing import example_input, trace
from tests.helpers import calibrate_and_randomize, count_modules, randomize_adapters, slow_case

MODELS = {
    "cifar_resnet20": (lambda: cifar_resnet(20), (3, 32, 32)),
    "resnet18": (torchvision.models.resnet18, (3, 64, 64)),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, (3, 64, 64)),
}



def _calibrated(name: str):
    """A traced model whose BN statistics fit its inputs, so outputs are O(1) and an absolute
    tolerance means something."""
    build, size = MODELS[name]
    gm = trace(build().eval(), size)
    calibrate_and_randomize(gm, example_input(size, batch=8, seed=5))
    return gm, size


@pytest.mark.parametrize("name", [name if name == "cifar_resnet20" else slow_case(name)
                                  for name in MODELS])
def test_onnx_runtime_matches_torch_at_any_batch(name, tmp_path):
    gm, size = _calibrated(name)
    path = export_onnx(gm, size, tmp_path / "model.onnx")
    onnx.checker.check_model(str(path))
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    for batch in (1, 3):
        x = example_input(size, batch=batch, seed=batch)
        assert onnx_max_abs_diff(gm, path, x) <= 1e-4


def test_write_is_atomic(tmp_path):
    gm, size = _calibrated("cifar_resnet20")
    path = export_onnx(gm, size, tmp_path / "model.onnx")
    before = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot run")

    with pytest.raises(ExportError, match="Broken"):
        export_onnx(Broken(), size, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left
    assert path.read_bytes() == before  # the earlier export is untouched


@pytest.mark.slow
def test_folded_recovered_model_has_the_ops_of_the_plain_pruned_network(tmp_path):
    gm, size = _calibrated("resnet18")
    ids = ["1.2", "2.2", "3.2"]
    plain = PassManager([DropBlocks(ids), FoldBatchNorm()])(trace(gm, size)).graph_module
    recovered = trace(gm, size)
    sites = drop_sites(recovered, find_structure(recovered), ids, placement="cvpr")
    recovered = PassManager([DropBlocks(ids), InsertAdapters(sites)])(recovered).graph_module
    assert randomize_adapters(recovered, scale=0.3) == len(sites) > 0
    x = example_input(size, batch=2, seed=2)
    with torch.no_grad():
        expected = recovered(x)
    recovered = folding()(recovered).graph_module

    plain_ops = onnx_op_counts(export_onnx(plain, size, tmp_path / "plain.onnx"))
    folded_path = export_onnx(recovered, size, tmp_path / "folded.onnx")
    assert onnx_op_counts(folded_path) == plain_ops
    assert plain_ops["Conv"] == count_modules(plain, nn.Conv2d)
    assert "BatchNormalization" not in plain_ops and "Identity" not in plain_ops
    # The folded ONNX computes the recovered network (adapters included), not the plain one.
    max_error = onnx_max_abs_diff(recovered, folded_path, x)
    assert max_error <= 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize("build, size", [slow_case(torchvision.models.resnet18, (3, 224, 224)),
                                         (lambda: cifar_resnet(20), (3, 32, 32))])
def test_macs_and_params_from_the_onnx_graph_match_torch(build, size, tmp_path):
    gm = FoldBatchNorm()(trace(build().eval(), size)).graph_module
    path = export_onnx(gm, size, tmp_path / "model.onnx")
    torch_macs = total_macs(node_macs(gm, [example_input(size)]))
    assert onnx_macs(path) == pytest.approx(torch_macs, rel=0.005)
    assert onnx_macs(path) == torch_macs  # same convention: conv and matmul MACs per image
    assert onnx_params(path) == count_params(gm)


def test_unreadable_onnx_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(ExportError, match="bad.onnx"):
        onnx_op_counts(bad)
