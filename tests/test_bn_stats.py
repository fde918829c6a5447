"""Re-estimating BN statistics after the damage: what each mode changes, and that the default
recovery applies it."""

from __future__ import annotations

import copy

import pytest
import torch

from fxprune.recovery.bn_stats import batchnorms, reestimate_batchnorm
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.segments import run_batched, segment
from tests.helpers import student_with_adapters

DROPPED = ("2.2",)
BEFORE_DROP, AFTER_DROP = "layer1.2.bn2", "layer3.0.bn1"


def _statistics(module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (bn.running_mean.clone(), bn.running_var.clone())
            for name, bn in batchnorms(module).items()}


def test_paired_without_damage_changes_nothing(teacher, images):
    student = copy.deepcopy(teacher)
    reestimate_batchnorm(teacher, student, images, "paired")
    for name, (mean, variance) in _statistics(student).items():
        torch.testing.assert_close(mean, teacher.get_submodule(name).running_mean,
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(variance, teacher.get_submodule(name).running_var,
                                   rtol=1e-6, atol=0)


def test_paired_moves_only_what_the_drop_changed(teacher, images):
    student = student_with_adapters(teacher, "cvpr", ids=DROPPED)
    reestimate_batchnorm(teacher, student, images, "paired")
    before, after = student.get_submodule(BEFORE_DROP), student.get_submodule(AFTER_DROP)
    original = teacher.get_submodule(BEFORE_DROP)
    torch.testing.assert_close(before.running_mean, original.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(before.running_var, original.running_var, rtol=1e-6, atol=0)
    moved = after.running_mean - teacher.get_submodule(AFTER_DROP).running_mean
    assert moved.abs().max() > 1e-3


def test_tiny_is_the_tiny_sets_statistics(teacher, images):
    student = copy.deepcopy(teacher)
    reestimate_batchnorm(teacher, student, images, "tiny", batch_size=len(images))
    features = run_batched(segment(teacher, ["x"], ["conv1"]), [images], len(images))[0]
    bn = student.get_submodule("bn1")
    torch.testing.assert_close(bn.running_mean, features.mean((0, 2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(bn.running_var, features.transpose(0, 1).flatten(1).var(1),
                               rtol=1e-4, atol=1e-6)


def test_paired_brings_the_damaged_output_closer(teacher, images):
    student = student_with_adapters(teacher, "cvpr", ids=DROPPED)
    target = teacher(images)
    error_before = torch.nn.functional.mse_loss(student(images), target).item()
    reestimate_batchnorm(teacher, student, images, "paired")
    error_after = torch.nn.functional.mse_loss(student(images), target).item()
    assert error_after < 0.9 * error_before


def test_recovery_reestimates_before_training(teacher, images):
    student = student_with_adapters(teacher, "cvpr", ids=DROPPED)
    expected = copy.deepcopy(student)
    reestimate_batchnorm(teacher, expected, images, "paired")
    config = RecoveryConfig(fit=FitConfig(lr=1e-3, max_steps=1, patience=1), bn_stats="paired")
    recover(teacher, student, images, config, progress=False)
    for name, (mean, variance) in _statistics(student).items():
        torch.testing.assert_close(mean, expected.get_submodule(name).running_mean,
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(variance, expected.get_submodule(name).running_var,
                                   rtol=1e-6, atol=0)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="bn_stats"):
        RecoveryConfig(bn_stats="fresh")
