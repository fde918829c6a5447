"""``folding``: the passes that remove everything recovery added, composed.

Masked convs become plain convs (``FoldMaskedConvs``), then adapters fold into neighbouring
convs (``FoldAdapters``) and BN layers into their convs (``FoldBatchNorm``), repeated until
nothing changes: folding a BN can give an adapter its conv (``conv -> bn -> A``), and an
adapter between a conv and its BN folds first, so the BN then folds too.
"""

from __future__ import annotations

from fxprune.pass_manager import PassManager
from fxprune.passes.check_folded import CheckFolded
from fxprune.passes.fold_adapters import FoldAdapters
from fxprune.passes.fold_batchnorm import FoldBatchNorm
from fxprune.passes.fold_masked_convs import FoldMaskedConvs


def folding(batchnorm: bool = True, strict: bool = True) -> PassManager:
    """The pass manager that folds masked convs, adapters and (``batchnorm``) every BN into
    its conv; with ``strict`` an adapter left raises ``PreconditionError`` naming it.
    ``batchnorm=False`` leaves every BN layer (an adapter between a conv and its BN still
    folds into the conv)."""
    folds = [FoldMaskedConvs(), FoldAdapters()] + ([FoldBatchNorm()] if batchnorm else [])
    fixpoint = PassManager(folds, max_rounds=None)
    return PassManager([fixpoint, CheckFolded()] if strict else [fixpoint])
