"""``fxprune compress`` end to end on real CIFAR-10 ResNet-20 weights and real images: every
test is slow (one compress run is shared by most)."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch

import fxprune
from fxprune.cli import main

pytestmark = pytest.mark.slow
RUN = ["compress", "cifar:resnet20", "--shots", "5", "--drop", "rule", "--seed", "0",
       "--quantize", "int8"]


@pytest.fixture(scope="module")
def cifar_data(shared_path):
    """The ``--data`` option for the data folder's CIFAR-10 (skips without it)."""
    return ["--data", f"cifar10:{shared_path('cifar10/cifar10_lossless_prefix.npz').parent}"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cifar_data):
    out = tmp_path_factory.mktemp("compress") / "resnet20"
    assert main([*RUN, *cifar_data, "--out", str(out)]) == 0
    return out


def test_outputs_and_report(run_dir):
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "model.int8.onnx", "model.onnx", "model.pt2", "report.json", "report.md",
        "tradeoff.png"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["drop"] == ["1.2", "2.2", "3.2"]
    assert report["tiny_set"]["images"] == 50
    assert report["evaluation"]["images"] == 1017
    # recovery beats dropping alone on the real lossless test images
    assert report["compressed"]["top1"] > report["pruned"]["top1"] + 2.0
    assert report["setbacks"] == []
    assert report["original"]["top1"] == pytest.approx(91.64, abs=0.01)
    # folding is complete: exactly the dropped blocks' MACs are gone
    assert report["compressed"]["macs"] == report["pruned"]["macs"]
    assert report["compressed"]["macs"] < report["original"]["macs"]
    assert report["onnx_max_abs_diff"] <= 1e-4
    assert report["seconds"] > 0
    markdown = (run_dir / "report.md").read_text()
    assert "| recovered |" in markdown and "![accuracy vs latency](tradeoff.png)" in markdown
    for key in ("original", "pruned", "compressed", "quantized"):
        assert report[key]["latency_ms"] > 0 and report[key]["latency_iqr_ms"] >= 0
    # int8, calibrated on the 50 tiny-set images: about as accurate, much faster
    assert report["quantized"]["calibration_images"] == 50
    assert report["quantized"]["top1"] >= report["compressed"]["top1"] - 1.0
    assert report["quantized"]["latency_ratio"] < report["compressed"]["latency_ratio"]
    assert "| int8 |" in markdown
    assert report["latency"] == {"runtime": "onnxruntime", "batch": 1, "threads": 1}
    assert (run_dir / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_model_loads_without_fxprune_objects(run_dir):
    """model.pt2 computes what model.onnx computes (both are the folded network)."""
    model = fxprune.load(run_dir)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    from fxprune.export import cpu_session
    session = cpu_session(run_dir / "model.onnx", 1)
    expected = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    torch.testing.assert_close(model(images), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)


def _without_timings(report: dict) -> dict:
    """The report minus what wall-clock time decides."""
    timing_keys = {"seconds", "seconds_total", "phases", "latency_ms", "latency_iqr_ms",
                   "latency_ratio"}
    if isinstance(report, dict):
        return {key: _without_timings(value) for key, value in report.items()
                if key not in timing_keys}
    if isinstance(report, list):
        return [_without_timings(value) for value in report]
    return report


def test_same_seed_gives_identical_numbers_and_onnx_weights(run_dir, tmp_path, cifar_data):
    again = tmp_path / "again"
    assert main([*RUN, *cifar_data, "--out", str(again)]) == 0
    first = json.loads((run_dir / "report.json").read_text())
    second = json.loads((again / "report.json").read_text())
    assert _without_timings(first) == _without_timings(second)
    for name in ("model.onnx", "model.int8.onnx"):
        weights = [{tensor.name: tensor.raw_data for tensor in
                    onnx.load(folder / name).graph.initializer}
                   for folder in (run_dir, again)]
        assert weights[0] == weights[1] and len(weights[0]) > 10  # bit-identical


def test_report_merges_runs(run_dir, tmp_path, capsys):
    other = tmp_path / "other-run"
    shutil.copytree(run_dir, other)
    report = json.loads((other / "report.json").read_text())
    report["compressed"].update(top1=80.0, latency_ms=report["compressed"]["latency_ms"] / 2,
                                latency_ratio=0.123)
    (other / "report.json").write_text(json.dumps(report))
    out = tmp_path / "merged"
    assert main(["report", str(run_dir), str(other), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| resnet20 |")
            or line.startswith("| other-run |")]
    # each run: its shipped model, then its int8 file
    assert len(rows) == 4 and "| 80.00 |" in rows[2] and "| 0.123 |" in rows[2]
    assert "; int8 |" in rows[1] and "; int8 |" in rows[3] and "; int8 |" not in rows[2]
    assert (out / "tradeoff.png").stat().st_size > 1000
    assert (out / "report.md").read_text().startswith("# fxprune runs compared")
    code = main(["report", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x")])
    assert code == 2 and "no report.json" in capsys.readouterr().err


def test_existing_output_is_refused(run_dir, capsys, cifar_data):
    before = (run_dir / "report.json").read_text()
    code = main(["compress", "cifar:resnet20", *cifar_data,
                 "--images", "10", "--drop", "1.2", "--out", str(run_dir)])
    assert code == 2 and "exists" in capsys.readouterr().err
    assert (run_dir / "report.json").read_text() == before


def test_bad_block_id_leaves_no_output(tmp_path, capsys, cifar_data):
    out = tmp_path / "never"
    code = main(["compress", "cifar:resnet20", *cifar_data,
                 "--images", "10", "--drop", "2.1", "--out", str(out)])
    assert code == 2 and "cannot be dropped" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_filter_pruning_end_to_end(tmp_path, cifar_data):
    """ResNet-20 with half the inner filters of every block pruned, recovered in closed form
    from 20 real images: a really smaller network, better than L1 pruning alone."""
    out = tmp_path / "pruned"
    assert main(["compress", "cifar:resnet20", *cifar_data,
                 "--shots", "2", "--prune-filters", "0.5", "--schedule", "layerwise",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["drop"] == [] and len(report["prune_filters"]["kept"]) == 9
    assert report["init"] == "lstsq" and report["adapters"] == 18
    assert report["compressed"]["macs"] == report["pruned"]["macs"]
    assert report["compressed"]["macs"] / report["original"]["macs"] == pytest.approx(
        0.51, abs=0.01)
    assert report["compressed"]["top1"] > report["pruned"]["top1"] + 10.0
    assert report["onnx_max_abs_diff"] <= 1e-4
    assert "pruned 50% of the filters of 9 feature maps" in (out / "report.md").read_text()


def test_auto_drop_end_to_end(tmp_path, monkeypatch, cifar_data):
    """``--drop auto --budget``: real timings (cached under FXPRUNE_CACHE), real scoring, and a
    report that explains the choice; the chosen blocks are what was dropped and recovered."""
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "auto"
    assert main(["compress", "cifar:resnet20", *cifar_data,
                 "--shots", "2", "--drop", "auto", "--budget", "0.9", "--threads", "1",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    auto = report["auto"]
    assert report["drop"] == auto["blocks"] and auto["blocks"]
    assert auto["strategy"] == "greedy" and len(auto["candidates"]) == 7  # ResNet-20's droppable
    assert 0 < auto["predicted_ratio"] <= 0.9
    chosen = [c for c in auto["candidates"] if c["round"] is not None]
    assert sorted(c["block"] for c in chosen) == sorted(auto["blocks"])
    assert json.loads((tmp_path / "cache" / "latency.json").read_text())  # timings kept
    assert report["compressed"]["top1"] > report["pruned"]["top1"]
    assert "## Automatic block choice (greedy)" in (out / "report.md").read_text()


def test_label_free_distillation_end_to_end(tmp_path, cifar_data):
    """``--finetune kd`` after recovery, from 50 real images: every weight trains, the
    adapters still fold, and the shipped model stays near the recovered one (on ResNet-20,
    whose rule drop leaves 75 %, it neither gains nor loses much: 75.42 -> 74.63)."""
    out = tmp_path / "kd"
    assert main(["compress", "cifar:resnet20", *cifar_data, "--shots", "5", "--drop", "rule",
                 "--finetune", "kd", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["finetune"] == "kd"
    assert report["compressed"]["macs"] == report["pruned"]["macs"]  # folded completely
    assert report["onnx_max_abs_diff"] <= 1e-4
    assert report["compressed"]["top1"] != report["recovered"]["top1"]
    assert abs(report["compressed"]["top1"] - report["recovered"]["top1"]) < 3.0
    assert abs(report["compressed"]["agreement"] - report["recovered"]["agreement"]) < 3.0
    assert "finetuned (kd)" in (out / "report.md").read_text()
