"""Multiply-accumulate counts per graph node, from ``torch.utils.flop_counter`` (MACs = FLOPs/2).

The flop counter counts matrix products and convolutions (not elementwise ops), which is the
convention of the paper's tables (ResNet-50: 4.09 GMACs at 224x224).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import fx
from torch.utils.flop_counter import FlopCounterMode


class _CountingInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter
        self.macs: dict[str, int] = {}

    def run_node(self, node: fx.Node):
        before = self.counter.get_total_flops()
        result = super().run_node(node)
        self.macs[node.name] = (self.counter.get_total_flops() - before) // 2
        return result


def node_macs(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """MACs of every node for one forward pass of ``example_inputs`` (batch included)."""
    counter = FlopCounterMode(display=False)
    interpreter = _CountingInterpreter(gm, counter)
    with torch.no_grad(), counter:
        interpreter.run(*example_inputs)
    return interpreter.macs


def total_macs(macs: dict[str, int], names: Iterable[str] | None = None) -> int:
    """Sum over ``names`` (all nodes when None)."""
    return sum(macs.values()) if names is None else sum(macs.get(name, 0) for name in names)


def count_params(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
