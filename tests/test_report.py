"""Warnings for a recovery or finetune that made the model worse on the evaluation images."""

from __future__ import annotations

import pytest

from fxprune.render import SETBACK_POINTS, setbacks


def report_with(recover: str, finetune: str, **scores: tuple[float | None, float]) -> dict:
    """A report with (top-1, agreement) per model, as ``fxprune compress`` writes it."""
    report = {"recover": recover, "finetune": finetune, "evaluation": {"images": 500}}
    for key, (top1, agreement) in scores.items():
        report[key] = {"top1": top1, "agreement": agreement}
    return report


def test_a_step_that_lowers_top1_is_named():
    report = report_with("practise", "none", pruned=(76.2, 80.0), compressed=(74.4, 80.2))
    assert setbacks(report) == [
        "recovery lowered top-1 on the 500 evaluation images from 76.20 to 74.40 %: the tiny "
        "set may be too small or unlike them; try a larger one (--images/--shots), or "
        "--recover none"]


@pytest.mark.parametrize("recovered, compressed, failing", [
    ((80.0, 85.0), (81.0, 86.0), []),
    ((75.0, 79.0), (81.0, 86.0), ["recovery"]),
    ((80.0, 85.0), (79.5, 86.0), ["the ce-mse finetune"]),
    ((80.0, 85.0), (79.6, 86.0), []),  # less than SETBACK_POINTS: a few images, noise
    ((75.0, 79.0), (74.0, 78.0), ["recovery", "the ce-mse finetune"])])
def test_recovery_and_finetune_are_judged_separately(recovered, compressed, failing):
    assert SETBACK_POINTS == 0.5
    report = report_with("practise", "ce-mse", pruned=(76.0, 80.0), recovered=recovered,
                         compressed=compressed)
    assert [warning.split(" lowered")[0] for warning in setbacks(report)] == failing


def test_without_labels_agreement_is_judged():
    report = report_with("none", "mse", pruned=(None, 81.0), compressed=(None, 80.5))
    assert setbacks(report) == [
        "the mse finetune lowered agreement with the original on the 500 evaluation images "
        "from 81.00 to 80.50 %: the tiny set may be too small or unlike them; try a larger one "
        "(--images/--shots), or --finetune none"]
    assert setbacks(report_with("none", "mse", pruned=(None, 81.0),
                                compressed=(None, 81.0))) == []


def test_no_training_step_no_warning():
    assert setbacks(report_with("none", "none", pruned=(70.0, 75.0),
                                compressed=(60.0, 65.0))) == []


def test_quantization_is_judged_against_the_fp32_model():
    report = report_with("practise", "none", pruned=(76.0, 80.0), compressed=(80.0, 85.0),
                         quantized=(79.0, 84.0))
    assert setbacks(report) == [
        "int8 quantization lowered top-1 on the 500 evaluation images from 80.00 to 79.00 %: "
        "the tiny set may be too small or unlike them; try a larger one (--images/--shots), "
        "or ship the fp32 model.onnx"]
