"""Accuracy and label-free agreement of classifiers on a batch of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fxprune.export import as_array, cpu_session
from fxprune.recovery.segments import run_batched


def predictions(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted class of every image (eval mode)."""
    model.eval()
    return run_batched(model, [images], batch_size)[0].argmax(1)


def onnx_predictions(path: str | Path, images: torch.Tensor, batch_size: int = 256
                     ) -> torch.Tensor:
    """Predicted class of every image by ONNX Runtime (CPU, torch's thread count) running the
    ONNX file ``path``."""
    session = cpu_session(path, threads=torch.get_num_threads())
    name = session.get_inputs()[0].name
    array = as_array(images)
    logits = [session.run(None, {name: array[start:start + batch_size]})[0]
              for start in range(0, len(array), batch_size)]
    return torch.from_numpy(np.concatenate(logits).argmax(1))


def percent_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Percent of positions where two label vectors agree: top-1 accuracy against the labels,
    or, against the original model's predictions, a quality estimate that needs no labels."""
    return 100.0 * (a == b).float().mean().item()


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
         batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    return percent_equal(predictions(model, images, batch_size), labels)
