"""Pixels to model inputs: decoding image files, the resize rule, normalisation, augmentation.

Resize rule of :func:`to_tensor` for a model input of ``(C, H, W)`` (``resize_plan``):

* an image already ``H x W`` is used as is;
* small inputs (``min(H, W) < 128``, e.g. CIFAR's 32x32): plain bilinear resize to ``H x W``
  (the aspect ratio is not kept);
* ImageNet-style inputs (``min(H, W) >= 128``): resize so the shorter side is
  ``round(min(H, W) * 256 / 224)`` (256 for 224, 342 for 299), keeping the aspect ratio, then
  take the centre ``H x W`` crop, i.e. torchvision's ``Resize(256) + CenterCrop(224)``.

Resizing is bilinear with antialiasing (PIL for image files, ``F.interpolate(antialias=True)``
for in-memory pools) and the result is rounded to whole pixel values as a uint8 image would
be, before scaling to [0, 1] and normalising with the model's mean and std.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fxprune.errors import FxpruneError

if TYPE_CHECKING:
    from fxprune.datasets.pools import ImagePool

_T = TypeVar("_T")
_R = TypeVar("_R")
_PROGRESS_ABOVE = 256  # files; below this no progress bar is shown
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")


def parallel_map(fn: Callable[[_T], _R], items: Sequence[_T], desc: str) -> list[_R]:
    """``[fn(x) for x in items]`` on a few threads (PIL decodes without the GIL), in order, with
    a progress bar on a terminal when there are many items."""
    bar = tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr,
               disable=None if len(items) > _PROGRESS_ABOVE else True, leave=False)
    with bar:
        if len(items) <= 32:
            return [_tick(bar, fn(item)) for item in items]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return [_tick(bar, result) for result in pool.map(fn, items)]


def _tick(bar: tqdm, value: _R) -> _R:
    bar.update(1)
    return value


def check_image(path: Path) -> Exception | None:
    """None when ``path`` decodes completely, else the error. JPEGs are decoded at reduced scale
    (which still reads all the compressed data) to keep this cheap for large photographs."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...)
        return exc
    return None


def resize_plan(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Size ``(rh, rw)`` to resize an ``h x w`` image to, and the ``(top, left)`` of the
    ``height x width`` centre crop taken from it (see the module docstring)."""
    if (h, w) == (height, width):
        return h, w, 0, 0
    if min(height, width) < 128:
        return height, width, 0, 0
    short = round(min(height, width) * 256 / 224)
    if h <= w:
        rh, rw = short, int(short * w / h)
    else:
        rh, rw = int(short * h / w), short
    rh, rw = max(rh, height), max(rw, width)
    return rh, rw, int(round((rh - height) / 2.0)), int(round((rw - width) / 2.0))


def _load_file(path: Path, height: int, width: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except Exception as exc:  # the file changed or broke after the pool was opened
        raise FxpruneError(f"cannot read image file {path}: {exc}") from exc
    rh, rw, top, left = resize_plan(image.height, image.width, height, width)
    if (rh, rw) != (image.height, image.width):
        image = image.resize((rw, rh), Image.Resampling.BILINEAR)
    if (rh, rw) != (height, width):
        image = image.crop((left, top, left + width, top + height))
    return np.asarray(image, dtype=np.uint8)


def _resize_tensor(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize/crop a float NCHW batch of 0..255 pixel values by :func:`resize_plan`."""
    rh, rw, top, left = resize_plan(x.shape[2], x.shape[3], height, width)
    if (rh, rw) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255)
    return x[:, :, top:top + height, left:left + width]


def pixels(pool: ImagePool, height: int, width: int) -> torch.Tensor:
    """The pool's images as a float32 NCHW RGB batch of 0..255 values at ``height x width``."""
    if isinstance(pool.images, torch.Tensor):
        return _resize_tensor(pool.images.float(), height, width)
    if len(pool) == 0:
        return torch.zeros(0, 3, height, width)
    arrays = parallel_map(lambda p: _load_file(p, height, width), pool.images, f"decoding {pool.name}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def to_tensor(pool: ImagePool, input_size: tuple[int, int, int], mean: Sequence[float],
              std: Sequence[float]) -> torch.Tensor:
    """The pool as a float32 normalised NCHW batch for a model taking ``input_size`` (C, H, W):
    ``(pixel / 255 - mean) / std`` per channel, after the resize rule of the module docstring.
    C may be 3 (RGB) or 1 (luma of the RGB image)."""
    channels, height, width = input_size
    if channels not in (1, 3):
        raise FxpruneError(f"input size {tuple(input_size)}: only 1- or 3-channel inputs are supported")
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise FxpruneError(f"mean {tuple(mean)} / std {tuple(std)} do not fit {channels} input channels")
    x = pixels(pool, height, width)
    if channels == 1:
        x = torch.einsum("nchw,c->nhw", x, torch.tensor(_LUMA)).round().unsqueeze(1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return ((x / 255.0 - mean_t) / std_t).contiguous()


def iter_batches(pool: ImagePool, input_size: tuple[int, int, int], mean: Sequence[float],
                 std: Sequence[float], batch_size: int = 256,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(inputs, labels)`` batches of :func:`to_tensor` in pool order, decoding one batch at a
    time (labels is None for an unlabelled pool): for evaluating on large image folders."""
    for start in range(0, len(pool), batch_size):
        part = pool.subset(range(start, min(start + batch_size, len(pool))))
        yield to_tensor(part, input_size, mean, std), part.labels


def augment(batch: torch.Tensor, generator: torch.Generator, *, pad: int | None = None,
            fill: float | Sequence[float] = 0.0, flip: bool = True) -> torch.Tensor:
    """Standard CIFAR/ImageNet training augmentation of a normalised NCHW batch: random crop of
    the original size from the image padded by ``pad`` pixels on each side (default 4, or 1/8
    of the shorter side for inputs larger than 32), then a horizontal flip with probability 1/2.

    Every image gets its own offsets and flip, all drawn from ``generator`` (so the result is
    a function of the batch and the generator state alone); the work is vectorised. Padding uses
    ``fill`` per channel, default 0 = the mean colour of normalised inputs; pass ``-mean/std``
    to pad with black pixels exactly as torchvision's ``RandomCrop(32, 4)`` on images does.
    """
    if batch.dim() != 4:
        raise FxpruneError(f"augment expects an NCHW batch, got shape {tuple(batch.shape)}")
    n, c, h, w = batch.shape
    pad = max(4, min(h, w) // 8) if pad is None else pad
    draw = dict(generator=generator, device=generator.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), **draw).to(batch.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), **draw).to(batch.device)
    flips = (torch.rand(n, **draw) < 0.5).to(batch.device)
    if pad > 0:
        fill_t = torch.as_tensor(fill, dtype=batch.dtype, device=batch.device).reshape(-1, 1, 1)
        padded = fill_t.expand(c, h + 2 * pad, w + 2 * pad).repeat(n, 1, 1, 1)
        padded[:, :, pad:pad + h, pad:pad + w] = batch
        rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]
        index_n = torch.arange(n, device=batch.device)[:, None, None, None]
        index_c = torch.arange(c, device=batch.device)[None, :, None, None]
        out = padded[index_n, index_c, rows, cols]
    else:
        out = batch.clone()
    if flip:
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out
