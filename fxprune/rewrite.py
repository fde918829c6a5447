"""Mutation helpers shared by the passes (the analyses never import this module)."""

from __future__ import annotations

from torch import fx, nn


def replace_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    """Point ``node``'s module path at a new module (the old object is left untouched)."""
    parent_path, _, attribute = node.target.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    setattr(parent, attribute, module)


def unique_module_name(gm: fx.GraphModule, stem: str) -> str:
    existing = {name for name, _ in gm.named_modules()}
    index = 0
    while f"{stem}_{index}" in existing:
        index += 1
    return f"{stem}_{index}"


def finalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove dead nodes and modules, check and recompile."""
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm
