"""timm's CNN families through the canonical graph: blocks per stage as each architecture's
definition lists them, exact folding of the paper-rule drop, the ``timm:`` spec with its
preprocessing and checkpoints, and one-line refusals. Skipped without timm (the ``timm``
extra, part of the ``test`` extra)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from fxprune.adapters import Adapter
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.cli import main
from fxprune.errors import ModelSpecError, TraceError
from fxprune.models import load_model
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, InsertAdapters, folding
from fxprune.resolve import paper_rule
from fxprune.tracing import example_input, trace
from tests.helpers import calibrate_and_randomize, count_modules, randomize_adapters, slow_case

timm = pytest.importorskip("timm")

SIZE = (3, 64, 64)
# Blocks per stage from each architecture's own configuration in timm 1.0 (depths, or the
# block counts of its arch strings). Where a definition's stage is a single plain conv
# (MobileNetV3's last 'cn' stage), fxprune counts it into the head, as it does for torchvision.
DEFINITIONS = {
    "resnext26ts": [2, 2, 2, 2],  # ByobNet: d=2 per stage
    "resnetv2_50": [3, 4, 6, 3],  # pre-activation bottlenecks
    "nf_resnet26": [2, 2, 2, 2],  # weight-standardised convs, no BN
    "regnety_008": [1, 3, 8, 2],  # RegNetCfg depth 14, w0=56, wa=38.84, wm=2.4
    "regnetz_b16": [2, 6, 12, 2],  # first block of a stage has no shortcut
    "efficientnet_b0": [1, 2, 2, 3, 3, 4, 1],
    "tf_efficientnet_lite0": [1, 2, 2, 3, 3, 4, 1],  # TF-'SAME' convs (Conv2dSame)
    "mobilenetv3_large_100": [1, 2, 3, 4, 2, 3],  # + the 'cn_r1_k1_s1_c960' head conv
    "cspdarknet53": [1, 2, 8, 8, 4],  # blocks inside the cross-stage split
    "cspresnet50": [3, 3, 5, 2],
    "dla34": [2, 4, 4, 2],  # levels 2-5: trees of 2, 4, 4 and 2 BasicBlocks
    "convnext_atto": [2, 2, 6, 2],
}


def _traced(name: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval().to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, trace(model, SIZE)


FAST_TO_BUILD = {"resnext26ts", "efficientnet_b0", "dla34", "convnext_atto"}


@pytest.mark.parametrize("name", [name if name in FAST_TO_BUILD else slow_case(name)
                                  for name in DEFINITIONS])
def test_blocks_per_stage_follow_the_definition(name):
    _, gm = _traced(name)
    structure = find_structure(gm)
    assert [len(stage.blocks) for stage in structure.stages] == DEFINITIONS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "regnety_008", "cspdarknet53",
                                  "nf_resnet26"])
def test_rule_drop_folds_exactly_in_float64(name):
    _, gm = _traced(name, torch.float64)
    x = example_input(SIZE, batch=2, dtype=torch.float64, seed=1)
    calibrate_and_randomize(gm, x)
    structure = find_structure(gm)
    ids = paper_rule(structure)
    assert ids
    for placement in ("paper", "cvpr"):
        student = PassManager([DropBlocks(ids), InsertAdapters(
            drop_sites(gm, structure, ids, placement))])(copy.deepcopy(gm)).graph_module
        with torch.no_grad():
            identity = student(x)
            assert randomize_adapters(student, scale=0.3) > 0
            unfolded = student(x)
            assert folding()(student).modified
            folded = student(x)
        assert count_modules(student, Adapter) == 0
        scale = unfolded.abs().max()
        assert (unfolded - identity).abs().max() > 1e-6 * scale  # the adapters matter
        assert (unfolded - folded).abs().max() <= 1e-9 * scale


def test_timm_spec_takes_preprocessing_from_the_pretrained_config():
    loaded = load_model("timm:tf_efficientnet_lite0")
    assert loaded.input_size == (3, 224, 224)
    assert loaded.mean == loaded.std == (0.5, 0.5, 0.5)
    assert load_model("timm:regnety_008").mean == (0.485, 0.456, 0.406)


def test_unknown_timm_architecture_suggests_close_names():
    with pytest.raises(ModelSpecError, match=r"unknown timm architecture 'regnety_08'.*"
                                             r"close matches: .*regnety_008"):
        load_model("timm:regnety_08")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_sizes_the_classifier(tmp_path, suffix):
    torch.manual_seed(1)
    trained = timm.create_model("resnet18", num_classes=7).eval()
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(trained.state_dict(), str(path))
    else:
        torch.save(trained.state_dict(), path)
    loaded = load_model("timm:resnet18", weights=str(path))
    x = example_input((3, 32, 32), batch=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), trained(x), rtol=0, atol=0)


@pytest.mark.slow
def test_inspect_prints_the_stages(capsys):
    assert main(["inspect", "timm:regnety_008", "--input-size", "3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "4.2    residual  identity    yes" in out
    assert "3.8" in out and "3.9" not in out


@pytest.mark.slow
def test_model_that_rejects_the_input_size_is_refused_in_one_line(capsys):
    """HaloNet's attention asserts that the feature map divides into its blocks."""
    with pytest.raises(TraceError, match=r"fails on the example input \(1, 3, 72, 72\) at "
                                         r"node '_assert.*'"):
        trace(timm.create_model("halonet26t", num_classes=10).eval(), (3, 72, 72))
    assert main(["inspect", "timm:halonet26t", "--input-size", "3,72,72"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--input-size" in err
