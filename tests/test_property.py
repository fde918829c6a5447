"""Property test over seeded random small CNNs (``tests.random_cnn``): analyse, drop a random
droppable block, insert adapters at the derived sites plus random extra sites, move BN
statistics and adapters away from the identity, fold, and check in float64 that

* the structure is sane (unique "s.b" ids, every residual join belongs to a block, the block
  kinds match what the generator built) and later drops keep the original block ids;
* the drop computes the original network with the dropped block's branch zeroed (residual) or
  the block bypassed (shortcut-free);
* folding is exact (max abs difference <= 1e-9), folds every adapter at a drop site and every
  other adapter unless its neighbourhood makes it unfoldable, and removes every BN.
"""

from __future__ import annotations

import copy
import functools
import random
import re
from dataclasses import dataclass

import pytest
import torch
from torch import fx, nn

from fxprune.adapters import Adapter, AdapterSite
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.graph import conv_of, is_add, module_of, named_modules, owns_module
from fxprune.meta import adapter_site, dropped_blocks
from fxprune.passes import DropBlocks, InsertAdapters, folding

from fxprune.tracing import trace
from tests.helpers import (FP64_ATOL, calibrate_and_randomize, count_modules, max_abs_diff,
                           randomize_adapters, slow_case)
from tests.random_cnn import INPUT_SIZE, random_cnn_with_specs

SEEDS = range(200)
FAST_SEEDS = 20  # cases in the quick loop (-m "not slow"); the others and the fold rate are slow


@dataclass(frozen=True)
class FoldCounts:
    """How many adapters one random case inserted and folded, all and at drop sites."""

    adapters: int
    folded: int
    site_adapters: int
    site_folded: int


def _input(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(10_000 + seed)
    return torch.randn((4, *INPUT_SIZE), generator=generator, dtype=torch.float64)


def _run(gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gm(x)


def _reference_after_drop(gm: fx.GraphModule, block) -> fx.GraphModule:
    """A copy of the undropped graph computing what the drop should: the residual branch's
    operand of the join replaced by zeros, or the shortcut-free unit bypassed."""
    ref = copy.deepcopy(gm)
    nodes = {node.name: node for node in ref.graph.nodes}
    if block.join is None:
        nodes[block.exit].replace_all_uses_with(nodes[block.entry])
    else:
        join = nodes[block.join]
        branch = next(arg for arg in join.all_input_nodes if arg.name != block.shortcut_output)
        with ref.graph.inserting_before(join):
            zeros = ref.graph.call_function(torch.zeros_like, (branch,))
        join.replace_input_with(branch, zeros)
    ref.graph.eliminate_dead_code()
    ref.recompile()
    return ref


def _unfoldable(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node``'s adapter has no neighbour it could fold into (the FoldAdapters rules)."""
    modules = named_modules(gm)
    adapter = module_of(node, modules)
    producer = node.args[0]
    conv = conv_of(producer, modules)
    if conv is not None and conv.groups == 1 and len(producer.users) == 1 and \
            owns_module(gm, producer):
        return False
    users = list(node.users)
    conv = conv_of(users[0], modules) if len(users) == 1 else None
    return not (conv is not None and conv.groups == 1 and users[0].args[0] is node and
                owns_module(gm, users[0]) and
                (adapter.bias is None or all(pad == 0 for pad in conv.padding)))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


@functools.cache
def checked_case(seed: int) -> FoldCounts:
    """Runs and checks the random case of ``seed`` (asserting as it goes); its fold counts.
    Cached: the fold rate test reuses the cases the parametrised test already ran."""
    rng = random.Random(seed)
    model, specs = random_cnn_with_specs(seed)
    state = _state(model)
    x = _input(seed)
    gm = trace(model, INPUT_SIZE)

    # --- structure ---------------------------------------------------------------------
    structure = find_structure(gm)
    ids = [block.id for block in structure.blocks]
    assert len(ids) == len(set(ids)), ids
    assert all(re.fullmatch(r"[1-9][0-9]*\.[1-9][0-9]*", block_id) for block_id in ids), ids
    for stage in structure.stages:
        assert stage.blocks and all(block.stage == stage.id for block in stage.blocks)
    joins = {block.join for block in structure.blocks if block.join is not None}
    assert joins == {node.name for node in gm.graph.nodes if is_add(node)}
    kinds = [block.kind for block in structure.blocks]
    residual = sum(spec.has_shortcut and spec.kind != "inverted" for spec in specs)
    inverted = sum(spec.kind == "inverted" for spec in specs)
    if residual + inverted:
        assert (kinds.count("residual"), kinds.count("inverted_residual")) == (residual, inverted)
    else:  # a plain network: every conv unit, the stem's included, is a block
        assert kinds == ["conv"] * (len(specs) + 1)

    # --- drop ----------------------------------------------------------------------------
    droppable = [block for block in structure.blocks if block.droppable]
    dropped = [rng.choice(droppable).id] if droppable else []
    placement = rng.choice(("paper", "cvpr"))
    sites = drop_sites(gm, structure, dropped, placement=placement)
    if dropped:
        block = structure.block(dropped[0])
        expected = _run(_reference_after_drop(gm, block), x)
        n_nodes = len(gm.graph.nodes)
        result = DropBlocks(dropped)(gm)
        assert result.modified and result.graph_module is gm
        gm.graph.lint()
        remaining = {node.name for node in gm.graph.nodes}
        assert not remaining & set(block.convs)
        assert len(remaining) < n_nodes
        assert max_abs_diff(expected, _run(gm, x)) == 0.0
        ids_after_drop = [b.id for b in find_structure(gm).blocks]
        assert not DropBlocks(dropped)(gm).modified

    # --- adapters ------------------------------------------------------------------------
    convs = [node.name for node in gm.graph.nodes
             if (conv := conv_of(node, named_modules(gm))) is not None and conv.groups == 1]
    extra = [AdapterSite(name, rng.choice(("input", "output")))
             for name in rng.sample(convs, k=min(len(convs), rng.randint(1, 3)))]
    assert InsertAdapters(sites + extra)(gm).modified
    gm.graph.lint()
    adapter_nodes = [node for node in gm.graph.nodes
                     if isinstance(module_of(node, named_modules(gm)), Adapter)]
    assert len(adapter_nodes) == count_modules(gm, Adapter) >= 1
    site_nodes = {node.name for node in adapter_nodes if adapter_site(node) in sites}
    assert len(site_nodes) == len(sites)

    calibrate_and_randomize(gm, x, seed=seed)
    assert randomize_adapters(gm, seed=seed) == len(adapter_nodes)
    before = _run(gm, x)

    # --- fold ----------------------------------------------------------------------------
    result = folding(strict=False)(gm)
    assert result.modified
    gm.graph.lint()
    after = _run(gm, x)
    assert max_abs_diff(before, after) <= FP64_ATOL
    left = [node for node in gm.graph.nodes
            if isinstance(module_of(node, named_modules(gm)), Adapter)]
    assert not {node.name for node in left} & site_nodes
    assert all(_unfoldable(gm, node) for node in left), [node.name for node in left]
    for node in gm.graph.nodes:  # a BN stays only after a conv it cannot fold into
        if isinstance(module_of(node, named_modules(gm)), nn.BatchNorm2d):
            assert not owns_module(gm, node.args[0]) or len(node.args[0].users) > 1
    assert not folding(strict=False)(gm).modified
    assert torch.equal(_run(gm, x), after)
    assert model.state_dict().keys() == state.keys()  # no pass or helper touched the model
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())

    if dropped:  # last, so that a failure here does not hide the folding checks above
        # the dropped graph is analysed anew (numbered by position); later drops keep the
        # original ids
        assert len(set(ids_after_drop)) == len(ids_after_drop)
        assert dropped_blocks(gm) == dropped
    return FoldCounts(adapters=len(adapter_nodes), folded=len(adapter_nodes) - len(left),
                      site_adapters=len(site_nodes),
                      site_folded=len(site_nodes - {node.name for node in left}))


@pytest.mark.parametrize("seed", [seed if seed < FAST_SEEDS else slow_case(seed)
                                  for seed in SEEDS])
def test_random_cnn_drop_insert_fold(seed: int) -> None:
    checked_case(seed)


@pytest.mark.slow
def test_fold_rate_over_all_cases() -> None:
    """At least 90 % of all adapters fold, and every adapter at a drop site does."""
    counts = [checked_case(seed) for seed in SEEDS]
    adapters, folded = sum(c.adapters for c in counts), sum(c.folded for c in counts)
    site_adapters = sum(c.site_adapters for c in counts)
    site_folded = sum(c.site_folded for c in counts)
    assert folded >= 0.9 * adapters, (folded, adapters)
    assert site_folded == site_adapters > 0, (site_folded, site_adapters)
