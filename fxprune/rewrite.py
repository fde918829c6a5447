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


def mutates(node: fx.Node) -> bool:
    """``node`` may change a tensor in place (``x.mul_(g)``, ``torch.relu_``,
    ``inplace=True``) or has another side effect: not dead even when nothing reads its
    result. torch.fx deems every method call pure, so in-place ones are recognised by name."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    in_place = node.op in ("call_function", "call_method") and (
        name.endswith("_") and not name.endswith("__") or node.kwargs.get("inplace") is True)
    return in_place or node.is_impure()


def finalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove dead nodes (never ones that mutate) and modules, check and recompile."""
    gm.graph.eliminate_dead_code(is_impure_node=mutates)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


def free_child_name(parent: nn.Module, stem: str) -> str:
    """``stem``, or ``stem_1``, ``stem_2``, ... : the first name ``parent`` has no attribute of."""
    name, index = stem, 0
    while hasattr(parent, name):
        index += 1
        name = f"{stem}_{index}"
    return name


def install_module(gm: fx.GraphModule, owner: str, module: nn.Module, stem: str,
                   consumed: set[fx.Node]) -> str:
    """Register ``module``, which takes over the tensors that the ``get_attr`` nodes
    ``consumed`` read from submodule ``owner``, and return its path.

    When nothing else in the graph reads ``owner`` itself (no call of it, no other attribute),
    ``module`` takes its place: directly when ``owner`` has no children, else inside a plain
    container that keeps the children under their old paths, so the nodes calling them stay
    valid. The owner's own tensors then exist once, in ``module``. Otherwise ``module`` gets a
    fresh name under ``owner``'s parent."""
    parent_path, _, leaf = owner.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    other_uses = [node for node in gm.graph.nodes if node not in consumed and (
        node.op == "call_module" and node.target == owner or
        node.op == "get_attr" and node.target.rpartition(".")[0] == owner)]
    if not owner or other_uses:
        name = free_child_name(parent, f"{leaf or 'module'}_{stem}")
        parent.add_module(name, module)
        if not owner:  # tensors of the root itself: drop those nothing else reads
            unread = {node.target for node in consumed} - {
                node.target for node in other_uses if node.op == "get_attr"}
            for target in unread:
                if "." not in target:
                    delattr(gm, target)
        return f"{parent_path}.{name}" if parent_path else name
    children = list(gm.get_submodule(owner).named_children())
    if not children:
        setattr(parent, leaf, module)
        return owner
    container = nn.Module()
    for child_name, child in children:
        container.add_module(child_name, child)
    name = free_child_name(container, stem)
    container.add_module(name, module)
    setattr(parent, leaf, container)
    return f"{owner}.{name}"


def fetch_attr(gm: fx.GraphModule, target: str):
    """The tensor (or other attribute) a ``get_attr`` node with ``target`` reads."""
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def as_parameter(gm: fx.GraphModule, node: fx.Node | None) -> nn.Parameter | None:
    """The tensor a ``get_attr`` node reads, as a parameter of a new module: the same
    ``Parameter`` object when it is one (so it stays shared and trainable), else the buffer
    wrapped without gradient — a fixed filter (a blur) or a folded constant stays fixed."""
    if node is None:
        return None
    value = fetch_attr(gm, node.target)
    return value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)


def modules_for_functions(gm: fx.GraphModule, replacement) -> bool:
    """Replace every node for which ``replacement(gm, node)`` gives ``(module, stem, reads,
    data)`` by a call of that module (``module_for_function``); finalize when any was
    replaced, and say whether one was. The loop of the passes that make modules of
    functional calls (batch norm, conv, linear)."""
    modified = False
    for node in list(gm.graph.nodes):
        found = replacement(gm, node)
        if found is not None:
            module_for_function(gm, node, *found)
            modified = True
    if modified:
        finalize(gm)
    return modified


def module_for_function(gm: fx.GraphModule, node: fx.Node, module: nn.Module, stem: str,
                        reads: set[fx.Node], data: fx.Node) -> fx.Node:
    """Replace the functional call ``node`` on ``data`` by a call of ``module``, which takes
    over the tensors that the ``get_attr`` nodes ``reads`` fetched for it. Reads that only
    ``node`` used are erased; the module's path is chosen by ``install_module``."""
    owners = {read.target.rpartition(".")[0] for read in reads}
    owner = owners.pop() if len(owners) == 1 else ""
    exclusive = {read for read in reads if set(read.users) == {node}}
    path = install_module(gm, owner, module, stem, exclusive)
    with gm.graph.inserting_before(node):
        module_node = gm.graph.call_module(path, (data,))
    module_node.meta = dict(node.meta)
    node.replace_all_uses_with(module_node)
    gm.graph.erase_node(node)
    for read in exclusive:
        gm.graph.erase_node(read)
    return module_node
