"""The ``fxprune.compress`` Python API on a small network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.adapters import Adapter
from fxprune.errors import FxpruneError
from fxprune.models import cifar_resnet
from fxprune.recovery.finetune import FinetuneConfig
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig
from fxprune.tracing import example_input
from tests.helpers import count_modules

SIZE = (3, 16, 16)
QUICK = RecoveryConfig(fit=FitConfig(lr=3e-3, max_steps=20, patience=20))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cifar_resnet(20).eval()


@pytest.fixture(scope="module")
def images():
    return example_input(SIZE, batch=16, seed=2)


def test_compress_returns_a_plain_folded_network(model, images):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fxprune.compress(model, images, SIZE, drop="rule", recovery=QUICK, progress=False)
    assert result.report["drop"] == ["1.2", "2.2", "3.2"]
    assert result.report["adapters"] > 0
    assert count_modules(result.model, (Adapter, nn.BatchNorm2d)) == 0
    assert result.report["compressed"]["macs"] == result.report["pruned"]["macs"]
    assert result.report["compressed"]["macs"] < result.report["original"]["macs"]
    assert result.model(images).shape == (16, 10)
    for key, value in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, before[key])


@pytest.mark.slow
def test_recovery_moves_the_output_towards_the_teacher(model, images):
    recovered = fxprune.compress(model, images, SIZE, drop="1.2,2.2", recovery=QUICK,
                                 progress=False)
    with torch.no_grad():
        teacher = recovered.teacher(images)
        gap_pruned = (recovered.pruned(images) - teacher).pow(2).mean()
        gap_recovered = (recovered.model(images) - teacher).pow(2).mean()
    assert gap_recovered < gap_pruned


def test_baseline_finetune_needs_labels(model, images):
    with pytest.raises(FxpruneError, match="labelled"):
        fxprune.compress(model, images, SIZE, drop="1.2", recover="none", finetune="ce-mse",
                         progress=False)
    labels = torch.arange(16) % 10
    result = fxprune.compress(model, images, SIZE, labels=labels, drop="1.2", recover="none",
                              finetune="ce-mse", finetuning=FinetuneConfig(epochs=2),
                              progress=False)
    assert result.report["adapters"] == 0 and "finetune" in result.report["phases"]


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": "2.1"}, "cannot be dropped"), ({"drop": "7.7"}, "no block '7.7'"),
    ({"drop": "1.2,1.2"}, "repeat"), ({"recover": "magic"}, "unknown recovery"),
    ({"finetune": "magic"}, "unknown finetune")])
def test_bad_options_are_explained(model, images, kwargs, message):
    with pytest.raises(FxpruneError, match=message):
        fxprune.compress(model, images, SIZE, progress=False, **kwargs)


def test_a_network_without_stages_needs_layerwise_recovery():
    """1x1 convs on pooled features (a classifier written as convs) form no stage:
    stage-wise recovery and the mir finetune have no stage output to mimic and say so;
    layer-wise recovery still trains the adapters of its factorized convs."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 16, 1), nn.ReLU(),
                          nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Conv2d(16, 10, 1),
                          nn.Flatten()).eval()
    size = (3, 32, 32)
    images = example_input(size, batch=2, seed=0)
    quick = FitConfig(lr=1e-3, max_steps=2, patience=2)
    for kwargs, remedy in (({"recovery": RecoveryConfig(fit=quick)}, "--schedule layerwise"),
                           ({"recover": "none", "finetune": "mir",
                             "finetuning": FinetuneConfig(epochs=1)}, "--finetune ce-mse or mse")):
        with pytest.raises(FxpruneError, match=f"no stage found.*; use {remedy}"):
            fxprune.compress(model, images, size, drop=None, decouple="lowrank:0.4",
                             progress=False, **kwargs)
    result = fxprune.compress(model, images, size, drop=None, decouple="lowrank:0.4",
                              progress=False, recovery=RecoveryConfig(schedule="layerwise", fit=quick))
    assert result.report["adapters"] == len(result.report["decouple"]["convs"]) > 0
    assert count_modules(result.model, Adapter) == 0
