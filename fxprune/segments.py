"""Sub-graphs between named nodes, so recovery trains and evaluates only the part of the
network between an adapter and the feature it must match, not the whole network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

from fxprune.errors import PreconditionError


def segment(gm: fx.GraphModule, inputs: Sequence[str], outputs: Sequence[str]) -> fx.GraphModule:
    """A GraphModule computing the nodes ``outputs`` from the values of the nodes ``inputs``.

    The new module takes one positional argument per input node, in order, returns one tensor
    (one output) or a tuple, and shares ``gm``'s submodules (so training it trains ``gm``).
    Raises ``PreconditionError`` when an output depends on a graph input that does not flow
    through ``inputs`` (the inputs do not cut the graph there)."""
    nodes = {node.name: node for node in gm.graph.nodes}
    missing = [name for name in (*inputs, *outputs) if name not in nodes]
    if missing:
        raise PreconditionError(f"no node named {', '.join(missing)} in the graph")
    needed: set[str] = set()
    stack = [nodes[name] for name in outputs]
    while stack:
        node = stack.pop()
        if node.name in needed:
            continue
        needed.add(node.name)
        if node.name in inputs:
            continue
        if node.op == "placeholder":
            raise PreconditionError(
                f"outputs {list(outputs)} depend on graph input '{node.name}' other than "
                f"through {list(inputs)}")
        stack.extend(node.all_input_nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for name in inputs:
        env[nodes[name]] = graph.placeholder(name)
        env[nodes[name]].meta.update(nodes[name].meta)
    for node in gm.graph.nodes:
        if node.name in needed and node.name not in inputs:
            env[node] = graph.node_copy(node, env.__getitem__)
    results = [env[nodes[name]] for name in outputs]
    graph.output(results[0] if len(results) == 1 else tuple(results))
    return fx.GraphModule(gm, graph, f"segment_{outputs[-1]}")


def as_list(result) -> list[torch.Tensor]:
    """A module's output as a list of tensors (one output or a tuple of them)."""
    return list(result) if isinstance(result, (tuple, list)) else [result]


@torch.no_grad()
def run_batched(module: torch.nn.Module, inputs: Sequence[torch.Tensor], batch_size: int
                ) -> list[torch.Tensor]:
    """Run ``module`` over the first dimension of ``inputs`` in batches; always returns a list
    of tensors (one per module output), concatenated over the batches."""
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, len(inputs[0]), batch_size):
        chunks.append(as_list(module(*(tensor[start:start + batch_size] for tensor in inputs))))
    return [torch.cat(parts) for parts in zip(*chunks)]
