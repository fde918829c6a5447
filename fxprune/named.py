"""Compression by names: a model spec (``cifar:resnet56``, ``timm:resnet18``, ``file.py:fn``)
and an image pool spec (``cifar10``, ``folder:DIR``), loaded, drawn and normalised here, then
planned and run (``fxprune.job.run``). What ``fxprune compress`` and ``fxprune demo`` do."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fxprune.datasets import ImagePool, open_pool, split_pool, to_tensor
from fxprune.errors import FxpruneError
from fxprune.execute import resolve_device
from fxprune.job import Evaluation, RunSettings, run, write
from fxprune.models import LoadedModel, load_model
from fxprune.options import Options
from fxprune.plan import CompressionPlan, plan
from fxprune.report import Report, Source
from fxprune.tracing import run_example


@dataclass(frozen=True)
class NamedJob:
    """A compression of the model ``model`` from ``images`` (or ``shots`` per class) drawn
    from the pool ``data`` with ``options.seed``; evaluated on the pool ``evaluation``
    (default: the pool's test split where it has one, else its images not drawn)."""

    model: str
    data: str
    images: int | None = None
    shots: int | None = None
    weights: str | None = None
    input_size: tuple[int, int, int] | None = None
    leaf: tuple[str, ...] = ()
    evaluation: str | None = None
    options: Options = field(default_factory=Options)
    settings: RunSettings = field(default_factory=RunSettings)


@dataclass
class _Loaded:
    model: LoadedModel
    size: tuple[int, int, int]
    chosen: ImagePool
    evaluation: ImagePool
    images: torch.Tensor  # the tiny set, normalised


def _load(job: NamedJob) -> _Loaded:
    resolve_device(job.settings.device)  # before any work: a typo must not cost a minute
    loaded = load_model(job.model, job.weights)
    size = job.input_size or loaded.input_size
    chosen, rest = split_pool(open_pool(job.data), n=job.images, per_class=job.shots,
                              seed=job.options.seed)
    if len(chosen) == 0:
        raise FxpruneError("the tiny set is empty: ask for at least one image")
    if job.evaluation:
        evaluation = open_pool(job.evaluation, "test")
    else:
        evaluation = open_pool(job.data, "test") if job.data.split(":", 1)[0] == "cifar10" \
            else rest
    images = to_tensor(chosen, size, loaded.mean, loaded.std)
    return _Loaded(loaded, size, chosen, evaluation, images)


def _plan(job: NamedJob, loaded: _Loaded) -> CompressionPlan:
    return plan(loaded.model.model, job.options, input_size=loaded.size, images=loaded.images,
                leaf_modules=job.leaf, progress=job.settings.progress)


def plan_named(job: NamedJob) -> CompressionPlan:
    """The plan ``compress_named`` would run (``fxprune compress --dry-run``)."""
    return _plan(job, _load(job))


def compress_named(job: NamedJob, out: Path) -> Report:
    """The whole job, its outputs written into the existing folder ``out``."""
    start = time.perf_counter()
    loaded = _load(job)
    model = loaded.model
    eval_images = to_tensor(loaded.evaluation, loaded.size, model.mean, model.std)
    _check_labels(model, eval_images[:1], loaded.chosen, loaded.evaluation)
    result = run(_plan(job, loaded), loaded.images, loaded.chosen.labels,
                 evaluation=Evaluation(eval_images, loaded.evaluation.labels), out=out,
                 settings=job.settings)
    report = result.report
    report.source = Source(
        model=job.model, weights=model.weights, data=job.data,
        tiny_set={"images": len(loaded.chosen), "per_class": job.shots,
                  "seed": job.options.seed, "labelled": loaded.chosen.labels is not None},
        evaluation={"pool": loaded.evaluation.name, "images": len(loaded.evaluation),
                    "labelled": loaded.evaluation.labels is not None})
    report.seconds_total = time.perf_counter() - start
    write(report, out)
    return report


def _check_labels(loaded: LoadedModel, example, *pools: ImagePool) -> None:
    """Labels are used as the model's class indices (accuracy, cross-entropy): they must fit."""
    classes = run_example(loaded.model.eval(), example).shape[-1]
    for pool in pools:
        if pool.labels is not None and len(pool.labels) and int(pool.labels.max()) >= classes:
            raise FxpruneError(
                f"pool {pool.name} has label {int(pool.labels.max())} but the model predicts "
                f"{classes} classes: labels must be the model's class indices (for a folder, "
                "its sorted class sub-folders must match the model's class order)")
