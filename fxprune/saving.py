"""Saving a compressed model so that it runs without the original model's code.

The model is captured with ``torch.export`` (ATen ops only, dynamic batch dimension) and
written as a ``.pt2`` archive: loading it needs torch, not the Python classes the model was
built from, nor fxprune's. A compress output folder holds it as ``model.pt2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fxprune.errors import FxpruneError
from fxprune.graph import parameter_dtype
from fxprune.tracing import example_input

MODEL_FILE = "model.pt2"


def save(model: nn.Module, input_size: Sequence[int], path: str | Path) -> Path:
    """Write ``model`` (in eval mode, for inputs of ``input_size`` = C, H, W and any batch) to
    ``path``. Raises ``FxpruneError`` naming the op torch.export cannot capture."""
    path = Path(path)
    model = model.eval()
    example = example_input(tuple(input_size), batch=2, dtype=parameter_dtype(model))
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as error:  # torch.export raises many kinds, all with a useful message
        raise FxpruneError(f"torch.export cannot capture the model for {path}: "
                           f"{str(error).splitlines()[0]}") from error
    torch.export.save(program, path)
    return path


def load(path: str | Path) -> nn.Module:
    """A model saved by :func:`save`, or the one in a compress output folder. It is a plain
    module of ATen ops in inference mode (no parameter requires grad)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FxpruneError(f"no saved model at {path} (expected a .pt2 file written by "
                           "fxprune, or a compress output folder holding model.pt2)")
    try:
        module = torch.export.load(path).module()
    except Exception as error:
        raise FxpruneError(f"cannot load {path}: not a torch.export archive, or a damaged one "
                           f"({type(error).__name__})") from error
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
