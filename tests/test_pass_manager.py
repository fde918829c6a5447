"""The pass manager: ordering, fixpoint rounds, user passes and error context."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from fxprune.errors import PreconditionError
from fxprune.models import cifar_resnet
from fxprune.meta import has_tensor_meta
from fxprune.pass_manager import PassBase, PassManager, PassResult, this_before_that
from fxprune.passes import DropBlocks, FactorizeConvs, FoldBatchNorm
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


# --- requires, shape metadata, ordering constraints -------------------------------------------


class Refuses(PassBase):
    """A pass whose ``requires`` refuses: ``call`` must not run."""

    def __init__(self):
        super().__init__()
        self.called = False

    def requires(self, gm: fx.GraphModule) -> None:
        raise PreconditionError("node 'x' is not allowed")

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.called = True
        return PassResult(gm, False)


class AddsShapelessNode(PassBase):
    """Adds a ReLU after the input without shape metadata."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        source = next(node for node in gm.graph.nodes if node.op == "placeholder")
        with gm.graph.inserting_after(source):
            relu = gm.graph.call_function(torch.relu, (source,))
        source.replace_all_uses_with(relu, delete_user_cb=lambda user: user is not relu)
        return PassResult(gm, True)


def test_requires_runs_before_call_through_the_manager():
    refuses = Refuses()
    with pytest.raises(PreconditionError, match=r"pass Refuses failed .*node 'x'"):
        PassManager([refuses])(_gm())
    assert not refuses.called


def test_a_pass_that_leaves_nodes_without_shapes_is_named():
    with pytest.raises(RuntimeError, match=r"pass AddsShapelessNode left node 'relu\w*' without "
                                           "shape metadata"):
        PassManager([AddsShapelessNode()])(_gm())


def test_factorize_convs_leaves_shapes_on_its_nodes():
    gm = PassManager([FactorizeConvs("dwpw")])(_gm()).graph_module
    assert all(has_tensor_meta(node) for node in gm.graph.nodes if node.op == "call_module")


def test_ordering_constraint_accepts_the_declared_order():
    constraints = [this_before_that(DropBlocks, FoldBatchNorm)]
    manager = PassManager([DropBlocks(["1.2"]), FoldBatchNorm()], constraints=constraints)
    assert manager(_gm()).modified


def test_ordering_constraint_violation_names_both_passes():
    constraints = [this_before_that(DropBlocks, FoldBatchNorm)]
    with pytest.raises(ValueError, match="DropBlocks must run before FoldBatchNorm"):
        PassManager([FoldBatchNorm(), CountReLUs(), DropBlocks(["1.2"])], constraints=constraints)
