"""``fxprune compress`` end to end on real CIFAR-10 ResNet-20 weights and real images."""

from __future__ import annotations

import json

import pytest

from fxprune.cli import main
from fxprune.data import data_dir

DATA = data_dir()
pytestmark = [pytest.mark.realdata, pytest.mark.skipif(
    DATA is None or not (DATA / "cifar10" / "cifar10_lossless_prefix.npz").exists(),
    reason="needs the shared data folder (FXPRUNE_DATA)")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "resnet20"
    code = main(["compress", "cifar:resnet20", "--data", f"cifar10:{DATA / 'cifar10'}",
                 "--shots", "5", "--drop", "rule", "--seed", "0", "--out", str(out)])
    assert code == 0
    return out


def test_outputs_and_report(run_dir):
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "model.onnx", "model.pt", "report.json", "report.md"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["drop"] == ["1.2", "2.2", "3.2"]
    assert report["tiny_set"]["images"] == 50
    assert report["evaluation"]["images"] == 1017
    # recovery beats dropping alone on the real lossless test images
    assert report["compressed"]["top1"] > report["pruned"]["top1"] + 2.0
    assert report["original"]["top1"] == pytest.approx(91.64, abs=0.01)
    # folding is complete: exactly the dropped blocks' MACs are gone
    assert report["compressed"]["macs"] == report["pruned"]["macs"]
    assert report["compressed"]["macs"] < report["original"]["macs"]
    assert report["onnx_max_abs_diff"] <= 1e-4
    assert report["seconds"] > 0
    assert "| compressed |" in (run_dir / "report.md").read_text()


def test_existing_output_is_refused(run_dir, capsys):
    before = (run_dir / "report.json").read_text()
    code = main(["compress", "cifar:resnet20", "--data", f"cifar10:{DATA / 'cifar10'}",
                 "--images", "10", "--drop", "1.2", "--out", str(run_dir)])
    assert code == 2 and "exists" in capsys.readouterr().err
    assert (run_dir / "report.json").read_text() == before


def test_bad_block_id_leaves_no_output(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["compress", "cifar:resnet20", "--data", f"cifar10:{DATA / 'cifar10'}",
                 "--images", "10", "--drop", "2.1", "--out", str(out)])
    assert code == 2 and "cannot be dropped" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
