"""The trunk of a traced CNN: the chain of nodes every path of features from the input to the
output passes through (the output's dominators), on which ``structure`` finds stages and
blocks. Paths that carry shapes (``x.size(0)``) or parameters (``get_attr`` nodes) are no
paths of features.

Everything here reads the graph; nothing here changes it.
"""

from __future__ import annotations

import networkx as nx
import torch
from torch import fx

from fxprune.graph import output_node, to_digraph
from fxprune.meta import value_type

SHAPE_TYPES = (int, float, bool, torch.Size)  # results that carry shapes, never features


def constant_nodes(graph: fx.Graph) -> set[str]:
    """Names of the nodes computed from parameters and buffers alone (``get_attr`` nodes and
    what only they feed)."""
    constant: set[str] = set()
    for node in graph.nodes:
        if node.op == "get_attr" or node.op in ("call_function", "call_method") and \
                node.all_input_nodes and all(source.name in constant
                                             for source in node.all_input_nodes):
            constant.add(node.name)
    return constant


def non_feature_nodes(graph: fx.Graph) -> set[str]:
    """Names of the nodes that carry shapes or parameters, not features: results typed as
    shapes by shape propagation (nodes added by later passes have no type) and constants."""
    shapes = {node.name for node in graph.nodes if node.op not in ("placeholder", "output")
              and value_type(node) in SHAPE_TYPES}
    return shapes | constant_nodes(graph)


def trunk(graph: fx.Graph) -> list[fx.Node]:
    """Nodes that every path of tensors from an input to the output passes through, in graph
    order. Paths through values that are not tensors (``x.size(0)`` feeding a final ``view``)
    carry shapes, not features, and do not count."""
    digraph = to_digraph(graph)
    # a size feeding a final view, a functional linear's weight: no paths of features
    digraph.remove_nodes_from(non_feature_nodes(graph))
    root = "__fxprune_root__"
    for node in graph.nodes:
        if not node.all_input_nodes:
            digraph.add_edge(root, node.name)
    dominators = nx.immediate_dominators(digraph, root)
    chain, name = [], output_node(graph).name
    while name != root:
        chain.append(name)
        name = dominators[name]
    by_name = {node.name: node for node in graph.nodes}
    return [by_name[name] for name in reversed(chain) if by_name[name].op != "output"]
