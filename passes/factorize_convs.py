"""FactorizeConvs: replace a k x k conv by a cheaper pair — depthwise + pointwise (``"dwpw"``)
or a low-rank pair from PCA of its output features (``"lowrank"``) — for recovery with an
adapter between the two (the paper treats the pair like a pruned layer).

For a conv ``W`` (O x C x k x k, bias ``b``):

* ``"dwpw"``: per input channel ``c`` the O x k² slice ``W[:, c]`` is replaced by its best
  rank-1 approximation ``σ u vᵀ`` (SVD): the depthwise kernel of channel ``c`` is ``√σ v``,
  column ``c`` of the pointwise conv is ``√σ u``; ``b`` goes to the pointwise conv. MACs go
  from O·C·k² to C·k² + O·C per output pixel.
* ``"lowrank"``: with ``Y = W * x + b`` on the calibration images (statistics accumulated
  batch by batch), mean ``μ`` and the
  eigenvectors ``V`` (O x r) of the covariance of ``Y`` for the smallest ``r`` whose
  eigenvalues hold ``energy`` of the total: ``first = Vᵀ W`` (bias ``Vᵀ(b − μ)``, the conv's
  geometry) and ``second`` = the 1x1 conv ``V`` (bias ``μ``), so ``second(first(x))`` is the
  projection of ``Y`` on its top ``r`` principal directions.

The original node keeps its name and now calls the second conv, so the teacher's output of
that conv pairs with the student's by name; the first conv is a new node before it.

Fires on the named convs, or on every exactly-``nn.Conv2d`` ungrouped conv with a kernel
larger than 1x1 whose module it owns (``"dwpw"``) or on every such conv of any kernel
(``"lowrank"``). Does not fire for a conv already factorized (idempotent: its node then
calls a 1x1 conv fed by a conv this pass made). Raises ``PreconditionError`` for a named node
that is not such a conv, an unknown method, or an energy outside (0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx, nn

from fxprune.errors import PreconditionError
from fxprune.graph import foldable_conv, named_modules, owns_module
from fxprune.meta import factorized_by, set_factorized_by
from fxprune.pass_manager import PassBase, PassResult
from fxprune.rewrite import replace_module, unique_module_name
from fxprune.segments import as_list, segment
from fxprune.tracing import refresh_shapes

METHODS = ("dwpw", "lowrank")


def dwpw_pair(conv: nn.Conv2d) -> tuple[nn.Conv2d, nn.Conv2d]:
    """Depthwise + pointwise convs approximating ``conv`` (rank 1 per input channel)."""
    weight = conv.weight.detach().double()
    out_channels, channels = weight.shape[:2]
    slices = weight.permute(1, 0, 2, 3).reshape(channels, out_channels, -1)  # C x O x k²
    u, sigma, vh = torch.linalg.svd(slices, full_matrices=False)
    scale = sigma[:, 0].sqrt()
    depthwise = (scale[:, None] * vh[:, 0, :]).view(channels, 1, *conv.kernel_size)
    pointwise = (scale[:, None] * u[:, :, 0]).T.reshape(out_channels, channels, 1, 1)
    first = _conv(conv, channels, channels, conv.kernel_size, depthwise, None, groups=channels,
                  geometry=True)
    second = _conv(conv, channels, out_channels, (1, 1), pointwise,
                   None if conv.bias is None else conv.bias.detach().double())
    return first, second


class OutputStatistics:
    """Running mean and covariance of a conv's outputs over channels, batch by batch."""

    def __init__(self):
        self.count, self.total, self.products = 0, 0.0, 0.0

    def add(self, outputs: torch.Tensor) -> None:
        flat = outputs.detach().double().transpose(0, 1).flatten(1)  # O x (B·H·W)
        self.count += flat.shape[1]
        self.total = self.total + flat.sum(1)
        self.products = self.products + flat @ flat.T

    def mean_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        return mean, self.products / self.count - torch.outer(mean, mean)


def lowrank_pair(conv: nn.Conv2d, statistics: OutputStatistics, energy: float
                 ) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The PCA pair of ``conv`` from the statistics of its outputs on calibration images."""
    mean, covariance = statistics.mean_covariance()
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    if values.sum() <= 0:  # constant outputs: one component (the mean does the rest)
        rank = 1
    else:
        share = values.cumsum(0) / values.sum()
        rank = min(int((share < energy - 1e-12).sum()) + 1, len(values))
    basis = vectors[:, :rank]  # O x r
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    first = _conv(conv, conv.in_channels, rank, conv.kernel_size,
                  torch.einsum("or,oikl->rikl", basis, weight), basis.T @ (bias - mean),
                  geometry=True)
    second = _conv(conv, rank, conv.out_channels, (1, 1), basis.view(*basis.shape, 1, 1), mean)
    return first, second


def _conv(like: nn.Conv2d, channels: int, out_channels: int, kernel, weight, bias,
          groups: int = 1, geometry: bool = False) -> nn.Conv2d:
    """A conv with ``like``'s dtype and device; ``geometry`` copies its stride and padding."""
    options = dict(stride=like.stride, padding=like.padding, dilation=like.dilation) \
        if geometry else {}
    conv = nn.Conv2d(channels, out_channels, kernel, groups=groups, bias=bias is not None,
                     device=like.weight.device, dtype=like.weight.dtype, **options)
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if bias is not None:
            conv.bias.copy_(bias.to(conv.weight.dtype))
    return conv


def factorizable(gm: fx.GraphModule, method: str) -> list[str]:
    """Conv nodes the method applies to: exactly ``nn.Conv2d``, ungrouped, owning their
    module, zero-padded, with a kernel larger than 1x1 for ``"dwpw"``."""
    modules = named_modules(gm)
    return [node.name for node in gm.graph.nodes if _eligible(gm, node, modules, method)]


def _eligible(gm, node, modules, method: str) -> bool:
    conv = foldable_conv(node, modules) if node is not None else None
    if conv is None or type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" \
            or not owns_module(gm, node):
        return False
    return method == "lowrank" or max(conv.kernel_size) > 1


def _factorized(gm: fx.GraphModule) -> set[str]:
    """The second convs of the pairs this pass made before."""
    return {node.users and next(iter(node.users)).name for node in gm.graph.nodes
            if factorized_by(node) is not None}


class FactorizeConvs(PassBase):
    def __init__(self, method: str, convs: Iterable[str] | None = None, energy: float = 0.4,
                 images: torch.Tensor | None = None):
        super().__init__()
        if method not in METHODS:
            raise PreconditionError(f"unknown factorization '{method}' (use {METHODS})")
        if method == "lowrank" and (not 0.0 < energy <= 1.0 or images is None):
            raise PreconditionError("low-rank factorization needs an energy in (0, 1] and "
                                    "calibration images")
        self.method, self.energy, self.images = method, energy, images
        self.convs = None if convs is None else list(convs)

    def requires(self, gm: fx.GraphModule) -> None:
        """Every named conv not factorized yet is eligible."""
        modules = named_modules(gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        done = _factorized(gm)
        for name in self.convs or ():
            if name not in done and not _eligible(gm, nodes.get(name), modules, self.method):
                raise PreconditionError(f"cannot factorize '{name}': not an ungrouped "
                                        "nn.Conv2d node (k > 1 for dwpw) owning its module")

    def call(self, gm: fx.GraphModule) -> PassResult:
        modules = named_modules(gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        done = _factorized(gm)
        if self.convs is not None:
            chosen = [nodes[name] for name in self.convs if name not in done]
        else:
            chosen = [node for node in gm.graph.nodes
                      if node.name not in done and _eligible(gm, node, modules, self.method)]
        outputs = self._outputs(gm, chosen)
        for node in chosen:
            conv = modules[node.target]
            first, second = (dwpw_pair(conv) if self.method == "dwpw" else
                             lowrank_pair(conv, outputs[node.name], self.energy))
            name = unique_module_name(gm, f"{node.target.replace('.', '_')}_first")
            gm.add_submodule(name, first)
            with gm.graph.inserting_before(node):
                first_node = gm.graph.call_module(name, (node.args[0],))
            set_factorized_by(first_node, self.method)
            node.replace_input_with(node.args[0], first_node)
            replace_module(gm, node, second)
        if chosen:
            gm.graph.lint()
            gm.recompile()
            refresh_shapes(gm)
        return PassResult(gm, bool(chosen))

    @torch.no_grad()
    def _outputs(self, gm, chosen) -> dict[str, OutputStatistics]:
        """Each chosen conv's output statistics on the calibration images (low-rank only),
        accumulated batch by batch: memory does not grow with the number of images."""
        if self.method != "lowrank" or not chosen:
            return {}
        source = next(node.name for node in gm.graph.nodes if node.op == "placeholder")
        network = segment(gm, [source], [node.name for node in chosen])
        statistics = {node.name: OutputStatistics() for node in chosen}
        for begin in range(0, len(self.images), 16):
            for node, value in zip(chosen, as_list(network(self.images[begin:begin + 16]))):
                statistics[node.name].add(value)
        return statistics
