"""``fxprune demo``: the real job on the data folder, the same job on first-use downloads,
and what it says when it can get neither."""

from __future__ import annotations

import json

import pytest

from fxprune import download
from fxprune.cli import main
from fxprune.commands.demo import summary
from tests.fake_remote import publish_checkpoint, publish_cifar10, serve


def test_offline_without_data_it_says_what_to_point_it_at(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FXPRUNE_DATA", "none")  # FXPRUNE_OFFLINE is set for every test
    code = main(["demo", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    for needed in ("FXPRUNE_OFFLINE", download.CIFAR_RESNETS[56].url.rsplit("/", 1)[1],
                   "--weights FILE", "FXPRUNE_DATA"):
        assert needed in err
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_downloads_its_inputs_on_first_use(tmp_path, monkeypatch, capsys):
    """A fresh clone with internet, played by a local stand-in server: a random ResNet-56 and a
    small CIFAR-10 archive are fetched into the empty cache, and the job runs through."""
    serve(monkeypatch, tmp_path / "remote", tmp_path / "cache")
    publish_checkpoint(monkeypatch, tmp_path / "remote", 56)
    publish_cifar10(monkeypatch, tmp_path / "remote", train=10, test=20)
    out = tmp_path / "demo"
    assert main(["demo", "--images", "10", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == str(tmp_path / "cache" / "weights" /
                                     download.CIFAR_RESNETS[56].name)
    assert report["evaluation"]["images"] == 20 and report["drop"] == ["1.2", "2.2", "3.2"]
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()


@pytest.mark.slow
def test_demo_compresses_resnet56(tmp_path, capsys, shared_path):
    shared_path("cifar10")
    shared_path("weights/cifar10-resnet")
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
