"""Accuracy and label-free agreement of classifiers on a batch of images."""

from __future__ import annotations

import torch
from torch import nn

from fxprune.recovery.segments import run_batched


def predictions(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted class of every image (eval mode)."""
    model.eval()
    return run_batched(model, [images], batch_size)[0].argmax(1)


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
         batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (predictions(model, images, batch_size) == labels).float().mean().item()


def agreement(reference: nn.Module, model: nn.Module, images: torch.Tensor,
              batch_size: int = 256) -> float:
    """Percent of images on which ``model`` predicts the same class as ``reference``: a quality
    estimate that needs no labels."""
    same = predictions(reference, images, batch_size) == predictions(model, images, batch_size)
    return 100.0 * same.float().mean().item()
