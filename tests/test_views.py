"""Augmented views of the tiny set as extra recovery pairs (``fxprune.recovery.views``)."""

from __future__ import annotations

import pytest
import torch

from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig
from fxprune.recovery.views import blend, with_views


@pytest.fixture
def images():
    return torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_views_follow_the_unchanged_originals(images):
    views = with_views(images, 2, mix=False, seed=0)
    assert views.shape == (18, 3, 16, 16)
    assert torch.equal(views[:6], images)
    assert not torch.equal(views[6:12], images) and not torch.equal(views[6:12], views[12:])
    assert torch.equal(views, with_views(images, 2, mix=False, seed=0))  # seeded
    assert not torch.equal(views, with_views(images, 2, mix=False, seed=1))
    assert with_views(images, 0, mix=True, seed=0) is images


def test_a_crop_moves_pixels_without_changing_them(images):
    """Without mixing, every view pixel is an original pixel of the same image (flipped or
    shifted) or the zero padding."""
    view = with_views(images, 1, mix=False, seed=3)[6:]
    for original, augmented in zip(images, view):
        values = set(original.flatten().tolist()) | {0.0}
        assert set(augmented.flatten().tolist()) <= values


def test_mixed_views_blend_two_different_images(images):
    plain = with_views(images, 1, mix=False, seed=3)[6:]
    mixed = with_views(images, 1, mix=True, seed=3)[6:]
    assert not torch.equal(plain, mixed)
    # a blend weighted at least 1/2 towards its own view stays nearer to it than to others
    distances = torch.cdist(mixed.flatten(1), plain.flatten(1))
    assert torch.equal(distances.argmin(dim=1), torch.arange(6))


def test_bad_view_counts_are_refused(images):
    with pytest.raises(ValueError, match="views must be at least 0"):
        with_views(images, -1, mix=False, seed=0)
    with pytest.raises(ValueError, match="views must be at least 0"):
        RecoveryConfig(fit=FitConfig(), views=-2)


def test_recovery_fits_the_views_too(small_resnet, images):
    """With views the adapters fit more pairs: a different fit that still moves the student's
    output on the original images towards the teacher's."""
    from fxprune import Drop, Options, plan
    from fxprune.recovery.practise import recover

    planned = plan(small_resnet, Options(drop=Drop.blocks("1.2")), input_size=(3, 16, 16))
    fit = FitConfig(lr=3e-3, max_steps=10, patience=10)
    with torch.no_grad():
        target = small_resnet(images)
        start = torch.nn.functional.mse_loss(planned.rewrite()(images), target)
    outputs = {}
    for views in (0, 2):
        student = planned.rewrite()
        recover(small_resnet, student, images, RecoveryConfig(fit=fit, views=views),
                progress=False)
        with torch.no_grad():
            outputs[views] = student(images)
        assert torch.nn.functional.mse_loss(outputs[views], target) < start
    assert not torch.allclose(outputs[0], outputs[2])


def test_blend_keeps_each_image_the_larger_part_of_a_blend_with_another():
    images = torch.arange(4, dtype=torch.float64).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    blended = blend(images, torch.Generator().manual_seed(0))
    for own, value in zip(range(4), blended[:, 0, 0, 0].tolist()):
        partners = [other for other in range(4) if other != own]
        weights = [(value - other) / (own - other) for other in partners]
        assert any(0.5 <= weight <= 1.0 + 1e-12 for weight in weights), (own, value)
        assert value != own  # always blended, never with itself
    single = images[:1]
    assert blend(single, torch.Generator().manual_seed(0)) is single
