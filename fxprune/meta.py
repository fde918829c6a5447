"""Every ``node.meta`` / ``gm.meta`` key fxprune reads or writes, behind typed accessors, so no
other module spells a key: a pass that records something and the analysis that reads it agree
by construction.

Node keys: torch.fx's ``tensor_meta`` and ``type`` (shape propagation), an adapter's site, the
prune group of what a filter pruning inserted or changed, the original channels a node of a
pruned residual stream still carries, the method that made a factorized conv. Module keys: the
modules the tracer kept as leaves on its own, the blocks dropped so far and which node carries
each dropped block's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

if TYPE_CHECKING:
    from fxprune.adapters import AdapterSite
    from fxprune.analysis.structure import Structure

_TENSOR_META = "tensor_meta"  # torch.fx ShapeProp's key
_VALUE_TYPE = "type"  # torch.fx ShapeProp's key
_ADAPTER_SITE = "fxprune.adapter_site"
_PRUNE_GROUP = "fxprune.prune_group"
_KEPT_CHANNELS = "fxprune.kept_channels"
_FACTORIZED = "fxprune.factorized"
_AUTO_LEAVES = "fxprune.auto_leaves"
_DROPPED_BLOCKS = "fxprune.dropped_blocks"
_STAND_INS = "fxprune.stand_ins"
_DROP_STRUCTURE = "fxprune.drop_structure"


def tensor_meta(node: fx.Node) -> Any | None:
    """The ``TensorMetadata`` shape propagation recorded (None for a non-tensor or unknown)."""
    return node.meta.get(_TENSOR_META)


def set_tensor_meta(node: fx.Node, value: Any) -> None:
    node.meta[_TENSOR_META] = value


def has_tensor_meta(node: fx.Node) -> bool:
    return _TENSOR_META in node.meta


def value_type(node: fx.Node) -> type | None:
    """The Python type of the node's value when shapes were propagated."""
    return node.meta.get(_VALUE_TYPE)


def set_value_type(node: fx.Node, value: type) -> None:
    node.meta[_VALUE_TYPE] = value


def adapter_site(node: fx.Node) -> AdapterSite | None:
    """Where the adapter called at ``node`` was asked for (None: not an inserted adapter)."""
    return node.meta.get(_ADAPTER_SITE)


def set_adapter_site(node: fx.Node, site: AdapterSite) -> None:
    node.meta[_ADAPTER_SITE] = site


def prune_group(node: fx.Node) -> str | None:
    """The name of the feature map whose pruning inserted or changed ``node``."""
    return node.meta.get(_PRUNE_GROUP)


def set_prune_group(node: fx.Node, group: str) -> None:
    node.meta[_PRUNE_GROUP] = group


def kept_channels(node: fx.Node) -> list[int] | None:
    """The original channels a node of a pruned residual stream still carries, so its value
    can be compared with the teacher's at those channels (None: not pruned)."""
    return node.meta.get(_KEPT_CHANNELS)


def set_kept_channels(node: fx.Node, channels: list[int]) -> None:
    node.meta[_KEPT_CHANNELS] = channels


def factorized_by(node: fx.Node) -> str | None:
    """The factorization method that made ``node`` the first conv of a pair."""
    return node.meta.get(_FACTORIZED)


def set_factorized_by(node: fx.Node, method: str) -> None:
    node.meta[_FACTORIZED] = method


def auto_leaves(gm: fx.GraphModule) -> dict[str, tuple[str, str]]:
    """The modules the tracer kept as leaves on its own: path -> (why it could not be traced,
    its class then)."""
    return gm.meta.get(_AUTO_LEAVES, {})


def set_auto_leaves(gm: fx.GraphModule, leaves: dict[str, tuple[str, str]]) -> None:
    gm.meta[_AUTO_LEAVES] = leaves


def dropped_blocks(gm: fx.GraphModule) -> list[str]:
    """Ids (in the numbering of the graph as first analysed) of the blocks dropped so far."""
    return list(gm.meta.get(_DROPPED_BLOCKS, ()))


def drop_structure(gm: fx.GraphModule) -> Structure | None:
    """The structure of the graph before its first drop, which later drops number by."""
    return gm.meta.get(_DROP_STRUCTURE)


def record_drop(gm: fx.GraphModule, structure: Structure, block_id: str,
                stand_ins: dict[str, str]) -> None:
    """Remember that block ``block_id`` of ``structure`` was dropped and which node now
    carries each removed block output (``stand_ins``: exit name -> node name)."""
    gm.meta.setdefault(_DROP_STRUCTURE, structure)
    gm.meta.setdefault(_DROPPED_BLOCKS, []).append(block_id)
    gm.meta.setdefault(_STAND_INS, {}).update(stand_ins)


def stand_in(gm: fx.GraphModule, name: str) -> str:
    """The node of ``gm`` that carries the value node ``name`` of the original graph carried
    (itself, unless ``name`` was the exit of a dropped block)."""
    stand_ins = gm.meta.get(_STAND_INS, {})
    while name in stand_ins:
        name = stand_ins[name]
    return name
