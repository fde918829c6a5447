"""Blocks inside a multi-path region (a CSP stage's split and concat): found along each path,
their stage output placed where every path passes again, dropped, recovered stage-wise and
folded exactly."""

from __future__ import annotations

import torch

import fxprune
from fxprune import Options, Recovery
from fxprune.adapters import Adapter
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.analysis.trunk import trunk
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, InsertAdapters, folding
from fxprune.recovery.fit import FitConfig
from fxprune.tracing import example_input, trace
from tests.helpers import (FP64_ATOL, calibrate_and_randomize, count_modules, max_abs_diff,
                           randomize_adapters)
from tests.zoo_modules import CSPNet

SIZE = (3, 16, 16)


def _traced(dtype=torch.float32):
    torch.manual_seed(0)
    model = CSPNet().eval().to(dtype)
    return model, trace(model, SIZE)


def test_blocks_inside_the_split_are_found():
    _, gm = _traced()
    structure = find_structure(gm)
    assert [[block.id for block in stage.blocks] for stage in structure.stages] == [
        ["1.1", "1.2", "1.3"], ["2.1", "2.2"]]
    assert all(block.droppable and block.shortcut == "identity" and block.in_shape[0] in (8, 16)
               for block in structure.blocks)
    on_trunk = {node.name for node in trunk(gm.graph)}
    for stage in structure.stages:
        assert stage.blocks[-1].exit not in on_trunk  # inside the region ...
        assert stage.output in on_trunk  # ... recovery cuts where the paths meet again
        assert gm.graph.find_nodes(op="call_function", target=torch.cat)[stage.id - 1].name \
            == stage.output


def test_rule_drop_inside_the_split_folds_exactly():
    _, gm = _traced(torch.float64)
    x = example_input(SIZE, batch=2, dtype=torch.float64, seed=1)
    calibrate_and_randomize(gm, x)
    structure = find_structure(gm)
    ids = fxprune.paper_rule(structure)
    assert ids == ["1.2", "2.2"]
    sites = drop_sites(gm, structure, ids, "cvpr")
    gm = PassManager([DropBlocks(ids), InsertAdapters(sites)])(gm).graph_module
    with torch.no_grad():
        assert randomize_adapters(gm, scale=0.3) == len(sites) > 0
        unfolded = gm(x)
        gm = folding()(gm).graph_module
        assert max_abs_diff(unfolded, gm(x)) <= FP64_ATOL
    assert count_modules(gm, Adapter) == 0


def test_stagewise_recovery_runs_between_the_joins():
    model, _ = _traced()
    quick = Recovery(fit=FitConfig(lr=1e-3, max_steps=3, patience=3))
    result = fxprune.compress(model, example_input(SIZE, batch=4, seed=0), SIZE,
                              Options(recovery=quick), progress=False)
    assert result.report.drop == ["1.2", "2.2"]
    assert result.report.adapters > 0 and count_modules(result.model, Adapter) == 0
