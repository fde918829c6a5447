"""Static int8 quantization of an exported network, calibrated on the tiny set.

The images that recovered the network also fix its activation ranges: ONNX Runtime's static
quantizer runs them through the fp32 graph, records each tensor's min/max, and writes a QDQ
graph (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels) with
int8 weights, symmetric and per output channel, and uint8 activations. No label is needed,
and min/max calibration makes the file a deterministic function of the images.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fxprune.errors import FxpruneError
from fxprune.export import as_array, onnx_input_size, onnx_op_counts

QUANTIZED_FILE = "model.int8.onnx"
# ops of a graph that is quantized already: quantizing it again would never end (ORT 1.32)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")


class _Batches(CalibrationDataReader):
    """The calibration images, a batch at a time, as ONNX Runtime's quantizer reads them."""

    def __init__(self, input_name: str, images: torch.Tensor, batch_size: int):
        self._feeds = iter([{input_name: as_array(batch)} for batch in images.split(batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(source: str | Path, images: torch.Tensor, path: str | Path,
                  batch_size: int = 16) -> Path:
    """Write the int8 version of the fp32 ONNX file ``source`` to ``path``, activation ranges
    calibrated on ``images`` (a normalised NCHW batch, as the network takes it); returns
    ``path``. ``path`` appears complete or not at all."""
    _check(source, images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    try:
        with tempfile.TemporaryDirectory(prefix="fxprune-quantize-") as scratch:
            # shape inference and graph optimisation first, as the quantizer asks
            prepared = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            quantize_static(str(prepared), str(partial),
                            _Batches(input_name, images, batch_size),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        os.replace(partial, path)
    except Exception as error:  # ORT's quantizer raises plain Exceptions and AssertionErrors
        first_line = (str(error).splitlines() or [""])[0]
        raise FxpruneError(f"ONNX Runtime could not quantize '{source}': "
                           f"{type(error).__name__}: {first_line}") from error
    finally:
        partial.unlink(missing_ok=True)
    return path


def _check(source: str | Path, images: torch.Tensor) -> None:
    """Refuse what the quantizer would choke on, naming the file or the images."""
    expected = onnx_input_size(source)
    if images.dim() != 4 or len(images) == 0 or (
            expected is not None and tuple(images.shape[1:]) != tuple(expected)):
        raise FxpruneError(f"calibration images of shape {tuple(images.shape)} do not fit "
                           f"'{source}', which takes N x {expected}")
    if not torch.isfinite(images).all():
        raise FxpruneError("the calibration images hold NaN or infinite values")
    found = sorted(set(onnx_op_counts(source)) & set(QUANTIZED_OPS))
    if found:
        raise FxpruneError(f"'{source}' is quantized already ({', '.join(found)}); quantize the "
                           "fp32 file")
