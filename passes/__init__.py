"""Graph rewriting passes: each takes a GraphModule and returns ``PassResult(gm, modified)``."""

from fxprune.adapters import AdapterSite
from fxprune.passes.batchnorm_modules import BatchNormModules
from fxprune.passes.check_folded import CheckFolded
from fxprune.passes.conv_modules import ConvModules
from fxprune.passes.drop_blocks import DropBlocks
from fxprune.passes.factorize_convs import FactorizeConvs
from fxprune.passes.fold_adapters import FoldAdapters
from fxprune.passes.fold_batchnorm import FoldBatchNorm
from fxprune.passes.fold_constants import FoldConstants
from fxprune.passes.fold_masked_convs import FoldMaskedConvs
from fxprune.passes.folding import folding
from fxprune.passes.insert_adapters import InsertAdapters
from fxprune.passes.linear_modules import LinearModules
from fxprune.passes.mask_weights import MaskWeights
from fxprune.passes.prune_coupled import PruneCoupledMaps
from fxprune.passes.prune_filters import PruneFilters
from fxprune.passes.remove_eval_noops import RemoveEvalNoOps
from fxprune.passes.remove_shape_checks import RemoveShapeChecks
from fxprune.passes.static_same_padding import StaticSamePadding

__all__ = ["AdapterSite", "BatchNormModules", "CheckFolded", "ConvModules", "DropBlocks",
           "FactorizeConvs", "FoldAdapters", "FoldBatchNorm", "FoldConstants", "FoldMaskedConvs",
           "InsertAdapters", "LinearModules", "MaskWeights", "PruneCoupledMaps", "PruneFilters",
           "RemoveEvalNoOps", "RemoveShapeChecks", "StaticSamePadding", "folding"]
