"""The library pipeline on a small network: options -> ``fxprune.plan`` -> ``fxprune.execute``
(``fxprune.compress`` is both in one call)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune import Decouple, Drop, Options, Recovery, Schedule
from fxprune.adapters import Adapter
from fxprune.errors import FxpruneError
from fxprune.models import cifar_resnet
from fxprune.passes import DropBlocks, InsertAdapters
from fxprune.recovery.finetune import FinetuneConfig
from fxprune.recovery.fit import FitConfig
from fxprune.tracing import example_input
from tests.helpers import count_modules

SIZE = (3, 16, 16)
QUICK = Recovery(fit=FitConfig(lr=3e-3, max_steps=20, patience=20))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cifar_resnet(20).eval()


@pytest.fixture(scope="module")
def images():
    return example_input(SIZE, batch=16, seed=2)


def test_a_plan_is_a_printable_value_decided_before_any_weight_moves(model, images):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    planned = fxprune.plan(model, Options(), input_size=SIZE)
    again = fxprune.plan(model, Options(), input_size=SIZE)
    assert planned == again and planned is not again
    assert [step.pass_type for step in planned.steps] == [DropBlocks, InsertAdapters]
    assert planned.blocks == ("1.2", "2.2", "3.2")
    assert "1. DropBlocks(block_ids=['1.2', '2.2', '3.2'])" in str(planned)
    assert "recovery: stagewise, cvpr sites, identity start" in str(planned)
    with pytest.raises(dataclasses.FrozenInstanceError):
        planned.blocks = ()
    plain = planned.without_adapters()
    assert [step.pass_type for step in plain.steps] == [DropBlocks] and plain.recovery is None
    for key, value in model.state_dict().items():  # planning leaves the model untouched
        assert torch.equal(value, before[key])


def test_rewrite_gives_a_fresh_copy_of_what_the_passes_make(model, images):
    """The planner's own rewriting serves ``rewrite()`` when no step reads images: a new
    copy each time, the same graph and weights as running the plan's passes afresh."""
    planned = fxprune.plan(model, Options(drop=Drop.blocks("1.2", "2.2")), input_size=SIZE)
    first, second = planned.rewrite(), planned.rewrite()
    fresh = planned.passes()(fxprune.trace(model, SIZE)).graph_module
    assert first is not second and first.code == second.code == fresh.code
    with torch.no_grad():
        next(first.parameters()).add_(1.0)  # a copy: changing it changes no other
        torch.testing.assert_close(second(images), fresh(images), rtol=0, atol=0)
    assert planned.without_adapters().rewritten is None


def test_views_reach_the_recovery_and_the_plan(model):
    planned = fxprune.plan(model, Options(recovery=Recovery(views=2, mix=True)),
                           input_size=SIZE)
    config = planned.recovery.config(planned.seed)
    assert (config.views, config.mix) == (2, True)
    assert "identity start, 2 mixed views" in str(planned)
    assert planned.as_json()["recovery"]["views"] == 2


def test_a_holdout_reaches_the_recovery_and_the_plan(model):
    planned = fxprune.plan(model, Options(recovery=Recovery(holdout=0.2)), input_size=SIZE)
    assert planned.recovery.config(planned.seed, 50).holdout == 0.2
    assert "20% of the images held out to judge each fit" in str(planned)
    assert planned.as_json()["recovery"]["holdout"] == 0.2
    assert "held out" not in str(fxprune.plan(model, Options(), input_size=SIZE))


def test_by_default_views_bring_the_tiny_set_to_min_pairs(model):
    """No ``views``: a set smaller than one minibatch (32) gets as many views as make 256
    pairs, a larger set none; an explicit count, 0 included, is kept whatever the size."""
    planned = fxprune.plan(model, Options(), input_size=SIZE)
    assert planned.as_json()["recovery"]["views"] is None
    assert "identity start, augmented views up to 256 pairs for a small set" in str(planned)
    assert [planned.recovery.config(0, images).views for images in (1, 10, 30, 31, 32, 50)] \
        == [255, 25, 8, 8, 0, 0]
    assert Recovery(views=0).config(0, 10).views == 0
    assert Recovery(views=3, mix=True).config(0, 900).views == 3


def test_the_pruned_reference_is_the_plan_without_adapters(model, images):
    planned = fxprune.plan(model, Options(drop=Drop.blocks("1.2"), recovery=QUICK),
                           input_size=SIZE)
    result = fxprune.execute(planned, images, progress=False)
    plain = fxprune.execute(planned.without_adapters(), images, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(result.pruned(images), plain.model(images),
                                   rtol=1e-5, atol=1e-5)


def test_compress_returns_a_plain_folded_network(model, images):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fxprune.compress(model, images, SIZE, Options(recovery=QUICK), progress=False)
    report = result.report
    assert report.drop == ["1.2", "2.2", "3.2"] and report.adapters > 0
    assert report.views == report.as_json()["views"] == 15  # 16 images: views to 256 pairs
    assert count_modules(result.model, (Adapter, nn.BatchNorm2d)) == 0
    assert report.models["compressed"].macs == report.models["pruned"].macs
    assert report.models["compressed"].macs < report.models["original"].macs
    assert report.as_json()["plan"] == result.report.plan
    assert result.model(images).shape == (16, 10)
    for key, value in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, before[key])


@pytest.mark.slow
def test_recovery_moves_the_output_towards_the_teacher(model, images):
    recovered = fxprune.compress(model, images, SIZE, Options(drop=Drop.blocks("1.2", "2.2"),
                                                              recovery=QUICK), progress=False)
    with torch.no_grad():
        teacher = recovered.teacher(images)
        gap_pruned = (recovered.pruned(images) - teacher).pow(2).mean()
        gap_recovered = (recovered.model(images) - teacher).pow(2).mean()
    assert gap_recovered < gap_pruned


def test_baseline_finetune_needs_labels(model, images):
    baseline = Options(drop=Drop.blocks("1.2"), recovery=None,
                       finetune=FinetuneConfig("ce-mse", epochs=2))
    with pytest.raises(FxpruneError, match="labelled"):
        fxprune.compress(model, images, SIZE, baseline, progress=False)
    labels = torch.arange(16) % 10
    result = fxprune.compress(model, images, SIZE, baseline, labels=labels, progress=False)
    assert result.report.adapters == 0 and "finetune" in result.report.phases


@pytest.mark.parametrize("options, message", [
    (lambda: Options(drop=Drop.blocks("2.1")), "cannot be dropped"),
    (lambda: Options(drop=Drop.blocks("7.7")), "no block '7.7'"),
    (lambda: Options(drop=Drop.blocks("1.2", "1.2")), "repeat"),
    (lambda: Options(drop=None), "nothing to compress"),
    (lambda: Options(drop=Drop.auto(1.5)), "budget must be a ratio in"),
    (lambda: Options(recovery=Recovery(steps=0)), "needs --init lstsq"),
    (lambda: Options(recovery=Recovery(views=-1)), "--views must be >= 0"),
    (lambda: Options(recovery=Recovery(views=0, mix=True)), "cannot go with --views 0"),
    (lambda: Options(recovery=Recovery(holdout=1.0)), "--holdout is a fraction"),
    (lambda: Options(drop=None, filters=fxprune.FilterPruning({"conv1": True})), "kept count"),
    (lambda: Options(drop=None, decouple=Decouple.lowrank(0.0)), "energy")])
def test_bad_options_are_explained(model, images, options, message):
    with pytest.raises(FxpruneError, match=message):
        fxprune.compress(model, images, SIZE, options(), progress=False)


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
    decouple = Options(drop=None, decouple=Decouple.lowrank(0.4))
    for options, remedy in (
            (dataclasses.replace(decouple, recovery=Recovery(fit=quick)), "--schedule layerwise"),
            (dataclasses.replace(decouple, recovery=None,
                                 finetune=FinetuneConfig("mir", epochs=1)),
             "--finetune ce-mse or mse")):
        with pytest.raises(FxpruneError, match=f"no stage found.*; use {remedy}"):
            fxprune.compress(model, images, size, options, progress=False)
    result = fxprune.compress(model, images, size, dataclasses.replace(
        decouple, recovery=Recovery(schedule=Schedule.LAYERWISE, fit=quick)), progress=False)
    assert result.report.adapters == len(result.report.scheme.decouple["convs"]) > 0
    assert count_modules(result.model, Adapter) == 0


def test_the_plan_declares_its_pass_order():
    """A plan whose steps break the declared order (the drop's adapters before a pruned
    stream's would hide the stream) is refused when its passes are built."""
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    planned = fxprune.plan(resnet, Options(drop=Drop.blocks("1.2"),
                                           streams=fxprune.StreamPruning(0.5)),
                           input_size=(3, 32, 32))
    assert [step.pass_type.__name__ for step in planned.steps] == [
        "DropBlocks", "PruneCoupledMaps", "InsertAdapters"]
    drop, streams, adapters = planned.steps
    swapped = dataclasses.replace(planned, steps=(drop, adapters, streams))
    with pytest.raises(ValueError, match="pass order: PruneCoupledMaps must run before "
                                         "InsertAdapters"):
        swapped.passes()


def test_run_scores_every_model(model, images):
    """``fxprune.run`` with evaluation images: every model scored against the labels and the
    original's predictions."""
    planned = fxprune.plan(model, Options(drop=Drop.blocks("1.2"), recovery=QUICK),
                           input_size=SIZE)
    labels = torch.arange(16) % 10
    result = fxprune.run(planned, images, evaluation=fxprune.Evaluation(images, labels),
                         settings=fxprune.RunSettings(progress=False))
    rows = result.report.models
    assert rows["original"].agreement == 100.0
    with torch.no_grad():
        expected = (result.model(images).argmax(1) == labels).float().mean().item() * 100
    assert rows["compressed"].top1 == pytest.approx(expected, abs=1e-9)
    assert all(row.evaluated for row in rows.values())
    json_rows = result.report.as_json()
    assert set(json_rows["compressed"]) == {"macs", "params", "top1", "agreement"}
