"""Adapter recovery on small networks: segments, the fitting loop and the three schedules."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fxprune.adapters import Adapter
from fxprune.analysis.structure import find_structure
from fxprune.errors import PreconditionError
from fxprune.recovery.fit import FitConfig, channels_last, fit
from fxprune.recovery.practise import RecoveryConfig, adapter_nodes, recover
from fxprune.recovery.targets import teacher_stages
from fxprune.segments import run_batched, segment
from fxprune.tracing import trace
from tests.helpers import SMALL_SIZE as SIZE
from tests.helpers import student_with_adapters
FAST = FitConfig(lr=3e-3, max_steps=60, patience=60)


def test_segment_computes_the_same_values(teacher, images):
    names = [stage.blocks[-1].exit for stage in find_structure(teacher).stages]
    full = run_batched(segment(teacher, ["x"], names), [images], 8)
    middle = run_batched(segment(teacher, [names[0]], [names[1]]), [full[0]], 8)[0]
    torch.testing.assert_close(middle, full[1], rtol=0, atol=0)
    torch.testing.assert_close(run_batched(segment(teacher, ["x"], ["linear"]), [images], 8)[0],
                               teacher(images), rtol=0, atol=0)


def test_segment_refuses_inputs_that_do_not_cut(teacher):
    structure = find_structure(teacher)
    block = structure.block("1.2")
    with pytest.raises(PreconditionError, match="depend on graph input 'x'"):
        segment(teacher, [block.convs[1]], [block.exit])  # the shortcut bypasses conv2


@pytest.mark.slow
def test_fit_lowers_the_loss_and_keeps_the_best(images):
    torch.manual_seed(0)
    adapter = Adapter(3, bias=True)
    target = images * 0.5 + 0.1
    history = fit(adapter, list(adapter.parameters()), [images], [target],
                  FitConfig(lr=0.05, epochs=200, patience=200, batch_size=8))
    final = torch.nn.functional.mse_loss(adapter(images), target).item()
    assert history[0] > 10 * min(history)
    assert final == pytest.approx(min(history), rel=0.3)
    assert all(p.requires_grad for p in adapter.parameters())  # the caller's flags come back


@pytest.mark.slow
@pytest.mark.parametrize("schedule, placement", [
    ("joint", "cvpr"), ("stagewise", "cvpr"), ("joint", "paper"), ("layerwise", "paper")])
def test_recovery_reduces_feature_error(teacher, images, schedule, placement):
    student = student_with_adapters(teacher, placement)
    frozen = {name: value.clone() for name, value in student.state_dict().items()
              if "adapter" not in name}
    reports = recover(teacher, student, images, RecoveryConfig(schedule=schedule, fit=FAST),
                      progress=False)
    assert reports
    for report in reports:
        assert report.loss_after < 0.9 * report.loss_before, report
    trained = sum(len(report.adapters) for report in reports)
    assert trained == len(adapter_nodes(student))
    for name, value in student.state_dict().items():  # nothing but the adapters moved
        if name in frozen:
            torch.testing.assert_close(value, frozen[name], rtol=0, atol=0)


@pytest.mark.slow
def test_recovery_is_deterministic(teacher, images):
    weights = []
    for _ in range(2):
        student = student_with_adapters(teacher, "cvpr")
        recover(teacher, student, images, RecoveryConfig(schedule="joint", fit=FAST),
                progress=False)
        weights.append({k: v for k, v in student.state_dict().items() if "adapter" in k})
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key])


def test_layerwise_refuses_output_side_adapters(teacher, images):
    student = student_with_adapters(teacher, "cvpr", ids=("1.3",))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(PreconditionError, match="placed before a conv"):
        recover(teacher, student, images, RecoveryConfig(schedule="layerwise", fit=FAST),
                progress=False)
    for key, value in student.state_dict().items():  # refused before training anything
        assert torch.equal(value, before[key])


def test_no_adapters_is_a_noop(teacher, images):
    student = trace(teacher, SIZE)
    assert recover(teacher, student, images, RecoveryConfig(fit=FAST), progress=False) == []


def test_recovery_leaves_ordinary_contiguous_tensors(teacher, images):
    """Training runs channels-last; the student and teacher come back contiguous."""
    student = student_with_adapters(teacher, "cvpr")
    recover(teacher, student, images, RecoveryConfig(fit=FitConfig(lr=1e-3, max_steps=2,
                                                                   patience=2)), progress=False)
    for module in (student, teacher):
        assert all(tensor.is_contiguous() for tensor in [*module.parameters(),
                                                         *module.buffers()])


@pytest.mark.parametrize("schedule", ["stagewise", "joint"])
def test_given_teacher_stages_train_the_same_adapters(teacher, images, schedule):
    """Features computed once by the caller (``teacher_stages``) stand for the ones recover
    would compute: the adapters train to the same values; with views or a holdout they are
    refused."""
    config = RecoveryConfig(schedule=schedule, fit=FitConfig(lr=3e-3, max_steps=6, patience=6))
    computed, given = (student_with_adapters(teacher, "cvpr") for _ in range(2))
    recover(teacher, computed, images, config, progress=False)
    with channels_last(teacher):
        stages = teacher_stages(teacher, images.contiguous(memory_format=torch.channels_last))
    assert stages.outputs == tuple(dict.fromkeys(
        stage.output for stage in find_structure(teacher).stages))
    recover(teacher, given, images, config, progress=False, stages=stages)
    trained = [name for name in computed.state_dict() if "adapter" in name]
    assert trained
    for name in trained:
        torch.testing.assert_close(given.state_dict()[name], computed.state_dict()[name],
                                   rtol=0, atol=0)  # the same features, the same arithmetic
    assert not torch.equal(computed.state_dict()[trained[0]],
                           student_with_adapters(teacher, "cvpr").state_dict()[trained[0]])
    for others in (dict(views=1), dict(holdout=0.25)):  # the fits would train on other images
        assert not replace(config, **others).trains_on_given_images
        with pytest.raises(ValueError, match="views or a holdout"):
            recover(teacher, given, images, replace(config, **others), progress=False,
                    stages=stages)
