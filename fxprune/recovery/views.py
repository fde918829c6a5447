"""More training pairs from the same tiny set: augmented views.

The teacher labels any input for free, so every augmented view of a tiny-set image is one more
label-free pair (the view, the teacher's features on it) for the adapters to mimic. Adapters fit
to a few images' features learn those images' quirks; views spread the inputs the fit sees over
the neighbourhood of each image, nearer to what unseen images look like.

``views`` extra copies of the set are appended, each image cropped and flipped as in training
(``fxprune.datasets.augment``); with ``mix``, each view is then blended with another image of
the set, ``λ·a + (1 − λ)·b`` with ``λ ~ U(0.5, 1)`` per image, so the fit also sees inputs
between the tiny set's images. The originals stay first, unchanged; everything is drawn from a
generator seeded by ``seed``.

``views_for(n)``, the default of ``fxprune.Recovery``: a set smaller than one recovery
minibatch gets as many views as bring it to ``MIN_PAIRS`` pairs. ResNet-56-50% (filter
pruning), 3 seeds, top-1 lost against the original with 10 images: 7.57 points with no view,
5.64 with 8, 5.18 with 24, 5.77 with 50; with 20 images: 5.15, 4.29 with 8, 3.93 with 16, 4.13
with 25; with 30: 4.10, 3.54 with 16 — the gain comes from the first few hundred pairs
(``tools/results/filter_views.md``). A set that fills minibatches gets none: each step then
draws other images already, and views only cost time (ResNet-56, 3 blocks, 50 images, 5 views:
top-1 91.64 against 91.74 lossless, 81.63 against 81.43 JPEG, 3 seeds; 22.0 s instead of
18.5 s, ``tools/results/speed.md``).
"""

from __future__ import annotations

import math

import torch

from fxprune.datasets import augment
from fxprune.recovery.fit import RECOVERY_BATCH

MIN_PAIRS = 256


def views_for(images: int) -> int:
    """For a set of fewer than ``RECOVERY_BATCH`` images, the views that bring it to at least
    ``MIN_PAIRS`` pairs; 0 otherwise."""
    if images >= RECOVERY_BATCH:
        return 0
    return math.ceil(MIN_PAIRS / max(images, 1)) - 1


def with_views(images: torch.Tensor, views: int, mix: bool, seed: int) -> torch.Tensor:
    """``images`` followed by ``views`` augmented copies of the set (see the module doc)."""
    if views < 0:
        raise ValueError(f"views must be at least 0, not {views}")
    generator = torch.Generator().manual_seed(seed)
    extra = []
    for _ in range(views):
        view = augment(images, generator)
        extra.append(blend(view, generator) if mix else view)
    return torch.cat([images, *extra]) if extra else images


def blend(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``batch`` blended with another one of the batch, ``λ·a + (1 − λ)·b``,
    ``λ ~ U(0.5, 1)`` per image, so that every image stays the larger part of its blend; a
    batch of one image is returned as it is."""
    count = len(batch)
    if count < 2:
        return batch
    # a partner other than the image itself: shift by 1..n-1 places
    shift = torch.randint(1, count, (count,), generator=generator)
    partner = batch[(torch.arange(count) + shift) % count]
    weight = (0.5 + 0.5 * torch.rand(count, generator=generator)).to(batch).view(-1, 1, 1, 1)
    return weight * batch + (1 - weight) * partner
