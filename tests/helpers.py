"""Shared test utilities: realistic random BN statistics, random adapters, a student with
adapters, output comparison. (The data folder: the ``shared_path`` fixture of conftest.)"""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from fxprune.adapters import Adapter
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import find_structure
from fxprune.pass_manager import PassManager
from fxprune.passes import DropBlocks, InsertAdapters
from fxprune.tracing import trace

SMALL_SIZE = (3, 16, 16)  # the input size of the ``small_resnet`` fixture


def slow_case(*values) -> object:
    """A ``parametrize`` case marked ``slow``: one that takes over ~1.5 s on a loaded 2-core
    machine (docs/testing.md)."""
    return pytest.param(*values, marks=pytest.mark.slow)


def calibrate_and_randomize(gm: fx.GraphModule, x: torch.Tensor, seed: int = 0) -> None:
    """Give every BN running statistics close to its real input statistics (so activations stay
    O(1) and fp64 comparisons are meaningful), then perturb statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in gm.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics exactly
    gm.train()
    with torch.no_grad():
        gm(x)
    gm.eval()
    with torch.no_grad():
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            shape, dtype = norm.running_mean.shape, norm.running_mean.dtype
            noise = lambda scale: scale * torch.randn(shape, generator=generator).to(dtype)  # noqa: E731
            norm.running_mean.add_(noise(0.1) * norm.running_var.sqrt())
            norm.running_var.mul_(1 + noise(0.1).abs())
            if norm.affine:
                norm.weight.copy_(1 + noise(0.2))
                norm.bias.copy_(noise(0.1))


def randomize_adapters(gm: fx.GraphModule, seed: int = 0, scale: float = 0.1) -> int:
    """Move every adapter away from the identity (``M = I + scale·G/√C`` keeps its spectral norm
    near 1 at any width); returns how many there are."""
    generator = torch.Generator().manual_seed(seed)
    adapters = [m for m in gm.modules() if isinstance(m, Adapter)]
    with torch.no_grad():
        for adapter in adapters:
            noise = torch.randn(adapter.weight.shape, generator=generator)
            adapter.weight.add_(scale / adapter.in_channels ** 0.5 * noise.to(adapter.weight.dtype))
            if adapter.bias is not None:
                adapter.bias.add_(scale * torch.randn(adapter.bias.shape, generator=generator)
                                  .to(adapter.bias.dtype))
    return len(adapters)


def student_with_adapters(teacher: fx.GraphModule, placement: str,
                          ids: tuple[str, ...] = ("1.2", "2.2", "3.2"),
                          size: tuple[int, int, int] = SMALL_SIZE) -> fx.GraphModule:
    """A copy of ``teacher`` (its weights) with blocks ``ids`` dropped and identity adapters at
    the ``placement`` sites, in eval mode."""
    gm = trace(teacher, size)
    sites = drop_sites(gm, find_structure(gm), ids, placement)
    return PassManager([DropBlocks(ids), InsertAdapters(sites)])(gm).graph_module.eval()


def count_modules(gm: nn.Module, kind: type | tuple[type, ...]) -> int:
    return sum(isinstance(module, kind) for module in gm.modules())


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


FP64_ATOL = 1e-9  # float64: folding is exact up to rounding
FP32_RTOL = 1e-4  # float32: relative to the output's magnitude


def assert_equivalent(expected: torch.Tensor, actual: torch.Tensor) -> None:
    """Equal up to rounding: ``FP64_ATOL`` absolute in float64, ``FP32_RTOL`` relative else."""
    if expected.dtype == torch.float64:
        assert max_abs_diff(expected, actual) <= FP64_ATOL
    else:
        assert max_rel_diff(expected, actual) <= FP32_RTOL


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the largest magnitude of the reference ``a``."""
    return max_abs_diff(a, b) / max(a.abs().max().item(), 1e-12)
