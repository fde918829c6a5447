"""Symbolic tracing plus shape propagation.

``trace`` turns an ``nn.Module`` into a ``GraphModule`` whose nodes carry
``node.meta["tensor_meta"]`` (shape and dtype, from ``ShapeProp`` on an example input), which
every analysis reads. Tracing failures are re-raised as ``TraceError`` naming the innermost
module being traced and the failing operation, with the ``leaf_modules`` option as the fix.
"""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Iterable, Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fxprune.errors import TraceError
from fxprune.graph import parameter_dtype


class _LeafTracer(fx.Tracer):
    """A tracer that keeps user-named modules opaque and remembers where tracing failed."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_paths: frozenset[str]):
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_paths = leaf_paths
        self.failed_module: str | None = None  # innermost module whose forward raised

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, self._leaf_types) or qualified_name in self._leaf_paths:
            return True
        return super().is_leaf_module(module, qualified_name)

    def call_module(self, module, forward, args, kwargs):
        try:
            return super().call_module(module, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:
                self.failed_module = self.path_of_module(module)
            raise


def _user_frame(error: BaseException) -> str:
    """'file:line: code' of the innermost traceback frame outside torch, if any."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if f"{os.sep}torch{os.sep}" not in frame.filename
              and frame.filename != __file__]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {frame.filename}:{frame.lineno} `{frame.line}`"


def _split_leaves(leaf_modules: Iterable[type | str]) -> tuple[tuple[type, ...], frozenset[str]]:
    types = tuple(leaf for leaf in leaf_modules if isinstance(leaf, type))
    paths = frozenset(leaf for leaf in leaf_modules if isinstance(leaf, str))
    return types, paths


def symbolic_trace(model: nn.Module, leaf_modules: Iterable[type | str] = ()) -> fx.GraphModule:
    """``torch.fx`` trace of ``model``; ``leaf_modules`` are module types or qualified names
    that stay single ``call_module`` nodes instead of being traced through."""
    tracer = _LeafTracer(*_split_leaves(leaf_modules))
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types (TraceError, TypeError, ...)
        where = tracer.failed_module or ""
        place = f"module '{where}' ({type(model.get_submodule(where)).__name__})" if where else (
            f"the top-level forward of {type(model).__name__}")
        raise TraceError(
            f"torch.fx cannot trace {place}{_user_frame(error)}: {type(error).__name__}: {error}. "
            f"Mark it as a leaf (leaf_modules=[...] / --leaf {where or 'MODULE'}) so it stays opaque."
        ) from error
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
    """Write ``tensor_meta`` (shape, dtype) on every node by running ``example_inputs``.

    Runs under ``no_grad`` in eval mode so BN running statistics are not touched."""
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    finally:
        gm.train(was_training)
    return gm


def example_input(input_size: Sequence[int], batch: int = 1, dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> torch.Tensor:
    """A reproducible random NCHW input of the given (C, H, W) size."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_size), generator=generator, dtype=dtype)


def trace(model: nn.Module, input_size: Sequence[int], leaf_modules: Iterable[type | str] = ()
          ) -> fx.GraphModule:
    """Trace a copy of ``model`` in eval mode and annotate shapes for a (C, H, W) input.

    The copy keeps the caller's model safe from every later rewrite and from BN statistics
    updates. Eval mode matters: ops that read ``self.training`` while tracing (dropout,
    stochastic depth) are baked into the graph as they are then."""
    gm = symbolic_trace(copy.deepcopy(model).eval(), leaf_modules)
    dtype = parameter_dtype(model)
    return propagate_shapes(gm, [example_input(input_size, dtype=dtype)])
