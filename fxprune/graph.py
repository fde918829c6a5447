"""Small, pure helpers to read a traced graph: which node is a conv, an activation, a residual
join; a node's shape; the graph as a networkx DiGraph. Everything matches on module types,
functions and shapes, never on names."""

from __future__ import annotations

import operator

import networkx as nx
import torch
import torch.nn.functional as F
from torch import fx, nn

from fxprune.adapters import Adapter, MaskedConv
from fxprune.errors import PreconditionError
from fxprune.meta import prune_group, tensor_meta

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU,
                      nn.Mish, nn.Hardtanh, nn.PReLU)
ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.silu, F.hardswish,
                        F.gelu, F.leaky_relu, F.elu, F.mish, F.hardtanh}
ACTIVATION_METHODS = {"relu", "relu_"}
# Activations f with f(f(x)) == f(x), keyed so that equal keys mean equal functions: a block
# ending in one can pass its input straight through when that input went through the same f.
_IDEMPOTENT_KEYS = {F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu",
                    "relu": "relu", "relu_": "relu", F.relu6: "relu6"}

ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}


def named_modules(gm: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(gm.named_modules())


def module_of(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The module a ``call_module`` node calls, else None."""
    return modules.get(node.target) if node.op == "call_module" else None


def conv_of(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Conv2d | None:
    """The ``nn.Conv2d`` a node calls (adapters included), else None."""
    module = module_of(node, modules)
    return module if isinstance(module, nn.Conv2d) else None


def callers(gm: fx.GraphModule, target: str) -> list[fx.Node]:
    """The ``call_module`` nodes that call submodule ``target``."""
    return [node for node in gm.graph.nodes if node.op == "call_module" and node.target == target]


def owns_module(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` is the only caller of its module, so replacing the module changes nothing else."""
    return node.op == "call_module" and len(callers(gm, node.target)) == 1


def adapter_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that call an ``Adapter``, in graph order."""
    modules = named_modules(gm)
    return [node for node in gm.graph.nodes if isinstance(module_of(node, modules), Adapter)]


def recovery_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes recovery trains, in graph order: adapters, masked convs (their adapter), and
    the BN layers of pruned feature maps (``PruneFilters`` marks them)."""
    modules = named_modules(gm)
    return [node for node in gm.graph.nodes
            if isinstance(module_of(node, modules), (Adapter, MaskedConv))
            or prune_group(node) is not None]


def masked_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that call a ``MaskedConv``, in graph order."""
    modules = named_modules(gm)
    return [node for node in gm.graph.nodes if isinstance(module_of(node, modules), MaskedConv)]


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first parameter (float32 for a parameter-free module)."""
    return next((parameter.dtype for parameter in module.parameters()), torch.float32)


def foldable_conv(node: fx.Node, modules: dict[str, nn.Module], groups: int | None = 1
                  ) -> nn.Conv2d | None:
    """The conv a node calls when it is exactly ``nn.Conv2d`` (or an adapter) with ``groups``
    groups (any when None): a subclass may change ``forward`` (weight standardisation, dynamic
    padding), which folding into a plain conv would silently drop."""
    conv = conv_of(node, modules)
    if conv is None or type(conv) not in (nn.Conv2d, Adapter):
        return None
    return conv if groups is None or conv.groups == groups else None


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def is_zero_pad(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Spatial zero padding: ``nn.ZeroPad2d``, ``nn.ConstantPad2d(0)`` or a constant-0 ``F.pad``
    (TensorFlow-style 'SAME' convs pad this way before an unpadded conv)."""
    if node.op == "call_module":
        module = modules.get(node.target)
        return isinstance(module, nn.ZeroPad2d) or (
            isinstance(module, nn.ConstantPad2d) and module.value == 0)
    if node.op == "call_function" and node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and not value
    return False


def idempotent_activation_key(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """A key naming the idempotent activation ``node`` applies (ReLU, ReLU6, Hardtanh with its
    bounds), or None when it applies none."""
    module = module_of(node, modules)
    if isinstance(module, nn.ReLU6):
        return "relu6"
    if isinstance(module, nn.Hardtanh):
        return f"hardtanh({module.min_val},{module.max_val})"
    if isinstance(module, nn.ReLU):
        return "relu"
    if node.op in ("call_function", "call_method"):
        try:
            return _IDEMPOTENT_KEYS.get(node.target)
        except TypeError:  # unhashable target
            return None
    return None


def is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in ADD_FUNCTIONS
    return node.op == "call_method" and node.target in ADD_METHODS


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """Input nodes of ``node`` that carry a tensor (according to shape propagation)."""
    return [arg for arg in node.all_input_nodes if shape_of(arg) is not None]


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    """The output shape recorded by shape propagation, or None for non-tensor outputs."""
    shape = getattr(tensor_meta(node), "shape", None)
    return tuple(shape) if shape is not None else None


def feature_shape(node: fx.Node) -> tuple[int, ...] | None:
    """Shape without the batch dimension."""
    shape = shape_of(node)
    return shape[1:] if shape is not None else None


def to_digraph(graph: fx.Graph) -> nx.DiGraph:
    """Data-flow DiGraph over node names."""
    digraph = nx.DiGraph()
    for node in graph.nodes:
        digraph.add_node(node.name)
        for source in node.all_input_nodes:
            digraph.add_edge(source.name, node.name)
    return digraph


def input_name(gm: fx.GraphModule) -> str:
    """The name of the network's one input (recovery and finetuning feed it the tiny set)."""
    placeholders = [node.name for node in gm.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise PreconditionError(f"recovery and finetuning need a single-input network, got "
                                f"{placeholders}")
    return placeholders[0]


def output_node(graph: fx.Graph) -> fx.Node:
    return next(node for node in reversed(graph.nodes) if node.op == "output")
