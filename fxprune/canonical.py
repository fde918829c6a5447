"""fxprune's canonical graph: one normal form for every model zoo, between tracing and
analysis.

Zoos write the same network in different ways: a BN module or ``F.batch_norm`` on a layer's
own parameters, a conv module or ``F.conv2d`` on a standardised weight, shape asserts on every
feature map, identity and dropout modules between a conv and its norm, TF-'SAME' convs that
pad from the input's size. The canonical passes rewrite each into the one form the analysis
reads (conv modules, BN modules, activation modules or functions, adds), without changing
what the graph computes. ``fxprune.trace`` runs them; they are exported here so that users
who trace on their own can run them too.
"""

from __future__ import annotations

from torch import fx

from fxprune.pass_manager import PassManager
from fxprune.passes.batchnorm_modules import BatchNormModules
from fxprune.passes.conv_modules import ConvModules
from fxprune.passes.fold_constants import FoldConstants
from fxprune.passes.linear_modules import LinearModules
from fxprune.passes.remove_eval_noops import RemoveEvalNoOps
from fxprune.passes.remove_shape_checks import RemoveShapeChecks
from fxprune.passes.static_same_padding import StaticSamePadding


def canonical_passes() -> list:
    """The canonical passes in order: checks and no-ops first (they hide pairs from the
    others), constants before the functional ops that read them."""
    return [RemoveShapeChecks(), RemoveEvalNoOps(), FoldConstants(), BatchNormModules(),
            ConvModules(), LinearModules(), StaticSamePadding()]


def canonicalize(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` rewritten into canonical form (in place; shapes must have been propagated)."""
    return PassManager(canonical_passes(), max_rounds=2)(gm).graph_module
