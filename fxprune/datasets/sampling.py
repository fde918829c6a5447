"""Drawing tiny sets from a pool, reproducibly, with the rest kept for held-out evaluation.

Draws use their own ``torch.Generator`` seeded with ``seed``, so they never depend on (or
disturb) the global RNG. They are nested: with one seed, the images chosen for ``n=100`` are
among those chosen for ``n=200`` (likewise for ``per_class``), which keeps recovery-set-size
sweeps comparable. Chosen images are returned in pool order.
"""

from __future__ import annotations

import torch

from fxprune.datasets.pools import ImagePool
from fxprune.errors import FxpruneError


def split_pool(pool: ImagePool, n: int | None = None, per_class: int | None = None,
               seed: int = 0) -> tuple[ImagePool, ImagePool]:
    """``(chosen, rest)``: ``n`` random images, or ``per_class`` random images of every class,
    and all the other images of the pool (for evaluation on images never used for recovery)."""
    if (n is None) == (per_class is None):
        raise FxpruneError("give exactly one of n (number of images) and per_class (images per class)")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        if n < 0:
            raise FxpruneError(f"cannot sample n={n} images: n must be >= 0")
        if n > len(pool):
            raise FxpruneError(f"cannot sample n={n} images from pool {pool.name}: it holds only {len(pool)}")
        chosen = order[:n]
        what = f"n={n}"
    else:
        chosen = _per_class(pool, per_class, order)
        what = f"per_class={per_class}"
    mask = torch.zeros(len(pool), dtype=torch.bool)
    mask[chosen] = True
    picked = pool.subset(mask.nonzero().flatten(), f"{pool.name}[{what},seed={seed}]")
    rest = pool.subset((~mask).nonzero().flatten(), f"{pool.name}[rest of {what},seed={seed}]")
    return picked, rest


def sample(pool: ImagePool, n: int | None = None, per_class: int | None = None,
           seed: int = 0) -> ImagePool:
    """The chosen part of :func:`split_pool` (exactly one of ``n`` and ``per_class``)."""
    return split_pool(pool, n=n, per_class=per_class, seed=seed)[0]


def _per_class(pool: ImagePool, per_class: int, order: torch.Tensor) -> torch.Tensor:
    if pool.labels is None:
        raise FxpruneError(f"cannot sample per_class={per_class} from pool {pool.name}: it is unlabelled "
                           "(use n=... instead)")
    if per_class < 0:
        raise FxpruneError(f"cannot sample per_class={per_class} images: per_class must be >= 0")
    if pool.class_names is not None:
        classes = list(range(len(pool.class_names)))
    else:
        classes = pool.labels.unique().tolist()
    shuffled = pool.labels[order]
    counts = torch.bincount(pool.labels, minlength=max(classes, default=-1) + 1)
    short = [c for c in classes if counts[c] < per_class]
    if short:
        c = short[0]
        label = f"{c} ({pool.class_names[c]})" if pool.class_names is not None else str(c)
        raise FxpruneError(f"cannot sample per_class={per_class} from pool {pool.name}: class {label} has "
                           f"only {int(counts[c])} image(s)"
                           + (f" ({len(short)} classes are short)" if len(short) > 1 else ""))
    parts = [order[shuffled == c][:per_class] for c in classes]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
