"""``fxprune demo``: the real job on the data folder, and what it says without one."""

from __future__ import annotations

import json

import pytest

from fxprune.cli import main
from fxprune.commands.demo import summary
from fxprune.data import data_dir

DATA = data_dir()


def test_without_data_it_says_what_to_point_it_at(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FXPRUNE_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    code = main(["demo", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    for needed in ("FXPRUNE_DATA", "has no cifar10/ folder", "torchvision.datasets.CIFAR10",
                   "resnet56-4bfd9763.th", "--data cifar10:"):
        assert needed in err
    assert not (tmp_path / "demo").exists()


@pytest.mark.realdata
@pytest.mark.skipif(DATA is None or not (DATA / "cifar10").is_dir(), reason="needs the data")
def test_demo_compresses_resnet56(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--images", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "cifar:resnet56" and report["drop"] == ["1.2", "2.2", "3.2"]
    assert report["original"]["top1"] == pytest.approx(92.72, abs=0.01)
    assert report["compressed"]["top1"] > report["pruned"]["top1"] + 3.0
    assert report["compressed"]["macs"] / report["original"]["macs"] == pytest.approx(0.887,
                                                                                    abs=0.001)
    assert report["latency"]["batch"] == 64
    assert "ONNX Runtime latency (batch 64, 1 thread)" in printed and "92.72%" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "model.int8.onnx", "model.onnx", "model.pt2", "report.json", "report.md",
        "tradeoff.png"]
    assert "int8, calibrated on the same images" in printed
    assert report["quantized"]["top1"] >= report["compressed"]["top1"] - 1.5
    del report["quantized"]  # as when ONNX Runtime could not quantize: fp32 lines only
    assert "int8" not in summary(report, out) and "model.pt2" in summary(report, out)
