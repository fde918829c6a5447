"""Wall-clock latency of ONNX Runtime sessions and torch modules, measured fairly.

A shared machine drifts (other processes, frequency, caches), so one model timed after another
is not comparable. ``time_interleaved`` runs the candidates in turn, ``A B B A A B ...`` on
the same input, and summarises each by its median and interquartile range: the drift hits both
alike. How much faster one candidate is than another is ``latency_ratio``, the ratio of low
quantiles, which interference from other processes hardly moves. Warm-up rounds run first and
are discarded (lazy allocation, weight pre-packing, cold caches). Time is bounded by
``repeats`` and an optional ``budget_s``. Every timing function reads the ``clock`` it is
given (``time.perf_counter`` by default), so a test can drive it with a fake one.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fxprune.export import as_array, cpu_session
from fxprune.tracing import example_input

Runner = Callable[[], object]  # one forward pass
Clock = Callable[[], float]  # seconds, monotonic; ``time.perf_counter`` unless a test fakes it
MIN_ROUNDS = 3  # rounds a time budget cannot cut below


@dataclass(frozen=True)
class Timing:
    """Summary of one candidate's timed runs, in milliseconds."""

    median_ms: float
    iqr_ms: float  # 75th minus 25th percentile
    runs: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        q1, median, q3 = np.percentile(np.asarray(seconds) * 1e3, [25, 50, 75])
        return cls(float(median), float(q3 - q1), len(seconds))


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_input(input_size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """The seeded fp32 NCHW input every candidate of a comparison gets."""
    return example_input(input_size, batch=batch, seed=seed)


def onnx_runner(path: str | Path, inputs: torch.Tensor, threads: int = 1) -> Runner:
    """Runs the ONNX file on ``inputs`` in a CPU session with ``threads`` intra-op threads
    (one inter-op thread, sequential execution, all graph optimisations)."""
    session = cpu_session(path, threads)
    feed = {session.get_inputs()[0].name: as_array(inputs)}
    return lambda: session.run(None, feed)


def torch_runner(module: nn.Module, inputs: torch.Tensor, threads: int = 1) -> Runner:
    """Runs ``module`` (switched to eval mode) on ``inputs`` under inference mode with
    ``threads`` torch threads; the thread count is global, so each run re-asserts it."""
    module.eval()

    def run():
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return module(inputs)
    return run


def time_interleaved(runners: Sequence[Runner], warmup: int = 3, repeats: int = 20,
                     budget_s: float | None = None, *,
                     clock: Clock = time.perf_counter) -> list[Timing]:
    """Time every runner ``repeats`` times in rounds after ``warmup`` untimed rounds; odd
    rounds run the runners in order, even rounds in reverse. With ``budget_s``, stop after
    the first round that ends past the budget (counted from the first timed round), but never
    before ``MIN_ROUNDS`` rounds."""
    return [Timing.of(times) for times in interleaved_seconds(runners, warmup, repeats,
                                                              budget_s, clock=clock)]


def paired_ratios(runners: Sequence[Runner], warmup: int = 3, repeats: int = 20,
                  budget_s: float | None = None, *,
                  clock: Clock = time.perf_counter) -> list[float]:
    """For every runner after the first, ``latency_ratio`` of its times over the first
    runner's, all timed interleaved."""
    first, *others = interleaved_seconds(runners, warmup, repeats, budget_s, clock=clock)
    return [latency_ratio(times, first) for times in others]


RATIO_QUANTILE = 10  # percent


def latency_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """How much slower ``times`` are than ``reference`` (two runners timed interleaved): the
    ratio of their 10th percentiles. Other processes only ever add time; on a busy machine
    most runs of both carry some, and a constant extra drags the median ratio towards 1
    (ResNet-56 without 3 blocks against the original, 4 other processes on 2 cores: median
    of per-round ratios 0.95, ratio of medians 0.93, of 10th percentiles 0.86-0.87; 0.87-0.89
    with one other process). The low quantile keeps the runs that went nearly clean; on a
    quiet machine it agrees with the median."""
    return float(np.percentile(times, RATIO_QUANTILE) / np.percentile(reference, RATIO_QUANTILE))


def interleaved_seconds(runners: Sequence[Runner], warmup: int, repeats: int,
                        budget_s: float | None, *,
                        clock: Clock = time.perf_counter) -> list[list[float]]:
    """Seconds of every timed run, per runner, in round order (see ``time_interleaved``)."""
    if not runners or repeats < 1 or warmup < 0:
        raise ValueError("need at least one runner, repeats >= 1 and warmup >= 0")
    for _ in range(warmup):
        for runner in runners:
            runner()
    samples: list[list[float]] = [[] for _ in runners]
    forward = list(zip(runners, samples))
    start = clock()
    for done in range(1, repeats + 1):
        # every other round in reverse, so no runner always follows the same neighbour (its
        # cache footprint, its thread wake-ups) and a position effect averages out
        for runner, times in forward if done % 2 else forward[::-1]:
            tick = clock()
            runner()
            times.append(clock() - tick)
        if budget_s is not None and done >= MIN_ROUNDS and clock() - start > budget_s:
            break
    return samples


def measure(runner: Runner, warmup: int = 3, repeats: int = 20,
            budget_s: float | None = None, *, clock: Clock = time.perf_counter) -> Timing:
    """Median and IQR of one runner."""
    return time_interleaved([runner], warmup, repeats, budget_s, clock=clock)[0]
