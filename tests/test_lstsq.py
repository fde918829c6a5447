"""Closed-form adapters: exact recovery of a known adapter, optimality for targets outside the
model family, and the ``init="lstsq"`` recovery path on a small ResNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fxprune.adapters import Adapter
from fxprune.passes import folding
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.lstsq import solve_after_conv, solve_before_conv
from fxprune.recovery.practise import RecoveryConfig, adapter_nodes, recover
from tests.helpers import student_with_adapters


def _random_adapter(channels: int, bias: bool, seed: int) -> Adapter:
    torch.manual_seed(seed)
    adapter = Adapter(channels, bias=bias).double()
    with torch.no_grad():
        adapter.weight.add_(0.4 * torch.randn_like(adapter.weight))
        if bias:
            adapter.bias.normal_()
    return adapter


CONVS = [dict(kernel_size=3, padding=1, stride=1), dict(kernel_size=3, padding=1, stride=2),
         dict(kernel_size=3, padding=0, stride=1), dict(kernel_size=1, padding=0, stride=1),
         dict(kernel_size=3, padding=2, dilation=2, stride=1)]


@pytest.mark.parametrize("geometry", CONVS)
@pytest.mark.parametrize("bias", [False, True])
def test_before_conv_recovers_a_known_adapter(geometry, bias):
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 7, bias=True, **geometry).double()
    truth = _random_adapter(5, bias, seed=2)
    features = torch.randn(6, 5, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        target = conv(truth(features))
    solved = Adapter(5, bias=bias).double()
    solve_before_conv(solved, conv, features, target, ridge=0.0)
    torch.testing.assert_close(solved.weight, truth.weight, rtol=0, atol=1e-8)
    if bias:  # zero padding acts after the adapter's bias: the bias must still be exact
        torch.testing.assert_close(solved.bias, truth.bias, rtol=0, atol=1e-8)


@pytest.mark.parametrize("bias", [False, True])
def test_after_conv_recovers_a_known_adapter(bias):
    truth = _random_adapter(6, bias, seed=3)
    features = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        target = truth(features)
    solved = Adapter(6, bias=bias).double()
    solve_after_conv(solved, features, target, ridge=0.0)
    torch.testing.assert_close(solved.weight, truth.weight, rtol=0, atol=1e-10)
    if bias:
        torch.testing.assert_close(solved.bias, truth.bias, rtol=0, atol=1e-10)


def test_before_conv_is_the_least_squares_optimum():
    """For a target no adapter reaches, the solution is a stationary point of the MSE and no
    random perturbation lowers it."""
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=False).double()
    features = torch.randn(5, 4, 8, 8, dtype=torch.float64)
    target = torch.randn(5, 6, 4, 4, dtype=torch.float64)
    adapter = Adapter(4, bias=False).double()
    solve_before_conv(adapter, conv, features, target, ridge=0.0)
    loss = F.mse_loss(conv(adapter(features)), target)
    (gradient,) = torch.autograd.grad(loss, adapter.weight)
    assert gradient.abs().max() < 1e-10
    with torch.no_grad():
        optimum = adapter.weight.clone()
        for _ in range(5):
            adapter.weight.copy_(optimum + 1e-2 * torch.randn_like(optimum))
            assert F.mse_loss(conv(adapter(features)), target) > loss


def test_ridge_keeps_the_current_value_where_data_say_nothing():
    """With zero features the data carry no information: the adapter stays where it was."""
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    adapter = Adapter(3, bias=False).double()
    with torch.no_grad():
        adapter.weight.normal_()
    start = adapter.weight.detach().clone()
    features = torch.zeros(2, 3, 6, 6, dtype=torch.float64)
    solve_before_conv(adapter, conv, features, conv(features).detach())
    torch.testing.assert_close(adapter.weight, start)


def test_rectangular_adapter_before_conv():
    """An N -> C adapter (a pruned map growing back to the consumer's channels)."""
    torch.manual_seed(6)
    conv = nn.Conv2d(6, 5, 3, padding=1).double()
    truth = Adapter(4, bias=False, out_channels=6).double()
    with torch.no_grad():
        truth.weight.normal_()
    features = torch.randn(5, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        target = conv(truth(features))
    solved = Adapter(4, bias=False, out_channels=6).double()
    solve_before_conv(solved, conv, features, target, ridge=0.0)
    torch.testing.assert_close(solved.weight, truth.weight, rtol=0, atol=1e-8)


def test_grouped_conv_is_refused():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    with pytest.raises(ValueError, match="ungrouped"):
        solve_before_conv(Adapter(4, bias=False), conv, torch.zeros(1, 4, 4, 4),
                          torch.zeros(1, 4, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["paper", "cvpr"])
def test_closed_form_recovery_lowers_every_layer_loss(teacher, images, placement):
    student = student_with_adapters(teacher, placement)
    reports = recover(teacher, student, images, RecoveryConfig(init="lstsq", fit=None),
                      progress=False)
    assert [report.adapters[0] for report in reports] == \
        [node.name for node in adapter_nodes(student)]
    sides = {report.target for report in reports}
    assert len(sides) == len(reports)
    for report in reports:  # adapters before the damage see the teacher's features: loss 0
        assert report.loss_after <= report.loss_before + 1e-9, report
        assert report.loss_after < report.loss_before or report.loss_before < 1e-9, report
        assert report.epochs == 0
    assert any(report.loss_after < 0.9 * report.loss_before for report in reports)
    folded = folding()(student).graph_module
    torch.testing.assert_close(folded(images), student(images), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_closed_form_then_gradient_steps_starts_from_the_solution(teacher, images):
    solved = student_with_adapters(teacher, "cvpr")
    recover(teacher, solved, images, RecoveryConfig(init="lstsq", fit=None), progress=False)
    both = student_with_adapters(teacher, "cvpr")
    config = RecoveryConfig(init="lstsq", fit=FitConfig(lr=1e-3, max_steps=20, patience=20))
    reports = recover(teacher, both, images, config, progress=False)
    closed_form = len(adapter_nodes(both))
    assert all(report.epochs == 0 for report in reports[:closed_form])
    assert all(report.epochs > 0 for report in reports[closed_form:])
    # keep-best from the start: the stage losses never end above where the solve left them
    for report in reports[closed_form:]:
        assert report.loss_after <= report.loss_before * (1 + 1e-6)


def test_fit_none_needs_the_closed_form():
    with pytest.raises(ValueError, match="init='lstsq'"):
        RecoveryConfig(fit=None)
    with pytest.raises(ValueError, match="unknown adapter init"):
        RecoveryConfig(init="zeros")


@pytest.mark.slow
def test_adapters_too_wide_for_the_gram_train_by_gradient(teacher, images, monkeypatch):
    from fxprune.recovery import practise
    monkeypatch.setattr(practise, "MAX_GRAM_SIDE", 16 * 16)  # stage 1 only (16 channels)
    student = student_with_adapters(teacher, "paper")
    reports = recover(teacher, student, images, RecoveryConfig(init="lstsq", fit=None),
                      progress=False)
    solved = [report for report in reports if report.epochs == 0]
    trained = [report for report in reports if report.epochs > 0]
    assert solved and trained and len(solved) + len(trained) == len(adapter_nodes(student))
