"""A holdout of the tiny set that judges each adapter fit instead of the training loss:
``fit(validation=...)`` and ``RecoveryConfig(holdout=...)``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from fxprune import Init, Recovery, Schedule
from fxprune.errors import FxpruneError
from fxprune.recovery import practise
from fxprune.recovery.fit import FitConfig, fit
from fxprune.recovery.practise import RecoveryConfig, recover
from tests.helpers import student_with_adapters

QUICK = FitConfig(lr=1e-2, max_steps=40, patience=40, batch_size=8)


def _scale(inputs: torch.Tensor) -> nn.Conv2d:
    torch.manual_seed(0)
    layer = nn.Conv2d(inputs.shape[1], inputs.shape[1], 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(inputs.shape[1]).view_as(layer.weight))
    return layer


def test_a_fit_the_holdout_disagrees_with_ends_where_it_began():
    """Training pairs ask for 2x, held-out pairs for 1x (the identity it starts from): the
    training loss falls all along, yet the holdout keeps the start."""
    inputs = torch.randn(32, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    layer = _scale(inputs)
    start = layer.weight.detach().clone()
    history = fit(layer, [layer.weight], [inputs], [2 * inputs], QUICK, progress=False,
                  validation=([inputs[:8]], [inputs[:8]]))
    assert history[-1] < 0.5 * history[0]  # it trained
    assert torch.equal(layer.weight, start)


def test_a_fit_the_holdout_agrees_with_moves_and_keeps_the_holdouts_best():
    inputs = torch.randn(40, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    layer = _scale(inputs)
    train, held = inputs[:32], inputs[32:]
    fit(layer, [layer.weight], [train], [2 * train], replace(QUICK, lr=5e-2), progress=False,
        validation=([held], [2 * held]))
    with torch.no_grad():
        error = nn.functional.mse_loss(layer(held), 2 * held).item()
        start = nn.functional.mse_loss(held, 2 * held).item()
    assert error < 0.2 * start


def test_the_state_after_the_last_epoch_is_kept_when_the_holdout_likes_it_best():
    """Without a holdout a fit ends at the start of its best epoch; with one that agrees all
    along, at its very end, nearer the target."""
    inputs = torch.randn(40, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    train, held = inputs[:32], inputs[32:]
    errors = []
    for validation in (None, ([held], [2 * held])):
        layer = _scale(inputs)
        fit(layer, [layer.weight], [train], [2 * train], replace(QUICK, max_steps=8),
            progress=False, validation=validation)
        with torch.no_grad():
            errors.append(nn.functional.mse_loss(layer(held), 2 * held).item())
    assert errors[1] < errors[0]


def test_validation_refuses_batchnorm_in_train_mode():
    module = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)).train()
    inputs = torch.randn(8, 4, 3, 3)
    with pytest.raises(ValueError, match="eval mode"):
        fit(module, list(module[0].parameters()), [inputs], [inputs], QUICK, progress=False,
            validation=([inputs], [inputs]))


def test_holdout_rows_and_refusals():
    rows = RecoveryConfig(holdout=0.2, fit=FitConfig(seed=1)).held_out(100)
    assert len(rows) == 20 and torch.equal(rows, rows.sort().values)
    assert not torch.equal(rows, torch.arange(80, 100))  # a draw, not the last rows
    assert torch.equal(rows, RecoveryConfig(holdout=0.2, fit=FitConfig(seed=1)).held_out(100))
    assert len(RecoveryConfig(holdout=0.2).held_out(2)) == 1  # at least one
    assert len(RecoveryConfig(holdout=0.2).held_out(1)) == 0  # never all
    assert len(RecoveryConfig().held_out(100)) == 0
    with pytest.raises(ValueError, match="holdout must be"):
        RecoveryConfig(holdout=1.0)
    with pytest.raises(ValueError, match="bn='train'"):
        RecoveryConfig(holdout=0.2, bn="train")
    with pytest.raises(ValueError, match="closed form"):
        RecoveryConfig(holdout=0.2, init="lstsq", fit=None)
    for closed_form in (dict(steps=0, init=Init.LSTSQ), dict(schedule=Schedule.LAYERWISE)):
        with pytest.raises(FxpruneError, match="--holdout judges gradient fits"):
            Recovery(holdout=0.2, **closed_form)
    assert Recovery(holdout=0.2, schedule=Schedule.LAYERWISE, steps=50).config(0, 10).holdout


def test_held_out_images_never_reach_training(teacher, images):
    """Held-out images made of NaN: a fit that trained on one of them, or on a view of one,
    would end with NaN adapters."""
    config = RecoveryConfig(fit=FitConfig(lr=3e-3, max_steps=20), views=2, holdout=0.25)
    poisoned = images.clone()
    poisoned[config.held_out(len(images))] = float("nan")
    student = student_with_adapters(teacher, "cvpr")
    before = [p.detach().clone() for p in student.parameters()]
    recover(teacher, student, poisoned, config, progress=False)
    after = list(student.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # it trained


@pytest.mark.parametrize("schedule", ["stagewise", "joint", "layerwise"])
def test_recovery_trains_on_the_rest_and_judges_on_the_holdout(teacher, images, schedule,
                                                               monkeypatch):
    """24 images, a quarter held out, 2 views of the other 18: every fit trains on 54 pairs
    and is judged on the 6 held-out images, never on their views."""
    seen = []

    def recording_fit(module, parameters, inputs, targets, config, description="fit",
                      progress=True, validation=None):
        seen.append((len(inputs[0]), len(validation[0][0]), len(validation[1][0])))
        return fit(module, parameters, inputs, targets, config, description, progress,
                   validation)

    monkeypatch.setattr(practise, "fit", recording_fit)
    student = student_with_adapters(teacher, "paper" if schedule == "layerwise" else "cvpr")
    config = RecoveryConfig(schedule=schedule, fit=FitConfig(lr=1e-3, max_steps=4),
                            views=2, holdout=0.25)
    recover(teacher, student, images, config, progress=False)
    assert seen and all(counts == (54, 6, 6) for counts in seen), seen


def test_recovery_with_a_holdout_is_deterministic(teacher, images):
    config = RecoveryConfig(fit=FitConfig(lr=3e-3, max_steps=20, seed=3), holdout=0.25)
    weights = []
    for _ in range(2):
        student = student_with_adapters(teacher, "cvpr")
        recover(teacher, student, images, config, progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(*weights)
