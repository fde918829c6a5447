"""Every user mistake the CLI knows about: one line on stderr, exit status 2, no traceback, and
never an output folder (nor a staging folder) left behind."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from fxprune import job
from fxprune.cli import main
from fxprune.errors import FxpruneError
from fxprune.models import cifar_resnet

UNTRACEABLE = """
import torch

class Gate(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x

def build():
    return Gate()
"""


def _write_images(folder, count, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
    return folder


def _compress(tmp_path, *extra, data=None, model="cifar:resnet20"):
    args = ["compress", model, "--data", data or "noise:30", "--images", "10", "--drop", "1.2",
            "--recover", "none", "--out", str(tmp_path / "out")]
    for option in extra:  # later options override the defaults above
        name = option.split("=", 1)[0]
        if name in args:
            index = args.index(name)
            del args[index:index + 2]
    return args + [part for option in extra for part in option.split("=", 1)]


def _assert_user_error(capsys, argv, message, tmp_path=None):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line and not line.startswith("fxprune: warning")]
    assert "Warning" not in err  # nothing but fxprune's own lines
    assert len(lines) == 1 and lines[0].startswith("fxprune: error:"), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    if tmp_path is not None:
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    return lines[0]


@pytest.fixture
def weights_files(tmp_path):
    garbled = tmp_path / "garbled.pth"
    garbled.write_bytes(b"\x80\x04 not a checkpoint at all")
    other = tmp_path / "resnet32.pth"
    torch.save(cifar_resnet(32).state_dict(), other)
    return garbled, other


@pytest.mark.parametrize("case, extra, message", [
    ("unknown model", ["compress", "torchvision:resnet5O"], "resnet5O"),
    ("unknown model", ["compress", "no_such_module:build"], "no_such_module"),
    ("missing weights", ["--weights=/no/such/weights.pth"], "/no/such/weights.pth"),
    ("unknown block", ["--drop=7.1"], "no block '7.1'"),
    ("non-droppable block", ["--drop=2.1"], "cannot be dropped"),
    ("more blocks than exist", ["--drop=1.2,1.3,1.4"], "no block '1.4'"),
    ("repeated block", ["--drop=1.2,1.2"], "repeat"),
    ("N larger than the pool", ["--images=40"], "holds only 30"),
    ("unknown pool", ["--data=imagenet64"], "imagenet64"),
    ("no training at all", ["--steps=0"], "needs --init lstsq"),
    ("negative steps", ["--steps=-3"], "--steps must be >= 0"),
    ("unknown device", ["--device=gpu0"], "unknown device 'gpu0'"),
    ("pruning everything", ["--prune-filters=1.0"], "in [0, 1)"),
    ("pruning a map that is not", ["--prune-filters=layer1_0_conv2=0.5"],
     "no prunable feature map starts at 'layer1_0_conv2'"),
    ("streams behind option-A shortcuts", ["--prune-streams=0.5"], "no residual stream"),
    ("masking everything", ["--sparsity=1.0"], "sparsity must be in [0, 1)"),
    ("auto without a budget", ["--drop=auto"], "--drop auto needs --budget"),
    ("budget without auto", ["--budget=0.8"], "--budget applies only to --drop auto"),
    ("budget out of range", ["--drop=auto", "--budget=1.5"], "ratio in (0, 1)"),
    ("strategy without auto", ["--select=alone"], "--select applies only to --drop auto"),
])
def test_user_errors(tmp_path, capsys, case, extra, message):
    argv = (_compress(tmp_path, model=extra[1]) if extra[0] == "compress"
            else _compress(tmp_path, *extra))
    _assert_user_error(capsys, argv, message, tmp_path)


def test_nothing_to_compress(tmp_path, capsys):
    argv = [arg for arg in _compress(tmp_path) if arg not in ("--drop", "1.2")]
    _assert_user_error(capsys, argv, "nothing to compress", tmp_path)


def test_garbled_and_misfitting_weights(tmp_path, capsys, weights_files):
    garbled, other = weights_files
    _assert_user_error(capsys, _compress(tmp_path, f"--weights={garbled}"), str(garbled),
                       tmp_path)
    line = _assert_user_error(capsys, _compress(tmp_path, f"--weights={other}"), "unexpected",
                              tmp_path)
    assert "layer1.3" in line  # names keys the model does not have


def test_empty_folder_and_folder_without_images(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_user_error(capsys, _compress(tmp_path, data=f"folder:{empty}"), "holds no images",
                       tmp_path)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("not an image")
    _assert_user_error(capsys, _compress(tmp_path, data=f"folder:{texts}"), "holds no images",
                       tmp_path)
    _assert_user_error(capsys, _compress(tmp_path, data=f"folder:{tmp_path / 'absent'}"),
                       "absent", tmp_path)


@pytest.mark.slow
def test_corrupt_images_are_skipped_with_a_count(tmp_path, capsys):
    folder = _write_images(tmp_path / "images", 14)
    for index in range(3):
        (folder / f"broken{index}.jpg").write_bytes(b"\xff\xd8 truncated")
    code = main(_compress(tmp_path, "--images=8", data=f"folder:{folder}"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "fxprune: warning: skipped 3 unreadable image file(s)" in err
    assert "Traceback" not in err and "UserWarning" not in err
    assert (tmp_path / "out" / "report.json").exists()


@pytest.mark.slow
def test_setbacks_are_printed_and_reported(tmp_path, capsys, monkeypatch):
    """What ``setbacks`` finds reaches the user three ways: a warning line, report.json and
    report.md (its judgement itself: tests/test_report.py)."""
    setback = "recovery lowered agreement with the original on the 6 evaluation images"
    monkeypatch.setattr(job, "setbacks", lambda report: [setback])
    folder = _write_images(tmp_path / "images", 14)
    assert main(_compress(tmp_path, "--images=8", "--quantize=int8",
                          data=f"folder:{folder}")) == 0
    captured = capsys.readouterr()
    assert f"fxprune: warning: {setback}" in captured.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["setbacks"] == [setback]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"\n\n**Warning:** {setback}\n" in markdown
    # unlabelled images: the int8 file is judged by its agreement with the original
    assert report["quantized"]["top1"] is None and report["quantized"]["agreement"] > 0
    assert "| int8 |" in markdown and "int8 n/a (agreement" in captured.out
    assert (tmp_path / "out" / "model.int8.onnx").exists()


@pytest.mark.slow
def test_a_failed_quantization_keeps_the_fp32_outputs(tmp_path, capsys, monkeypatch):
    def refuse(source, images, path):
        raise FxpruneError("ONNX Runtime could not quantize it")
    monkeypatch.setattr(job, "quantize_onnx", refuse)
    folder = _write_images(tmp_path / "images", 14)
    assert main(_compress(tmp_path, "--images=8", "--quantize=int8",
                          data=f"folder:{folder}")) == 0
    assert "fxprune: warning: no int8 file: ONNX Runtime could not" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.onnx", "model.pt2", "report.json", "report.md", "tradeoff.png"]


def test_output_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    argv = _compress(tmp_path, f"--out={blocker / 'out'}")
    _assert_user_error(capsys, argv, str(blocker))
    assert blocker.read_text() == "a file, not a folder"


def test_existing_output_needs_force(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code = main(_compress(tmp_path))
    assert code == 2 and "--force" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_untraceable_model(tmp_path, capsys):
    path = tmp_path / "gate.py"
    path.write_text(textwrap.dedent(UNTRACEABLE))
    argv = _compress(tmp_path, "--input-size=3,32,32", model=f"{path}:build")
    line = _assert_user_error(capsys, argv, "cannot trace", tmp_path)
    assert "gate.py" in line


def test_model_that_rejects_the_input_shape(tmp_path, capsys):
    path = tmp_path / "lin.py"
    path.write_text("from torch import nn\n\ndef build():\n    return nn.Linear(3, 4)\n")
    argv = _compress(tmp_path, "--data=noise:20", "--images=5", "--drop=rule",
                     model=f"{path}:build")
    line = _assert_user_error(capsys, argv, "fails on the example input (1, 3, 224, 224)",
                              tmp_path)
    assert "mat1 and mat2 shapes cannot be multiplied" in line and "--input-size" in line


def test_interrupt_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        staging = next(p for p in tmp_path.iterdir() if p.name.startswith(".out."))
        (staging / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "export_onnx", interrupted)
    code = main(_compress(tmp_path))
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", [".", ".."])
def test_output_that_would_swallow_the_current_folder(tmp_path, capsys, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep")
    monkeypatch.chdir(work)
    argv = _compress(tmp_path, f"--out={where}") + ["--force"]
    code = main(argv)
    assert code == 2 and "current folder" in capsys.readouterr().err
    assert (work / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in work.iterdir()) == ["precious.txt"]


def test_output_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("a file")
    code = main(_compress(tmp_path) + ["--force"])
    assert code == 2 and "is not a folder" in capsys.readouterr().err
    assert target.read_text() == "a file"


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    code = main(_compress(tmp_path, "--recover=practise", "--drop=1.2,2.2", "--dry-run"))
    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "out").exists()
    assert out.splitlines()[:3] == [
        "compression plan for input (3, 32, 32), seed 0:",
        "  1. DropBlocks(block_ids=['1.2', '2.2'])",
        "  2. InsertAdapters(sites=[input of layer1_2_conv1, input of layer2_0_conv1, "
        "output of layer1_0_conv2, input of layer2_2_conv1, input of layer3_0_conv1, "
        "output of layer2_0_conv2])"]
    assert "recovery: stagewise, cvpr sites, identity start" in out
    _assert_user_error(capsys, [a for a in _compress(tmp_path) if not a.startswith(
        ("--out", str(tmp_path)))], "give --out FOLDER")
