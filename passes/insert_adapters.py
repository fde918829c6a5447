"""InsertAdapters: put identity-initialised 1x1 adapter convs at given sites.

A site names a conv node and a side:

* ``"input"``: ``conv(x)`` becomes ``conv(A(x))`` for that conv only (other consumers of ``x``
  keep reading ``x``). ``A`` has no bias, so folding it into the conv stays exact under zero
  padding.
* ``"output"``: every consumer of ``conv(x)`` reads ``A(conv(x))`` instead — the spot between a
  conv and its BN, or after a downsample conv. ``A`` has a bias (it folds exactly into the conv).

Each adapter starts as the identity, so the pass does not change the network's function. The
adapter node remembers its site (``fxprune.meta.adapter_site``).
Does not fire for a site that already has its adapter (idempotent). Raises
``PreconditionError``, before changing anything, for a missing node, a node that is not a conv
(or is an adapter), a grouped conv (a dense 1x1 cannot fold into it) or a subclass of
``nn.Conv2d``. A conv whose module is called at several nodes is accepted, but an adapter
there folds only where the graph allows it (``CheckFolded`` names the ones left).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx

from fxprune.adapters import Adapter, AdapterSite
from fxprune.errors import PreconditionError
from fxprune.graph import conv_of, foldable_conv, named_modules
from fxprune.meta import (adapter_site, has_tensor_meta, set_adapter_site, set_tensor_meta,
                          tensor_meta)
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import unique_module_name


class InsertAdapters(PassBase):
    def __init__(self, sites: Iterable[AdapterSite]):
        super().__init__()
        self.sites = list(dict.fromkeys(sites))

    def requires(self, gm: fx.GraphModule) -> None:
        """Every site names an ungrouped plain ``nn.Conv2d`` node."""
        modules = named_modules(gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        for site in self.sites:
            conv_node = nodes.get(site.conv)
            if conv_node is None:
                raise PreconditionError(f"adapter site: no node named '{site.conv}'")
            conv = conv_of(conv_node, modules)
            if conv is None or isinstance(conv, Adapter):
                raise PreconditionError(f"adapter site '{site.conv}' is not a conv node")
            if conv.groups != 1:
                raise PreconditionError(
                    f"no adapter at the {site.side} of grouped conv '{site.conv}' "
                    f"(groups={conv.groups}): a dense 1x1 conv cannot be folded into it")
            if foldable_conv(conv_node, modules) is None:
                raise PreconditionError(
                    f"no adapter at the {site.side} of conv '{site.conv}': it is a "
                    f"{type(conv).__name__}, whose own forward a fold would lose")

    def call(self, gm: fx.GraphModule) -> PassResult:
        modules = named_modules(gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        placed = {site for node in gm.graph.nodes if (site := adapter_site(node)) is not None}
        new_sites = [site for site in self.sites if site not in placed]
        for site in new_sites:
            self._insert(gm, nodes[site.conv], conv_of(nodes[site.conv], modules), site)
        if new_sites:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, bool(new_sites))

    @staticmethod
    def _insert(gm: fx.GraphModule, conv_node: fx.Node, conv, site: AdapterSite) -> None:
        channels = conv.in_channels if site.side == "input" else conv.out_channels
        name = unique_module_name(gm, "fxprune_adapter")
        gm.add_submodule(name, Adapter(channels, bias=site.side == "output").to(
            device=conv.weight.device, dtype=conv.weight.dtype))
        source = conv_node.args[0]
        if site.side == "input":
            with gm.graph.inserting_before(conv_node):
                adapter_node = gm.graph.call_module(name, (source,))
            conv_node.replace_input_with(source, adapter_node)
        else:
            with gm.graph.inserting_after(conv_node):
                adapter_node = gm.graph.call_module(name, (conv_node,))
            conv_node.replace_all_uses_with(adapter_node,
                                            delete_user_cb=lambda user: user is not adapter_node)
        # the adapter's output has the shape of the tensor it maps
        shape_from = source if site.side == "input" else conv_node
        if has_tensor_meta(shape_from):
            set_tensor_meta(adapter_node, tensor_meta(shape_from))
        set_adapter_site(adapter_node, site)
