"""PruneFilters: prune the filters of prunable feature maps (L1 norm), through adapters that
recovery can train and ``folding`` folds into a really smaller network.

For a map ``producer -> [BN] -> act -> [pool] -> consumer`` with C channels, keeping the set K
of N filters with the largest L1 norm (``sum |W[k]|`` over the producer's filter ``k``; ties
to the lower index; kept channels stay in order) and the selection matrix S (N x C,
``S[i, K[i]] = 1``), the pass builds the paper's Fig. 2:

    producer -> A_out (C -> N, = S, bias 0) -> BN(N) (= BN[K]) -> act -> [pool]
             -> A_in (N -> C, = S^T) -> consumer

which computes exactly what the L1-pruned network computes (the pruned channels are zeros at
the consumer). Recovery may train A_out, BN(N) and A_in; ``folding`` then folds A_out and
BN(N) into the producer (N filters) and A_in into the consumer (N input channels), so
``PruneFilters`` followed by ``folding`` with no training in between *is* L1 pruning.
The three nodes carry ``fxprune.meta.prune_group`` = the producer's name.

Does not fire for a producer already pruned (idempotent). Raises ``PreconditionError``,
before changing anything, for a producer that heads no prunable map (``prunable_maps``), a
kept count outside 1..C, or a BN module called at several nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn

from fxprune.adapters import Adapter, AdapterSite
from fxprune.analysis.channels import PrunableMap, prunable_maps
from fxprune.errors import PreconditionError
from fxprune.graph import callers, module_of, named_modules
from fxprune.meta import prune_group, set_adapter_site, set_prune_group
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import replace_module, unique_module_name
from fxprune.tracing import refresh_shapes


def l1_kept(convs: Sequence[nn.Conv2d], keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` filters with the largest L1 norm, summed over
    ``convs`` when several write the same channels (ties to the lower index)."""
    norms = sum(conv.weight.detach().abs().flatten(1).sum(1).double().cpu() for conv in convs)
    order = sorted(range(len(norms)), key=lambda index: (-float(norms[index]), index))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


def kept_count(channels: int, ratio: float) -> int:
    """Channels kept when a fraction ``ratio`` of ``channels`` is pruned: at least one."""
    return max(1, round(channels * (1.0 - ratio)))


def keep_counts(maps: list[PrunableMap], ratio: float) -> dict[str, int]:
    """Filters kept per map when a fraction ``ratio`` of every map's channels is pruned."""
    if not 0.0 <= ratio < 1.0:
        raise PreconditionError(f"filter pruning ratio must be in [0, 1), not {ratio}")
    return {m.producer: kept_count(m.channels, ratio) for m in maps}


class ChannelPruning(PassBase):
    """What every channel-pruning pass does around its own rewrite: skip the maps a previous
    run pruned (their nodes carry a ``prune_group``), check every requested map before
    changing anything, then prune and refresh the graph's shapes. Subclasses give ``maps``
    (name -> map), ``check`` (raises ``PreconditionError``) and ``prune``."""

    def __init__(self, keep: Mapping[str, int]):
        super().__init__()
        self.keep = dict(keep)

    def maps(self, gm: fx.GraphModule) -> dict:
        raise NotImplementedError

    def check(self, gm: fx.GraphModule, name: str, found, keep: int) -> None:
        raise NotImplementedError

    def prune(self, gm: fx.GraphModule, found, keep: int) -> None:
        raise NotImplementedError

    def requires(self, gm: fx.GraphModule) -> None:
        """Every map still to prune exists and can keep the requested count."""
        maps = self.maps(gm)
        for name in self._todo(gm):
            self.check(gm, name, maps.get(name), self.keep[name])

    def call(self, gm: fx.GraphModule) -> PassResult:
        maps = self.maps(gm)
        todo = self._todo(gm)
        for name in todo:
            self.prune(gm, maps[name], self.keep[name])
        if todo:
            gm.graph.lint()
            gm.recompile()
            refresh_shapes(gm)
        return PassResult(gm, bool(todo))

    def _todo(self, gm: fx.GraphModule) -> list[str]:
        pruned = {prune_group(node) for node in gm.graph.nodes} - {None}
        return [name for name in self.keep if name not in pruned]


class PruneFilters(ChannelPruning):
    def maps(self, gm: fx.GraphModule) -> dict[str, PrunableMap]:
        return {m.producer: m for m in prunable_maps(gm)}

    def check(self, gm: fx.GraphModule, name: str, found: PrunableMap | None,
              keep: int) -> None:
        if found is None:
            raise PreconditionError(
                f"cannot prune the filters of '{name}': it does not head a prunable map "
                "(conv -> [BN] -> activation -> [pool] -> conv, each used once); prunable: "
                + (", ".join(self.maps(gm)) or "none"))
        if not 1 <= keep <= found.channels:
            raise PreconditionError(f"cannot keep {keep} of the {found.channels} filters of "
                                    f"'{name}'")
        if found.batchnorm and len(callers(gm, _target(gm, found.batchnorm))) > 1:
            raise PreconditionError(f"BN '{found.batchnorm}' after '{name}' is called at "
                                    "several nodes; pruning it would change the others")

    def prune(self, gm: fx.GraphModule, found: PrunableMap, keep: int) -> None:
        nodes = {node.name: node for node in gm.graph.nodes}
        kept = l1_kept([module_of(nodes[found.producer], named_modules(gm))], keep)
        shrink_output(gm, nodes[found.producer], kept, found.channels, found.producer)
        grow_input(gm, nodes[found.consumer], kept, found.channels, found.producer)
        if found.batchnorm is not None:
            select_batchnorm(gm, nodes[found.batchnorm], kept, found.producer)


def _target(gm: fx.GraphModule, name: str) -> str:
    return next(node.target for node in gm.graph.nodes if node.name == name)


def _selection(kept: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    """S (len(kept) x channels): ``S[i, kept[i]] = 1``."""
    selection = torch.zeros(len(kept), channels, dtype=like.dtype, device=like.device)
    selection[torch.arange(len(kept)), kept] = 1.0
    return selection


def shrink_output(gm: fx.GraphModule, producer: fx.Node, kept: torch.Tensor, channels: int,
                  group: str) -> fx.Node:
    """Put ``A_out = S`` (channels -> kept, with a bias) between conv ``producer`` and all its
    users."""
    weight = module_of(producer, named_modules(gm)).weight
    name = _add_adapter(gm, channels, len(kept), _selection(kept, channels, weight), bias=True)
    with gm.graph.inserting_after(producer):
        node = gm.graph.call_module(name, (producer,))
    producer.replace_all_uses_with(node, delete_user_cb=lambda user: user is not node)
    set_adapter_site(node, AdapterSite(producer.name, "output"))
    set_prune_group(node, group)
    return node


def grow_input(gm: fx.GraphModule, consumer: fx.Node, kept: torch.Tensor, channels: int,
               group: str) -> fx.Node:
    """Put ``A_in = S^T`` (kept -> channels, no bias: it may sit before zero padding) right
    before conv ``consumer``."""
    weight = module_of(consumer, named_modules(gm)).weight
    name = _add_adapter(gm, len(kept), channels, _selection(kept, channels, weight).T,
                        bias=False)
    source = consumer.args[0]
    with gm.graph.inserting_before(consumer):
        node = gm.graph.call_module(name, (source,))
    consumer.replace_input_with(source, node)
    set_adapter_site(node, AdapterSite(consumer.name, "input"))
    set_prune_group(node, group)
    return node


def select_batchnorm(gm: fx.GraphModule, node: fx.Node, kept: torch.Tensor, group: str) -> None:
    """Replace the BN that ``node`` calls by one over the ``kept`` channels."""
    replace_module(gm, node, _selected_batchnorm(module_of(node, named_modules(gm)), kept))
    set_prune_group(node, group)


def _add_adapter(gm, channels: int, out_channels: int, weight: torch.Tensor, bias: bool) -> str:
    name = unique_module_name(gm, "fxprune_prune")
    adapter = Adapter(channels, bias=bias, out_channels=out_channels).to(weight)
    with torch.no_grad():
        adapter.weight.copy_(weight.reshape(out_channels, channels, 1, 1))
    gm.add_submodule(name, adapter)
    return name


def _selected_batchnorm(bn: nn.BatchNorm2d, kept: torch.Tensor) -> nn.BatchNorm2d:
    """A new BN over the ``kept`` channels with their statistics and affine parameters."""
    reference = bn.running_mean if bn.running_mean is not None else bn.weight
    kept = kept.to(reference.device if reference is not None else "cpu")
    new = nn.BatchNorm2d(len(kept), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats,
                         device=kept.device, dtype=reference.dtype
                         if reference is not None else None)
    with torch.no_grad():
        for attribute in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(bn, attribute)
            if value is not None:
                getattr(new, attribute).copy_(value[kept])
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new
