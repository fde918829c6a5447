"""The pass manager: ordering, fixpoint rounds, user passes and error context."""

from __future__ import annotations

import pytest
from torch import fx, nn

from fxprune.errors import PreconditionError
from fxprune.models import cifar_resnet
from fxprune.pass_manager import PassBase, PassManager, PassResult
from fxprune.passes import DropBlocks, FoldBatchNorm
from fxprune.tracing import trace


class CountReLUs(PassBase):
    """A user pass that only reads the graph."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.seen.append(sum("relu" in str(node.target) for node in gm.graph.nodes))
        return PassResult(gm, False)


def _gm():
    return trace(cifar_resnet(20).eval(), (3, 32, 32))


def test_runs_in_order_with_user_pass():
    counter = CountReLUs()
    result = PassManager([counter, DropBlocks(["1.2"]), counter])(_gm())
    assert result.modified
    assert counter.seen[0] - counter.seen[1] == 2  # the block's inner and trailing ReLU


def test_rounds_stop_at_fixpoint():
    counter = CountReLUs()
    result = PassManager([FoldBatchNorm(), counter], max_rounds=5)(_gm())
    assert result.modified
    assert len(counter.seen) == 2  # round 2 changed nothing, so no round 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.graph_module.modules())


def test_plain_function_pass_composes():
    def noop(gm):
        return PassResult(gm, False)

    assert not PassManager([noop])(_gm()).modified


def test_error_names_failing_pass_and_history():
    manager = PassManager([FoldBatchNorm(), DropBlocks(["9.9"])])
    with pytest.raises(PreconditionError, match=r"DropBlocks failed \(after: FoldBatchNorm\).*9\.9"):
        manager(_gm())


def test_wrong_return_type_is_reported():
    with pytest.raises(TypeError, match="PassResult"):
        PassManager([lambda gm: gm])(_gm())
