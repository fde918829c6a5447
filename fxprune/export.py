"""ONNX export of a (compressed) model, and what the exported graph costs.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): the
torch.export-based exporter needs ``onnxscript``, which is not installed here, while the
TorchScript one exports every architecture fxprune handles (torchvision ResNets, MobileNets,
EfficientNets, VGGs, the CIFAR ResNets with pad-and-subsample shortcuts) from a traced
``GraphModule`` with a dynamic batch dimension, and matches PyTorch in ONNX Runtime to ~1e-6.
In eval mode it folds BatchNorm into the preceding conv itself, so a plain network ships without
BatchNormalization nodes just as a ``FoldBatchNorm``-ed one does.

MACs and parameters are read from the ONNX graph, not from torch, so an ``.onnx`` file can be
costed without the model that produced it. MACs follow ``torch.utils.flop_counter`` (FLOPs / 2
of convolutions and matrix products, per image), so both counts agree exactly on conv nets.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from torch import nn

from fxprune.errors import FxpruneError
from fxprune.tracing import example_input

INPUT_NAME = "input"
OUTPUT_NAME = "output"
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


class ExportError(FxpruneError):
    """A model that the ONNX exporter rejects, or an ONNX file that cannot be read or costed."""


def export_onnx(model: nn.Module, input_size: Sequence[int], path: str | Path,
                opset: int = 17) -> Path:
    """Write ``model`` (an ``nn.Module`` or ``GraphModule``) as ONNX for NCHW inputs of
    ``input_size`` = (C, H, W) and any batch size; returns the path written.

    The file appears atomically (a temp file in the same folder, checked, then renamed), so a
    crash or a checker failure never leaves a half-written model where a reader expects one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name (not mkstemp, whose 0600 mode the renamed file would keep).
    temp_name = str(path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"))
    was_training = model.training
    model.eval()
    try:
        # Batch 2, not 1: a batch of one can let the exporter bake the batch size into shapes.
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        example = example_input(input_size, batch=2, dtype=dtype)
        with warnings.catch_warnings():  # "legacy exporter" and constant-folding notices
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            torch.onnx.export(model, (example,), temp_name, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        exported = onnx.load(temp_name)
        if _inline_shared_initializers(exported):
            onnx.save(exported, temp_name)
        onnx.checker.check_model(temp_name)
        os.replace(temp_name, path)
    except (torch.onnx.errors.OnnxExporterError, onnx.checker.ValidationError,
            RuntimeError) as error:
        raise ExportError(f"cannot export {type(model).__name__} to ONNX: "
                          f"{type(error).__name__}: {str(error).splitlines()[0]}") from error
    finally:
        model.train(was_training)
        if os.path.exists(temp_name):
            os.remove(temp_name)
    return path


def _inline_shared_initializers(model: onnx.ModelProto) -> bool:
    """Give every ``Identity(initializer)`` node's output its own initializer and drop the node.

    The exporter stores equal weights once and feeds the other users through Identity nodes
    (random-init BN folds into many equal zero biases), so the op histogram would depend on the
    weights' values; after this it counts compute ops only, one parameter tensor per use."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    outputs = {value.name for value in graph.output}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and (
                node.output[0] not in outputs):
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(node)
    if len(kept) == len(graph.node):
        return False
    del graph.node[:]
    graph.node.extend(kept)
    return True


def cpu_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, one inter-op thread,
    sequential execution, all graph optimisations. Idle pool threads do not spin, so a session
    timed right after another one does not compete with its predecessor's spinning threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise ExportError(f"ONNX Runtime cannot load '{path}': {str(error).splitlines()[0]}"
                          ) from error


def as_array(images: torch.Tensor) -> np.ndarray:
    """A batch as ONNX Runtime takes it: fp32, contiguous, on the CPU, outside autograd."""
    return images.detach().float().contiguous().cpu().numpy()


def onnx_outputs(path: str | Path, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The (first) output of the ONNX file ``path`` for every image, run by ONNX Runtime (CPU,
    torch's thread count) ``batch_size`` images at a time."""
    session = cpu_session(path, threads=torch.get_num_threads())
    name = session.get_inputs()[0].name
    return torch.from_numpy(np.concatenate([session.run(None, {name: as_array(batch)})[0]
                                            for batch in images.split(batch_size)]))


def onnx_max_abs_diff(model: nn.Module, onnx_path: str | Path, inputs: torch.Tensor) -> float:
    """Max |ONNX Runtime (CPU) - PyTorch| of the (single) output for ``inputs`` (fp32, eval
    mode)."""
    session = cpu_session(onnx_path)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = model(inputs).float().numpy()
    finally:
        model.train(was_training)
    feed = {session.get_inputs()[0].name: as_array(inputs)}
    (actual,) = session.run(None, feed)
    return float(np.abs(actual - expected).max())


def onnx_op_counts(path: str | Path) -> dict[str, int]:
    """How many nodes of each op type the graph has (top-level graph), e.g. ``{"Conv": 53}``."""
    return dict(Counter(node.op_type for node in _load(path).graph.node))


def onnx_input_size(path: str | Path) -> tuple[int, ...] | None:
    """The (C, H, W) of the first input, or None where any of those dims is symbolic."""
    dims = _load(path).graph.input[0].type.tensor_type.shape.dim
    sizes = tuple(dim.dim_value if dim.HasField("dim_value") else 0 for dim in dims[1:])
    return sizes if sizes and all(sizes) else None


def onnx_params(path: str | Path) -> int:
    """Elements of the weights the shipped graph stores (with BN folded, a conv's BN parameters
    have become its bias): its floating-point initializers, and in a quantized (QDQ) graph
    the integer tensors that DequantizeLinear expands — not the scales and zero points."""
    graph = _load(path).graph
    quantizers = [node for node in graph.node
                  if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    dequantized = {node.input[0] for node in quantizers if node.op_type == "DequantizeLinear"}
    bookkeeping = {name for node in quantizers for name in node.input[1:]}
    return sum(math.prod(tensor.dims) for tensor in graph.initializer
               if tensor.name not in bookkeeping
               and (tensor.data_type in _FLOAT_TYPES or tensor.name in dequantized))


def onnx_macs(path: str | Path, input_size: Sequence[int] | None = None) -> int:
    """MACs of one image: Conv / ConvTranspose / Gemm / MatMul, from ONNX shape inference at
    batch 1. ``input_size`` (C, H, W) is needed only where the file leaves those dims symbolic."""
    model = _load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    size = [1, *(input_size or [dim.dim_value for dim in dims[1:]])]
    if len(size) != len(dims) or not all(size):
        raise ExportError(f"'{path}' has a symbolic input size; give it (--input-size C,H,W)")
    for dim, value in zip(dims, size):
        dim.Clear()
        dim.dim_value = value
    # ONNX's own inference stops at a Pad whose pads are computed (the CIFAR ResNets' option-A
    # shortcut); ONNX Runtime's symbolic inference propagates such constant shape arithmetic.
    # imported here: it loads sympy, a second of every fxprune command's start
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    shapes = _shapes(SymbolicShapeInference.infer_shapes(model, auto_merge=False))
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        try:
            a, b, out = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        except KeyError as missing:
            raise ExportError(f"no inferred shape for {missing} of {node.op_type} node "
                              f"'{node.name}' in '{path}'") from None
        if node.op_type == "Conv":  # output elements x (C_in / groups) x kernel
            total += math.prod(out) * math.prod(b[1:])
        elif node.op_type == "ConvTranspose":  # input elements x (C_out / groups) x kernel
            total += math.prod(a) * math.prod(b[1:])
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            total += math.prod(out) * (a[0] if trans_a else a[1])
        else:
            total += math.prod(out) * a[-1]
    return total


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value and initializer the graph knows."""
    graph = model.graph
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(dim.HasField("dim_value") for dim in dims):
            shapes[value.name] = tuple(dim.dim_value for dim in dims)
    return shapes


def _load(path: str | Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except (OSError, DecodeError) as error:
        raise ExportError(f"cannot read ONNX file '{path}': {error}") from error
