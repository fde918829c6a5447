"""The command line: ``fxprune inspect`` output and user-error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fxprune.cli import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_json_schema(capsys):
    code, out, _ = _run(capsys, "inspect", "cifar:resnet56", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["macs"] == pytest.approx(125.49e6, rel=0.01)
    assert report["params"] == 853_018
    assert [stage["id"] for stage in report["stages"]] == [1, 2, 3]
    assert [len(stage["blocks"]) for stage in report["stages"]] == [9, 9, 9]
    block = report["stages"][1]["blocks"][0]
    assert {"id", "kind", "shortcut", "droppable", "macs"} <= block.keys()
    assert (block["id"], block["shortcut"], block["droppable"]) == ("2.1", "parameter-free", False)
    assert sum(b["macs"] for s in report["stages"] for b in s["blocks"]) < report["macs"]
    assert len(report["prunable_maps"]) == 27 and report["streams"] == []  # option-A shortcuts
    assert report["prunable_maps"][0] == {"producer": "layer1_0_conv1",
                                          "consumer": "layer1_0_conv2", "channels": 16}


def test_inspect_table_and_input_size(capsys):
    code, out, _ = _run(capsys, "inspect", "torchvision:resnet18", "--input-size", "3,64,64")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["stage", "block", "kind", "shortcut", "droppable"]
    assert any(line.split()[:5] == ["1", "1.2", "residual", "identity", "yes"] for line in lines)
    assert "input 3x64x64" in lines[-3]
    assert lines[-2].startswith("prunable maps (--prune-filters): layer1_0_conv1 (64), ")
    assert lines[-1] == ("residual streams (--prune-streams): conv1 (64: 3 convs in, 4 out), "
                         "layer2_0_conv2 (128: 3 convs in, 3 out), layer3_0_conv2 (256: 3 convs "
                         "in, 3 out)")


@pytest.mark.parametrize("argv, message", [
    (["inspect", "torchvision:resnet5O"], "resnet5O"),
    (["inspect", "nonsense"], "nonsense"),
    (["inspect", "cifar:resnet20", "--weights", "/no/such/file.pth"], "/no/such/file.pth"),
])
def test_user_errors_are_one_line(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("fxprune: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_bad_input_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "cifar:resnet20", "--input-size", "3,32"])
    assert exit_info.value.code == 2
    assert "C,H,W" in capsys.readouterr().err


@pytest.mark.slow
def test_console_entry_point():
    completed = subprocess.run([sys.executable, "-m", "fxprune.cli", "inspect", "cifar:resnet20",
                                "--json"], capture_output=True, text=True, check=True)
    assert json.loads(completed.stdout)["params"] == 269_722
