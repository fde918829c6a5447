"""Latency measurement and ``fxprune bench``. Timings on a shared machine are noisy, so the
checks are on structure and loose bounds, never on exact speeds."""

from __future__ import annotations

import json

import onnx
import pytest

from fxprune import benchmark, latency
from fxprune.cli import main
from fxprune.export import export_onnx
from fxprune.latency import (MIN_ROUNDS, Timing, bench_input, interleaved_seconds, latency_ratio,
                             measure, onnx_runner, paired_ratios, time_interleaved,
                             torch_runner)
from fxprune.macs import node_macs, total_macs
from fxprune.models import cifar_resnet
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, FoldBatchNorm
from fxprune.tracing import example_input, trace

SIZE = (3, 32, 32)
DROPPED = ["1.2", "2.2", "3.2"]



@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """ResNet-20 and ResNet-20-C (BN folded) as ONNX files, with their torch MACs."""
    folder = tmp_path_factory.mktemp("pair")
    model = cifar_resnet(20).eval()
    result = {}
    for name, ids in (("original", []), ("dropped", DROPPED)):
        gm = PassManager([DropBlocks(ids), FoldBatchNorm()])(trace(model, SIZE)).graph_module
        result[name] = (export_onnx(gm, SIZE, folder / f"{name}.onnx"),
                        total_macs(node_macs(gm, [example_input(SIZE)])))
    return result


def test_interleaved_timing_gives_positive_medians_and_a_sane_self_ratio(pair):
    path, _ = pair["original"]
    inputs = bench_input(SIZE, batch=2)
    first, second = interleaved_seconds([onnx_runner(path, inputs), onnx_runner(path, inputs)],
                                        warmup=2, repeats=15, budget_s=None)
    for timing in (Timing.of(first), Timing.of(second)):
        assert timing.runs == 15 and timing.median_ms > 0 and timing.iqr_ms >= 0
    # the same model against itself; wide bounds: millisecond runs on a machine other
    # processes may load (the ratio's precision is measured in tools/bench_latency.py)
    assert 0.25 <= latency_ratio(first, second) <= 4.0


def test_torch_runner_and_time_budget():
    module = cifar_resnet(20)
    timing = measure(torch_runner(module, bench_input(SIZE)), warmup=1, repeats=50, budget_s=0)
    assert timing.runs == MIN_ROUNDS and timing.median_ms > 0
    with pytest.raises(ValueError):
        time_interleaved([], repeats=1)


class FakeClock:
    """A clock whose time passes only when a runner advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_paired_ratios_ignore_a_burst():
    """On a fake clock: runs take 4, 2 and 8 ticks, except in the third round, where another
    process stalls the last two runners 50x; the ratio does not move."""
    clock = FakeClock()
    calls = [0]

    def runner(ticks, bursty=False):
        def run():
            calls[0] += 1
            in_third_round = 6 < calls[0] <= 9
            clock.now += ticks * (50 if bursty and in_third_round else 1)
        return run

    half, double = paired_ratios([runner(4), runner(2, True), runner(8, True)], warmup=0,
                                 repeats=5, clock=clock)
    assert half == 0.5 and double == 2.0


@pytest.mark.parametrize("budget_s, rounds", [(0.0, MIN_ROUNDS), (4.5, 5), (100.0, 8)])
def test_budget_stops_after_the_round_that_passes_it(budget_s, rounds):
    """On a fake clock where every run takes one second: never fewer than ``MIN_ROUNDS``
    rounds, else the first round that ends past the budget is the last, up to ``repeats``."""
    clock = FakeClock()

    def one_second():
        clock.now += 1.0

    timing = measure(one_second, warmup=2, repeats=8, budget_s=budget_s, clock=clock)
    assert timing.runs == rounds and timing.median_ms == 1000.0


def test_latency_ratio_sees_through_sustained_load():
    """Clean runs of 2 and 4 ms; in 3 of 5 rounds both carry 1 ms from another process. The
    median says 0.75, the low quantiles the true 0.5."""
    this, reference = [0.002, 0.002, 0.003, 0.003, 0.003], [0.004, 0.004, 0.005, 0.005, 0.005]
    assert latency_ratio(this, reference) == pytest.approx(0.5)
    assert latency.np.median(this) / latency.np.median(reference) == pytest.approx(0.6)


def test_interleaved_rounds_alternate_order():
    order = []
    runners = [lambda name=name: order.append(name) for name in "abc"]
    samples = interleaved_seconds(runners, warmup=1, repeats=3, budget_s=None)
    assert "".join(order) == "abc" + "abc" + "cba" + "abc"
    assert [len(times) for times in samples] == [3, 3, 3]


def _bench(capsys, *argv) -> tuple[int, str, str]:
    code = main(["bench", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bench_json_vs_other_onnx(pair, capsys):
    (dropped, dropped_macs), (original, original_macs) = pair["dropped"], pair["original"]
    code, out, _ = _bench(capsys, dropped, "--vs", original, "--json", "--repeats", 3,
                          "--warmup", 1, "--batch", 2)
    assert code == 0
    report = json.loads(out)
    assert {"latency_ms", "latency_iqr_ms", "macs", "params", "latency_ratio", "macs_ratio",
            "vs_latency_ms"} <= report.keys()
    assert report["latency_ms"] > 0 and report["vs_latency_ms"] > 0
    assert 0.2 < report["latency_ratio"] < 5.0  # the same network with blocks dropped
    assert (report["macs"], report["vs_macs"]) == (dropped_macs, original_macs)
    assert report["macs_ratio"] == pytest.approx(dropped_macs / original_macs, rel=1e-12)
    assert report["input_size"] == list(SIZE) and report["batch"] == 2


def test_bench_ratio_is_latency_ratio(pair, capsys, monkeypatch):
    """The JSON's ratio is ``latency_ratio`` of the two runners' samples, not the ratio of
    their medians."""
    seconds = [[0.001, 0.001, 0.003, 0.003, 0.003], [0.002, 0.002, 0.004, 0.004, 0.004]]
    monkeypatch.setattr(benchmark, "interleaved_seconds", lambda *args: seconds)
    (dropped, _), (original, _) = pair["dropped"], pair["original"]
    code, out, _ = _bench(capsys, dropped, "--vs", original, "--json")
    report = json.loads(out)
    assert code == 0 and report["latency_ratio"] == pytest.approx(0.5)
    assert report["latency_ms"] == pytest.approx(3.0) and report["vs_latency_ms"] == \
        pytest.approx(4.0)


def test_bench_directory_takes_input_size_from_report(pair, tmp_path, capsys):
    """A compress output folder whose model.onnx leaves H and W symbolic."""
    path, macs = pair["original"]
    model = onnx.load(str(path))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.Clear()
        dim.dim_param = "side"
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "report.json").write_text(json.dumps({"input_size": list(SIZE)}))
    code, out, _ = _bench(capsys, tmp_path, "--json", "--repeats", 2, "--warmup", 0)
    assert code == 0
    report = json.loads(out)
    assert report["input_size"] == list(SIZE) and report["macs"] == macs


@pytest.mark.slow
def test_bench_model_spec_table_and_torch_runtime(capsys):
    code, out, _ = _bench(capsys, "cifar:resnet20", "--vs", "cifar:resnet20", "--repeats", 2,
                          "--warmup", 0)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["latency", "ms", "IQR", "ms", "MACs", "params"]
    assert lines[1].startswith("cifar:resnet20") and "40.55M" in lines[1]
    assert lines[3].split()[0] == "ratio" and lines[3].split()[-1] == "1.000"
    code, out, _ = _bench(capsys, "cifar:resnet20", "--runtime", "torch", "--json",
                          "--repeats", 2, "--warmup", 0)
    report = json.loads(out)
    assert code == 0 and report["macs"] == 40_551_040 and report["params"] == 269_722


@pytest.mark.parametrize("argv, message", [
    (["/no/such/model.onnx"], "/no/such/model.onnx"),
    (["{tmp}"], "model.onnx"),
    (["{original}", "--runtime", "torch"], "--runtime torch"),
    (["{original}", "--input-size", "3,64,64"], "3x64x64"),
    (["cifar:resnet20", "--vs", "/no/such/dir/"], "/no/such/dir/"),
])
def test_user_errors_are_one_line(pair, tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path, original=pair["original"][0]) for arg in argv]
    code, out, err = _bench(capsys, *argv, "--repeats", 1)
    assert code == 2 and out == ""
    assert err.startswith("fxprune: error:") and message in err
    assert len(err.strip().splitlines()) == 1
