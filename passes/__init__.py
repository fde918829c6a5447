"""Graph rewriting passes: each takes a GraphModule and returns ``PassResult(gm, modified)``."""

from fxprune.passes.drop_blocks import DropBlocks
from fxprune.passes.factorize_convs import FactorizeConvs
from fxprune.passes.fold_adapters import FoldAdapters
from fxprune.passes.fold_batchnorm import FoldBatchNorm
from fxprune.adapters import AdapterSite
from fxprune.passes.insert_adapters import InsertAdapters
from fxprune.passes.mask_weights import MaskWeights
from fxprune.passes.prune_coupled import PruneCoupledMaps
from fxprune.passes.prune_filters import PruneFilters

__all__ = ["AdapterSite", "DropBlocks", "FactorizeConvs", "FoldAdapters", "FoldBatchNorm",
           "InsertAdapters", "MaskWeights", "PruneCoupledMaps", "PruneFilters"]
