"""PruneCoupledMaps: prune the channels of a residual stream — the feature maps between
blocks, shortcut included (the paper's Fig. 4c/d) — through adapters that recovery trains
and ``fxprune.passes.folding`` folds into a really narrower stream.

For a ``CoupledMap`` with C channels, producers ``P_1..P_m`` (every conv writing into the
stream: the stage's first conv or downsample conv, each block's last conv) and consumers
``Q_1..Q_n`` (every conv reading it: each block's first conv, the next stage's first conv and
downsample conv), keeping the set K of N channels with the largest L1 norm summed over the
producers' filters (``sum_p sum |W_p[k]|``; ties to the lower index) and the selection S
(N x C, ``S[i, K[i]] = 1``), the pass rewrites

    P_p -> A_out,p (C -> N, = S, bias 0) -> BN(N) (= BN[K]) -> ... add ... -> A_in,q (N -> C,
    = S^T) -> Q_q

for every producer p and consumer q; every BN of the stream keeps its K channels and the adds
and activations run on N channels. Untrained, this computes exactly the L1-pruned network:
the pruned channels are zeros at every consumer. Recovery trains the group's adapters and
BN together (layer-wise: so that every consumer's output matches the teacher's; stage-wise
and joint: a stage output on the stream is compared with the teacher's K channels); folding
gives producers with N filters and consumers with N input channels. Adapters and BNs carry
``fxprune.meta.prune_group`` = the map's name (its first producer), the stream's
nodes ``fxprune.meta.kept_channels`` = K.

Does not fire for a map already pruned (idempotent). Raises ``PreconditionError``, before
changing anything, for a name that heads no ``coupled_maps`` entry, a kept count outside
1..C, or a BN module called at several nodes.
"""

from __future__ import annotations

from torch import fx

from fxprune.analysis.channels import CoupledMap, coupled_maps
from fxprune.errors import PreconditionError
from fxprune.graph import callers, module_of, named_modules
from fxprune.meta import set_kept_channels
from fxprune.passes.prune_filters import (ChannelPruning, grow_input, l1_kept,
                                          select_batchnorm, shrink_output)


class PruneCoupledMaps(ChannelPruning):
    def maps(self, gm: fx.GraphModule) -> dict[str, CoupledMap]:
        return {m.name: m for m in coupled_maps(gm)}

    def check(self, gm: fx.GraphModule, name: str, found: CoupledMap | None,
              keep: int) -> None:
        if found is None:
            raise PreconditionError(
                f"cannot prune the residual stream after '{name}': it heads no coupled map "
                "(convs -> per-channel ops and adds -> convs, with no other op reading the "
                "channels); coupled maps: " + (", ".join(self.maps(gm)) or "none"))
        if not 1 <= keep <= found.channels:
            raise PreconditionError(f"cannot keep {keep} of the {found.channels} channels "
                                    f"after '{name}'")
        targets = {node.name: node.target for node in gm.graph.nodes}
        shared = [bn for bn in found.batchnorms if len(callers(gm, targets[bn])) > 1]
        if shared:
            raise PreconditionError(f"BN '{shared[0]}' in the stream after '{name}' is called "
                                    "at several nodes; pruning it would change the others")

    def prune(self, gm: fx.GraphModule, found: CoupledMap, keep: int) -> None:
        nodes = {node.name: node for node in gm.graph.nodes}
        modules = named_modules(gm)
        kept = l1_kept([module_of(nodes[name], modules) for name in found.producers], keep)
        for name in found.producers:
            shrink_output(gm, nodes[name], kept, found.channels, found.name)
        for name in found.consumers:
            grow_input(gm, nodes[name], kept, found.channels, found.name)
        for name in found.batchnorms:
            select_batchnorm(gm, nodes[name], kept, found.name)
        for name in found.nodes:
            set_kept_channels(nodes[name], kept.tolist())
