"""Images for tiny-set recovery and evaluation.

* :mod:`~fxprune.datasets.pools` — :class:`ImagePool` and :func:`open_pool` (spec strings such
  as ``cifar10``, ``cifar10-jpeg``, ``imagenet32``, ``imagenet-sample``, ``folder:DIR``,
  ``noise:N``);
* :mod:`~fxprune.datasets.sampling` — :func:`sample` / :func:`split_pool` (seeded, nested draws
  of ``n`` images or ``per_class`` images, with the complement for held-out evaluation);
* :mod:`~fxprune.datasets.images` — :func:`to_tensor` / :func:`iter_batches` (resize rule and
  normalisation for a model's input size, mean and std) and :func:`augment` (random crop +
  flip on normalised batches).
"""

from fxprune.datasets.images import augment, iter_batches, resize_plan, to_tensor
from fxprune.datasets.pools import ACCEPTED_SPECS, CIFAR10_CLASSES, ImagePool, open_pool
from fxprune.datasets.sampling import sample, split_pool

__all__ = [
    "ACCEPTED_SPECS",
    "CIFAR10_CLASSES",
    "ImagePool",
    "augment",
    "iter_batches",
    "open_pool",
    "resize_plan",
    "sample",
    "split_pool",
    "to_tensor",
]
