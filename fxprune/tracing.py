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
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from fxprune.errors import FxpruneWarning, TraceError
from fxprune.graph import parameter_dtype
from fxprune.meta import (auto_leaves, set_auto_leaves, set_tensor_meta, set_value_type,
                          tensor_meta)


class _LeafTracer(fx.Tracer):
    """A tracer that keeps user-named modules opaque and remembers where tracing failed.

    With ``auto_leaf``, a module whose ``forward`` cannot be traced (Python control flow on a
    shape or a value, ``math`` on a size) is traced again as an opaque leaf: the nodes its
    failed attempt recorded are erased and one ``call_module`` node stands for it. The innermost
    failing module becomes the leaf, so as little as possible is hidden from the analysis."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_paths: frozenset[str],
                 auto_leaf: bool = False):
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_paths = set(leaf_paths)
        self._auto_leaf = auto_leaf
        self.failed_module: str | None = None  # innermost module whose forward raised
        # module path -> (why it could not be traced, its class when it became a leaf)
        self.auto_leaves: dict[str, tuple[str, type]] = {}
        self._parameter_proxies: dict = {}  # torch.fx's cache of get_attr proxies

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, self._leaf_types) or qualified_name in self._leaf_paths:
            return True
        return super().is_leaf_module(module, qualified_name)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        self._parameter_proxies = parameter_proxy_cache  # forgotten with a failed attempt
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, module, forward, args, kwargs):
        marker = _last_node(self.graph)
        stack, calls = dict(self.module_stack), dict(self.num_calls)
        try:
            return super().call_module(module, forward, args, kwargs)
        except Exception as error:
            path = self.path_of_module(module)
            if not self._auto_leaf or not path:
                if self.failed_module is None:
                    self.failed_module = path
                raise
            erased = self._forget_after(marker)
            if _reads_any(args, kwargs, erased):  # e.g. a list the failed forward appended to
                raise
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls = calls
            self._leaf_paths.add(path)
            message = str(error).split(". ")[0].splitlines()[0] if str(error) else ""
            self.auto_leaves[path] = (
                f"{type(module).__name__}{_user_frame(error)}: {message}", type(module))
            return super().call_module(module, forward, args, kwargs)

    def _forget_after(self, marker: fx.Node | None) -> set[fx.Node]:
        """Erase the nodes a failed attempt recorded after ``marker``, newest first, and the
        cached parameter proxies that pointed at them; returns the erased nodes."""
        erased = set()
        while (last := _last_node(self.graph)) is not marker:
            self.graph.erase_node(last)
            erased.add(last)
        for key in [key for key, proxy in self._parameter_proxies.items()
                    if proxy.node in erased]:
            del self._parameter_proxies[key]
        return erased


def _reads_any(args, kwargs, nodes: set[fx.Node]) -> bool:
    found = []
    map_aggregate((args, kwargs), found.append)
    return any(isinstance(value, fx.Proxy) and value.node in nodes for value in found)


def _last_node(graph: fx.Graph) -> fx.Node | None:
    return next(iter(reversed(graph.nodes)), None)


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


def symbolic_trace(model: nn.Module, leaf_modules: Iterable[type | str] = (),
                   auto_leaf: bool = False) -> fx.GraphModule:
    """``torch.fx`` trace of ``model``; ``leaf_modules`` are module types or qualified names
    that stay single ``call_module`` nodes instead of being traced through. With
    ``auto_leaf``, modules that cannot be traced become leaves too, listed with the reason in
    ``fxprune.meta.auto_leaves(gm)``."""
    tracer = _LeafTracer(*_split_leaves(leaf_modules), auto_leaf=auto_leaf)
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
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    set_auto_leaves(gm, dict(tracer.auto_leaves))
    return gm


class _ShapeRecorder(fx.Interpreter):
    """What torch.fx's ``ShapeProp`` records (``tensor_meta``, ``type``) on every node it runs,
    without the traceback ``ShapeProp`` prints on failure: the failing node is remembered for
    a one-line error instead."""

    failed: tuple[fx.Node, BaseException] | None = None

    def run_node(self, node: fx.Node):
        try:
            result = super().run_node(node)
        except Exception as error:
            if self.failed is None:
                self.failed = (node, error)
            raise
        found_tensor = False

        def tensor_meta(value):
            nonlocal found_tensor
            if isinstance(value, torch.Tensor):
                found_tensor = True
                return _extract_tensor_metadata(value)
            return value

        meta = map_aggregate(result, tensor_meta)
        if found_tensor:
            set_tensor_meta(node, meta)
        set_value_type(node, type(result))
        return result


def _input_error(example: torch.Tensor, where: str, cause: BaseException) -> TraceError:
    first_line = str(cause).splitlines()[0] if str(cause) else ""
    return TraceError(
        f"the model fails on the example input {tuple(example.shape)}{where}: "
        f"{type(cause).__name__}: {first_line}. Check the input size (--input-size C,H,W) "
        "against what the model expects")


def run_example(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """``model(example)`` without gradients; a failure is a one-line ``TraceError``."""
    try:
        with torch.no_grad():
            return model(example)
    except Exception as error:  # whatever the model raises on an input it does not accept
        raise _input_error(example, "", error) from error


def _operation(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module '{node.target}', {type(gm.get_submodule(node.target)).__name__}"
    return getattr(node.target, "__name__", str(node.target))


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
    """Write ``tensor_meta`` (shape, dtype) on every node by running ``example_inputs``.

    Runs under ``no_grad`` in eval mode so BN running statistics are not touched. A model that
    fails on the input raises ``TraceError`` naming the node and the op's own first line."""
    was_training = gm.training
    gm.eval()
    interpreter = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            interpreter.run(*example_inputs)
    except Exception as error:
        if interpreter.failed is None:
            raise
        node, cause = interpreter.failed
        raise _input_error(example_inputs[0], f" at node '{node.name}' ({_operation(gm, node)})",
                           cause) from error
    finally:
        gm.train(was_training)
    return gm


def refresh_shapes(gm: fx.GraphModule) -> fx.GraphModule:
    """``propagate_shapes`` again with an example of the input shape the graph recorded: after
    a pass added nodes or changed widths, every node carries its current shape."""
    source = next(node for node in gm.graph.nodes if node.op == "placeholder")
    shape = tensor_meta(source).shape
    return propagate_shapes(gm, [example_input(tuple(shape[1:]), dtype=parameter_dtype(gm))])


def example_input(input_size: Sequence[int], batch: int = 1, dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> torch.Tensor:
    """A reproducible random NCHW input of the given (C, H, W) size."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_size), generator=generator, dtype=dtype)


def trace(model: nn.Module, input_size: Sequence[int], leaf_modules: Iterable[type | str] = (),
          auto_leaf: bool = True, canonical: bool = True) -> fx.GraphModule:
    """Trace a copy of ``model`` in eval mode, annotate shapes for a (C, H, W) input and
    rewrite the graph into fxprune's canonical form (``fxprune.canonical``).

    The copy keeps the caller's model safe from every later rewrite and from BN statistics
    updates. Eval mode matters: ops that read ``self.training`` while tracing (dropout,
    stochastic depth) are baked into the graph as they are then. Modules that cannot be traced
    stay opaque (``auto_leaf``), with a warning that names them; ``auto_leaf=False`` raises
    ``TraceError`` instead. Shapes are propagated before canonicalization too, so that the
    model's own shape checks run once at this input size before they are removed."""
    gm = symbolic_trace(copy.deepcopy(model).eval(), leaf_modules, auto_leaf=auto_leaf)
    example = [example_input(input_size, dtype=parameter_dtype(model))]
    propagate_shapes(gm, example)
    if canonical:
        from fxprune.canonical import canonicalize  # the passes import this module
        propagate_shapes(canonicalize(gm), example)
    if opaque := opaque_leaves(gm):
        listing = "; ".join(f"{path} ({auto_leaves(gm)[path][0]})" for path in opaque)
        warnings.warn(f"kept opaque (torch.fx cannot trace them; the analysis sees each as one "
                      f"op): {listing}", FxpruneWarning, stacklevel=2)
    return gm


def opaque_leaves(gm: fx.GraphModule) -> list[str]:
    """The modules ``trace`` could not trace that the graph still calls as they were:
    canonicalization may have replaced one (a TF-'SAME' conv becomes pad + conv), a leaf
    inside a later leaf is no longer called, and dead ones are gone."""
    modules = dict(gm.named_modules())
    called = {node.target for node in gm.graph.nodes if node.op == "call_module"}
    return sorted(path for path, (_, kind) in auto_leaves(gm).items()
                  if path in called and type(modules.get(path)) is kind)
