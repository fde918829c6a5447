"""FoldMaskedConvs: each masked conv becomes the plain conv ``(W * U) ⊙ M``; nothing else
changes (BN and adapters stay); float64 equivalence; no-op without masked convs; idempotence."""

from __future__ import annotations

import torch
from torch import nn

from fxprune.adapters import MaskedConv
from fxprune.graph import masked_nodes, named_modules
from fxprune.models import cifar_resnet
from fxprune.passes import FoldMaskedConvs, MaskWeights
from fxprune.tracing import example_input, trace
from tests.conftest import SMALL_SIZE as SIZE
from tests.helpers import FP64_ATOL, count_modules


def _masked():
    gm = trace(cifar_resnet(20).double().eval(), SIZE)
    gm = MaskWeights(0.7)(gm).graph_module
    for node in masked_nodes(gm):  # a trained adapter U, far from the identity
        adapter = named_modules(gm)[node.target].adapter
        with torch.no_grad():
            adapter.add_(0.3 * torch.randn_like(adapter))
    return gm


def test_masked_convs_become_plain_convs_with_the_same_function():
    torch.manual_seed(0)
    gm = _masked()
    x = example_input(SIZE, batch=2, seed=1, dtype=torch.float64)
    expected, norms = gm(x), count_modules(gm, nn.BatchNorm2d)
    masks = {node.target: named_modules(gm)[node.target].mask.clone()
             for node in masked_nodes(gm)}

    result = FoldMaskedConvs()(gm)

    assert result.modified and not masked_nodes(gm)
    assert count_modules(gm, MaskedConv) == 0 and count_modules(gm, nn.BatchNorm2d) == norms
    modules = named_modules(gm)
    for target, mask in masks.items():  # the mask's zeros survive the fold
        assert type(modules[target]) is nn.Conv2d
        assert torch.all(modules[target].weight[mask == 0] == 0)
    torch.testing.assert_close(gm(x), expected, rtol=0, atol=FP64_ATOL)


def test_does_not_fire_without_masked_convs_and_is_idempotent():
    torch.manual_seed(0)
    plain = trace(cifar_resnet(20).double().eval(), SIZE)
    code = plain.code
    assert not FoldMaskedConvs()(plain).modified and plain.code == code
    gm = _masked()
    assert FoldMaskedConvs()(gm).modified
    code = gm.code
    assert not FoldMaskedConvs()(gm).modified and gm.code == code
