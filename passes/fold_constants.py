"""FoldConstants: evaluate once what depends on parameters and buffers only, and read the
result as a constant buffer.

A node whose inputs are all constants (``get_attr`` nodes, or nodes folded before) computes the
same tensor on every call: a weight standardised in the forward (``(W − mean W) / std W ·
gain``, NF-ResNet and BiT convs), a layer scale reshaped for broadcasting. Each such node that
feeds a node depending on the input becomes a ``get_attr`` of a new buffer holding its value,
so that what remains is a plain ``conv2d(x, W')`` the later canonical passes can turn into a
module. Exact up to the order of float operations (the same ops run once, in the graph's dtype).
A folded value is fixed from then on: recovery freezes the original weights anyway, and a
finetune trains the modules' parameters, not a standardised weight's or a layer scale's source
(the source, read by nothing any more, is removed so it is not counted as a parameter).

Does not fire on graphs without such nodes; ops that mutate or have other side effects, random
ops and nodes without inputs (``torch.randn(...)``, ``torch.zeros(...)`` built from shapes) are
never folded, nor results that are not tensors. A second run finds only ``get_attr`` constants.
"""

from __future__ import annotations

import torch
from torch import fx

from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import fetch_attr, finalize, free_child_name, mutates

_RANDOM_FUNCTIONS = {torch.rand, torch.randn, torch.randint, torch.bernoulli, torch.normal,
                     torch.rand_like, torch.randn_like, torch.dropout, torch.nn.functional.dropout}


def _constant_values(gm: fx.GraphModule) -> tuple[dict[fx.Node, object], dict[fx.Node, set]]:
    """Values of every node computed from ``get_attr`` nodes alone, in graph order, and the
    submodules whose tensors each one reads."""
    values: dict[fx.Node, object] = {}
    owners: dict[fx.Node, set[str]] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node] = fetch_attr(gm, node.target)
            owners[node] = {node.target.rpartition(".")[0]}
            continue
        if node.op not in ("call_function", "call_method") or not node.all_input_nodes or \
                mutates(node) or node.target in _RANDOM_FUNCTIONS or \
                any(source not in values for source in node.all_input_nodes):
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
        with torch.no_grad():
            values[node] = node.target(*args, **kwargs) if node.op == "call_function" else \
                getattr(args[0], node.target)(*args[1:], **kwargs)
        owners[node] = set().union(*(owners[source] for source in node.all_input_nodes))
    return values, owners


class FoldConstants(PassBase):
    def call(self, gm: fx.GraphModule) -> PassResult:
        values, owners = _constant_values(gm)
        folded = [node for node, value in values.items()
                  if node.op != "get_attr" and isinstance(value, torch.Tensor)
                  and any(user not in values for user in node.users)]
        for node in folded:
            # kept beside the tensors it came from, so that a module built on it later can
            # take that module's place
            owner = owners[node].pop() if len(owners[node]) == 1 else ""
            module = gm.get_submodule(owner)
            name = free_child_name(module, f"folded_{node.name}")
            module.register_buffer(name, values[node].detach().clone())
            with gm.graph.inserting_before(node):
                constant = gm.graph.get_attr(f"{owner}.{name}" if owner else name)
            constant.meta = dict(node.meta)
            node.replace_all_uses_with(constant)
        if folded:
            read_before = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
            finalize(gm)
            _remove_unread(gm, read_before)
        return PassResult(gm, bool(folded))


def _remove_unread(gm: fx.GraphModule, targets: set[str]) -> None:
    """Delete the tensors in ``targets`` that no ``get_attr`` reads any more, unless their
    module is still called (its own forward reads them)."""
    read = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    called = {node.target for node in gm.graph.nodes if node.op == "call_module"}
    for target in targets - read:
        owner, _, name = target.rpartition(".")
        if owner not in called:
            delattr(gm.get_submodule(owner), name)
