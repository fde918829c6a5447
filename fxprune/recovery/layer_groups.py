"""Which recovery nodes the layer-wise schedule trains together, and from where: pure graph
analysis of a student with adapters (``fxprune.recovery.practise`` trains the groups)."""

from __future__ import annotations

import networkx as nx
from torch import fx

from fxprune.graph import masked_nodes, recovery_nodes, to_digraph
from fxprune.meta import adapter_site, prune_group


def layer_groups(student: fx.GraphModule) -> list[tuple[list[fx.Node], list[str], list[str]]]:
    """(nodes trained together, the nodes the segment starts from, the convs whose outputs
    are mimicked), in topological order: an adapter before a conv alone; a pruned map's
    adapters and BN together, from its producers' inputs to all its consumers (one of each
    for ``PruneFilters``, a whole residual stream for ``PruneCoupledMaps``); a masked conv
    alone, against the teacher's output of that conv."""
    trained = recovery_nodes(student)
    masked = set(masked_nodes(student))
    nodes = {node.name: node for node in student.graph.nodes}
    graph = to_digraph(student.graph)
    groups, seen = [], set()
    for node in trained:
        group = prune_group(node)
        if node in masked:  # its own output mimics the teacher conv's
            groups.append(([node], [node.args[0].name], [node.name]))
        elif group is None:
            groups.append(([node], [node.args[0].name], [next(iter(node.users)).name]))
        elif group not in seen:
            seen.add(group)
            members = [other for other in trained if prune_group(other) == group]
            sites = [site for other in members if (site := adapter_site(other)) is not None]
            consumers = [site.conv for site in sites if site.side == "input"]
            producers = [site.conv for site in sites if site.side == "output"]
            groups.append((members, _cut(graph, nodes, producers, consumers), consumers))
    return _upstream_first(graph, groups)


def _cut(graph: nx.DiGraph, nodes: dict[str, fx.Node], producers: list[str],
         consumers: list[str]) -> list[str]:
    """The nodes a segment from the producers to the consumers starts from: every input of
    the region between them (downstream of a producer, upstream of a consumer) that lies
    outside it, in graph order — a producer's input, and whatever else the region reads."""
    downstream = set(producers).union(*(nx.descendants(graph, name) for name in producers))
    upstream = set(consumers).union(*(nx.ancestors(graph, name) for name in consumers))
    region = downstream & upstream
    inputs = {source.name for name in region for source in nodes[name].all_input_nodes
              if source.name not in region and source.op != "get_attr"}
    return [name for name in nodes if name in inputs]


def _upstream_first(graph: nx.DiGraph, groups: list) -> list:
    """``groups`` reordered so that a group whose member feeds another group's segment inputs
    trains first (a stream's first adapter may come before the pruned map that feeds one of
    its producers); graph order otherwise, and where the groups feed each other both ways."""
    order = nx.DiGraph()
    order.add_nodes_from(range(len(groups)))
    for before, (members, _, _) in enumerate(groups):
        names = {node.name for node in members}
        for after, (_, starts, _) in enumerate(groups):
            if after != before and any(names & (nx.ancestors(graph, start) | {start})
                                       for start in starts):
                order.add_edge(before, after)
    try:
        return [groups[index] for index in nx.lexicographical_topological_sort(order)]
    except nx.NetworkXUnfeasible:
        return groups
