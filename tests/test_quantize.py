"""Static int8 quantization of an exported network, calibrated on a batch of images."""

from __future__ import annotations

import onnx
import pytest
import torch

from fxprune.errors import FxpruneError
from fxprune.evaluate import onnx_predictions
from fxprune.export import export_onnx, onnx_op_counts, onnx_outputs, onnx_params
from fxprune.models import cifar_resnet
from fxprune.quantize import quantize_onnx
from fxprune.tracing import example_input, trace
from tests.helpers import calibrate_and_randomize

SIZE = (3, 32, 32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A CIFAR ResNet-20 with realistic BN statistics, as fp32 ONNX, and its images."""
    images = example_input(SIZE, batch=48, seed=0)
    torch.manual_seed(0)  # the weights: the same network whatever ran before
    gm = trace(cifar_resnet(20).eval(), SIZE)
    calibrate_and_randomize(gm, images)
    path = export_onnx(gm, SIZE, tmp_path_factory.mktemp("quantize") / "model.onnx")
    return gm, path, images


@pytest.mark.slow
def test_int8_graph_is_close_to_fp32(exported, tmp_path):
    gm, path, images = exported
    calibration, held_out = images[:32], images[32:]
    quantized = quantize_onnx(path, calibration, tmp_path / "model.int8.onnx")
    ops = onnx_op_counts(quantized)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    weights = [t for t in onnx.load(quantized).graph.initializer if len(t.dims) >= 2]
    assert len(weights) == ops["Conv"] + ops["Gemm"]
    assert all(t.data_type == onnx.TensorProto.INT8 for t in weights)  # no fp32 weight left
    expected, actual = onnx_outputs(path, held_out), onnx_outputs(quantized, held_out)
    # 8 bits: an RMS logit error of about 2 % on images the ranges never saw (seeds 0-7 of
    # this network: 1.8-2.5 %; fp32 weights stored by mistake would give ~0)
    relative_rms = (actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()
    assert 0.002 < relative_rms < 0.05
    # batches of 5 cover the concatenation; the int8 file predicts from its own logits
    assert torch.equal(onnx_predictions(quantized, held_out, batch_size=5), actual.argmax(1))
    assert torch.equal(onnx_predictions(path, held_out, batch_size=5), gm(held_out).argmax(1))
    # the weights stored: the same count in int8 as in fp32, scales and zero points aside
    assert onnx_params(quantized) == onnx_params(path) > 250_000


@pytest.mark.slow
def test_same_images_same_file(exported, tmp_path):
    _, path, images = exported
    first = quantize_onnx(path, images[:16], tmp_path / "a.onnx").read_bytes()
    assert quantize_onnx(path, images[:16], tmp_path / "b.onnx").read_bytes() == first
    assert quantize_onnx(path, images[16:32], tmp_path / "c.onnx").read_bytes() != first


def test_what_cannot_be_quantized_is_refused(exported, tmp_path):
    _, path, images = exported
    for bad in (torch.zeros(4, 3, 28, 28), images[:0], images[0]):
        with pytest.raises(FxpruneError, match=r"calibration images of shape .* do not fit"):
            quantize_onnx(path, bad, tmp_path / "never.onnx")
    with pytest.raises(FxpruneError, match="NaN or infinite"):
        quantize_onnx(path, torch.full_like(images[:4], float("nan")), tmp_path / "never.onnx")
    quantized = quantize_onnx(path, images[:8], tmp_path / "deeper" / "int8.onnx")
    with pytest.raises(FxpruneError, match="quantized already.*QuantizeLinear"):
        quantize_onnx(quantized, images[:8], tmp_path / "never.onnx")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deeper", "int8.onnx"]
