"""Folding is exact on every supported architecture: drop the paper's blocks, insert adapters
at the derived sites, move them and the BN statistics away from the identity, fold, compare."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxprune.adapters import Adapter
from fxprune.passes import folding
from tests.architectures import ARCHITECTURES, compressed_with_adapters, input_size
from tests.helpers import count_modules, max_abs_diff, max_rel_diff, randomize_adapters, slow_case


FAST = {"functional"}  # every other architecture takes over a second


@pytest.mark.parametrize("name", [name if name in FAST else slow_case(name)
                                  for name in ARCHITECTURES])
def test_fold_is_exact(name):
    size = input_size(name)
    model = ARCHITECTURES[name]()
    for dtype, placement, tolerance, metric in [
            (torch.float64, "paper", 1e-9, max_abs_diff),
            (torch.float64, "cvpr", 1e-9, max_abs_diff),
            (torch.float64, "inner", 1e-9, max_abs_diff),
            (torch.float32, "cvpr", 1e-4, max_rel_diff)]:
        gm, x, ids, sites = compressed_with_adapters(model, size, dtype, placement)
        assert ids and sites, "the paper's rule drops blocks and the drop needs adapters"
        identity_output = gm(x).detach()
        assert randomize_adapters(gm, scale=0.3) == len(sites)
        with torch.no_grad():
            unfolded = gm(x)
            assert max_abs_diff(unfolded, identity_output) > 1e-6  # the adapters do something
            assert folding()(gm).modified
            folded = gm(x)
        assert count_modules(gm, (Adapter, nn.BatchNorm2d)) == 0
        error = metric(unfolded, folded)
        assert error <= tolerance, f"{name} {dtype} {placement}: error {error:.3g}"
