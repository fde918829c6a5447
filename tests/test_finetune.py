"""Finetuning every weight after (or instead of) adapter recovery: each objective's schedule,
the label-free logit distillation (``kd``), step bounds and determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from fxprune.errors import FxpruneError
from fxprune.recovery.finetune import FinetuneConfig, finetune
from fxprune.tracing import example_input, trace
from tests.helpers import SMALL_SIZE as SIZE
from tests.helpers import student_with_adapters


def _kl(teacher, student, images) -> float:
    with torch.no_grad():
        return F.kl_div(F.log_softmax(student(images), 1), F.log_softmax(teacher(images), 1),
                        log_target=True, reduction="batchmean").item()


def test_each_objective_gets_its_schedule_unless_given():
    paper = FinetuneConfig("ce-mse")
    assert (paper.optimizer, paper.lr, paper.batch_size, paper.epochs, paper.max_steps) == \
        ("sgd", 1e-4, 256, 100, None)
    kd = FinetuneConfig("kd")
    assert (kd.optimizer, kd.lr, kd.batch_size, kd.max_steps) == ("adam", 2e-5, 32, 300)
    assert FinetuneConfig("kd", lr=1e-3, max_steps=5).lr == 1e-3
    with pytest.raises(ValueError, match="optimizer"):
        FinetuneConfig("mse", optimizer="lbfgs")
    with pytest.raises(ValueError, match="invalid finetune"):
        FinetuneConfig("kd", max_steps=0)


def test_kd_brings_the_students_logits_to_the_teachers_without_labels(teacher, images):
    student = student_with_adapters(teacher, "cvpr")
    held_out = example_input(SIZE, batch=64, seed=11)
    before = _kl(teacher, student, images), _kl(teacher, student, held_out)
    history = finetune(teacher, student, images, None,
                       FinetuneConfig("kd", lr=1e-3, max_steps=60), progress=False)
    after = _kl(teacher, student, images), _kl(teacher, student, held_out)
    assert len(history) == 60  # 24 images in minibatches of 32: one step per epoch
    assert after[0] < 0.5 * before[0], (before, after)
    assert after[1] < before[1], (before, after)  # not only the tiny set's own images


def test_kd_is_deterministic_for_a_seed_and_bounded_in_steps(teacher, images):
    steps = []
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        runs = []
        for seed in (0, 0, 1):
            student = student_with_adapters(teacher, "cvpr")
            finetune(teacher, student, images, None,
                     FinetuneConfig("kd", lr=1e-3, max_steps=3, batch_size=8, seed=seed),
                     progress=False)
            runs.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    finally:
        handle.remove()
    assert len(steps) == 9  # 3 steps each, though an epoch of 24 images in 8s has 3 as well
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_kd_stops_at_max_steps_inside_an_epoch(teacher, images):
    student = student_with_adapters(teacher, "cvpr")
    history = finetune(teacher, student, images, None,
                       FinetuneConfig("kd", max_steps=2, batch_size=4), progress=False)
    assert len(history) == 1  # the first epoch (6 minibatches) stops after its second


def test_kd_keeps_batchnorm_statistics(teacher, images):
    student = student_with_adapters(teacher, "cvpr")
    buffers = {name: value.clone() for name, value in student.named_buffers()}
    finetune(teacher, student, images, None, FinetuneConfig("kd", max_steps=3),
             progress=False)
    assert all(torch.equal(buffers[name], value) for name, value in student.named_buffers())


def test_finetune_without_labels_names_the_label_free_objectives(teacher, images):
    student = trace(teacher, SIZE)
    with pytest.raises(FxpruneError, match="'kd', 'mse' or 'mir'"):
        finetune(teacher, student, images, None, FinetuneConfig("ce-mse"), progress=False)
