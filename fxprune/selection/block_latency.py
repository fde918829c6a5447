"""What share of the network's ONNX Runtime latency each droppable block costs, timed on its
own and cached on disk.

Dropping block ``b`` removes the nodes between its entry and its exit, so the latency it saves
is the latency of that sub-graph: it is exported alone (input: the block's input shape at the
user's batch) and timed with the user's thread count, interleaved with the whole network, and
kept as a fraction of the whole network's latency (the median over rounds of each round's
ratio): a shared machine's load changes absolute times from one minute to the next, much less
the ratio of two neighbouring runs. Blocks with the same signature (the
sequence of operations, module configurations and shapes, not the weights or node names) cost
the same, so one timing serves them all; the cache file keeps the fractions between runs, keyed
by the network's and the block's signatures, batch, threads, ONNX Runtime version and CPU, so
re-running a selection times nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnxruntime
from torch import fx
from torch.fx.node import _get_qualified_name

from fxprune.analysis.structure import Block
from fxprune.errors import FxpruneWarning
from fxprune.export import export_onnx
from fxprune.graph import named_modules, shape_of
from fxprune.latency import RATIO_QUANTILE, bench_input, cpu_name, onnx_runner, paired_ratios
from fxprune.segments import segment

TIMING_BUDGET_S = 15.0  # for all the distinct blocks of one network, timed interleaved


def default_cache_path() -> Path:
    """``$FXPRUNE_CACHE/latency.json``, else ``$XDG_CACHE_HOME/fxprune/...``, else
    ``~/.cache/fxprune/latency.json``."""
    root = os.environ.get("FXPRUNE_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fxprune"
    return Path(root) / "latency.json"


class LatencyCache:
    """Latency shares by key, in a JSON file written atomically; an unreadable file is reported
    once and replaced by the next save, never half-overwritten. A save merges what the file
    holds by then, so two runs sharing the cache keep each other's entries."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self.entries: dict[str, float] = {}
        self.entries = self._read(warn=True)

    def _read(self, warn: bool) -> dict[str, float]:
        if not self.path.exists():
            return {}
        try:
            return {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (ValueError, TypeError, AttributeError, OSError) as error:
            if warn:
                warnings.warn(f"latency cache {self.path} is unreadable ({error}); it will be "
                              "rebuilt", FxpruneWarning, stacklevel=3)
            return {}

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, shares: dict[str, float]) -> None:
        self.entries = {**self._read(warn=False), **self.entries, **shares}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".latency-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(self.entries, file, indent=1, sort_keys=True)
            os.replace(temp, self.path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)


def signature(gm: fx.GraphModule, names: Sequence[str], *context: object) -> str:
    """A hash of what decides the latency of the nodes ``names``: their operations in order
    (qualified function names, never object addresses), each module's configuration (``repr``:
    channels, kernel, stride, ...), the constant arguments (pad amounts, dims), every output
    shape, and ``context`` (shapes, batch, threads), with the runtime version and the CPU."""
    modules = named_modules(gm)
    nodes = {node.name: node for node in gm.graph.nodes}
    ops = []
    for name in names:
        node = nodes[name]
        if node.op == "call_module":
            what = repr(modules[node.target])
        elif callable(node.target):
            what = _get_qualified_name(node.target)
        else:
            what = str(node.target)
        constants = fx.node.map_arg((node.args, node.kwargs), lambda _: "<node>")
        ops.append([node.op, what, repr(constants), shape_of(node)[1:] if shape_of(node)
                    else None])
    text = json.dumps([ops, context, onnxruntime.__version__, platform.machine(),
                       cpu_name()], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def block_shares(gm: fx.GraphModule, blocks: Sequence[Block], input_size: Sequence[int],
                 batch: int = 1, threads: int = 1, cache: LatencyCache | None = None
                 ) -> tuple[dict[str, float], int]:
    """Each block's own latency as a fraction of the whole network's (``latency_ratio`` of
    interleaved runs), by block id, and how many distinct blocks had to be timed (0: all
    cached; a timing made with another ratio estimator does not count)."""
    network = signature(gm, [node.name for node in gm.graph.nodes], tuple(input_size), batch,
                        threads, f"p{RATIO_QUANTILE}")
    keys = {block.id: network + ":" + signature(gm, block.nodes, block.in_shape, batch, threads)
            for block in blocks}
    known = {key: cache.get(key) for key in set(keys.values())} if cache else {}
    missing = {key: block for block in blocks for key in [keys[block.id]]
               if known.get(key) is None}
    if missing:
        with tempfile.TemporaryDirectory(prefix="fxprune-blocks-") as scratch:
            whole = export_onnx(gm, input_size, Path(scratch) / "network.onnx")
            runners = [onnx_runner(whole, bench_input(input_size, batch), threads)]
            for index, block in enumerate(missing.values()):
                part = segment(gm, [block.entry], [block.exit])
                path = export_onnx(part, block.in_shape, Path(scratch) / f"block{index}.onnx")
                runners.append(onnx_runner(path, bench_input(block.in_shape, batch), threads))
            shares = paired_ratios(runners, warmup=3, repeats=50, budget_s=TIMING_BUDGET_S)
        measured = dict(zip(missing, shares))
        known.update(measured)
        if cache is not None:
            cache.put(measured)
    return {block.id: known[keys[block.id]] for block in blocks}, len(missing)
