"""A model's stages and blocks with their cost, as data (for ``inspect``, reports and tests)."""

from __future__ import annotations

from typing import Any

from torch import fx

from fxprune.analysis.channels import coupled_maps, prunable_maps
from fxprune.analysis.structure import Block, Structure, find_structure
from fxprune.graph import module_of, named_modules, parameter_dtype
from fxprune.macs import count_params, node_macs, total_macs
from fxprune.tracing import example_input


def block_params(gm: fx.GraphModule, block: Block) -> int:
    """Parameters of the modules the block calls and nothing outside it calls."""
    modules = named_modules(gm)
    inside = set(block.nodes)
    outside_targets = {node.target for node in gm.graph.nodes
                       if node.op == "call_module" and node.name not in inside}
    owned = {node.target: module_of(node, modules) for node in gm.graph.nodes
             if node.name in inside and node.op == "call_module"
             and node.target not in outside_targets}
    return sum(count_params(module) for module in owned.values())


def summarize(gm: fx.GraphModule, input_size: tuple[int, ...],
              structure: Structure | None = None) -> dict[str, Any]:
    """JSON-ready summary: total MACs (batch 1) and params; per stage, per block: id, kind,
    shortcut, droppable, MACs, params; the prunable feature maps (``--prune-filters``) and
    residual streams (``--prune-streams``) with their channels."""
    structure = structure or find_structure(gm)
    macs = node_macs(gm, [example_input(input_size, dtype=parameter_dtype(gm))])
    return {
        "input_size": list(input_size),
        "macs": total_macs(macs),
        "params": count_params(gm),
        "stem": list(structure.stem), "head": list(structure.head),
        "stages": [{
            "id": stage.id,
            "blocks": [{
                "id": block.id, "kind": block.kind, "shortcut": block.shortcut,
                "droppable": block.droppable, "macs": total_macs(macs, block.nodes),
                "params": block_params(gm, block),
                "in_shape": list(block.in_shape), "out_shape": list(block.out_shape),
            } for block in stage.blocks],
        } for stage in structure.stages],
        "prunable_maps": [{"producer": m.producer, "consumer": m.consumer,
                           "channels": m.channels} for m in prunable_maps(gm, structure)],
        "streams": [{"name": m.name, "channels": m.channels, "producers": list(m.producers),
                     "consumers": list(m.consumers)} for m in coupled_maps(gm)],
    }


def format_count(value: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def format_table(summary: dict[str, Any]) -> str:
    header = ("stage", "block", "kind", "shortcut", "droppable", "MACs", "params", "out shape")
    rows = [header]
    for stage in summary["stages"]:
        for block in stage["blocks"]:
            rows.append((str(stage["id"]), block["id"], block["kind"], block["shortcut"],
                         "yes" if block["droppable"] else "no", format_count(block["macs"]),
                         format_count(block["params"]), "x".join(map(str, block["out_shape"]))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    lines.append(f"total: {format_count(summary['macs'])} MACs, "
                 f"{format_count(summary['params'])} params, input "
                 f"{'x'.join(map(str, summary['input_size']))}")
    maps = ", ".join(f"{m['producer']} ({m['channels']})" for m in summary["prunable_maps"])
    streams = ", ".join(f"{m['name']} ({m['channels']}: {len(m['producers'])} convs in, "
                        f"{len(m['consumers'])} out)" for m in summary["streams"])
    lines.append(f"prunable maps (--prune-filters): {maps or 'none'}")
    lines.append(f"residual streams (--prune-streams): {streams or 'none'}")
    return "\n".join(lines)
