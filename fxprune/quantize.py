"""Static int8 quantization of an exported network, calibrated on the tiny set.

The images that recovered the network also fix its activation ranges: ONNX Runtime's static
quantizer runs them through the fp32 graph, records each tensor's min/max, and writes a QDQ
graph (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels) with
int8 weights, symmetric and per output channel, and uint8 activations. No label is needed,
and min/max calibration makes the file a deterministic function of the images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fxprune.errors import FxpruneError
from fxprune.export import cpu_session, onnx_input_size

QUANTIZED_FILE = "model.int8.onnx"


class _Batches(CalibrationDataReader):
    """The calibration images, a batch at a time, as ONNX Runtime's quantizer reads them."""

    def __init__(self, input_name: str, images: torch.Tensor, batch_size: int):
        array = images.detach().float().contiguous().cpu().numpy()
        self._feeds = iter([{input_name: array[start:start + batch_size]}
                            for start in range(0, len(array), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(source: str | Path, images: torch.Tensor, path: str | Path,
                  batch_size: int = 16) -> Path:
    """Write the int8 version of the fp32 ONNX file ``source`` to ``path``, activation ranges
    calibrated on ``images`` (a normalised NCHW batch, as the network takes it); returns
    ``path``."""
    expected = onnx_input_size(source)
    if images.dim() != 4 or len(images) == 0 or (
            expected is not None and tuple(images.shape[1:]) != tuple(expected)):
        raise FxpruneError(f"calibration images of shape {tuple(images.shape)} do not fit "
                           f"'{source}', which takes N x {expected}")
    input_name = cpu_session(source).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="fxprune-quantize-") as scratch:
        # shape inference and graph optimisation first, as the quantizer asks
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(path), _Batches(input_name, images, batch_size),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(path)


def onnx_predictions(path: str | Path, images: torch.Tensor, batch_size: int = 256
                     ) -> torch.Tensor:
    """Predicted class of every image by ONNX Runtime (CPU) running ``path``."""
    session = cpu_session(path)
    name = session.get_inputs()[0].name
    array = images.detach().float().contiguous().cpu().numpy()
    logits = [session.run(None, {name: array[start:start + batch_size]})[0]
              for start in range(0, len(array), batch_size)]
    return torch.from_numpy(np.concatenate(logits).argmax(1))
