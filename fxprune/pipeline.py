"""The whole job as one call: drop blocks, insert adapters, recover, finetune, fold.

``compress`` works on an ``nn.Module`` (traced here) and a tiny normalised image batch, and
returns the folded student — a plain network with no adapter — plus the plain pruned network
and a report of what was done and what it cost.
"""

from __future__ import annotations

import copy
import numbers
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from fxprune.analysis.channels import coupled_maps, prunable_maps
from fxprune.analysis.droppable import nothing_to_drop
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import Structure, find_structure
from fxprune.errors import FxpruneError, FxpruneWarning, PreconditionError
from fxprune.graph import (adapter_nodes, conv_of, masked_nodes, named_modules, owns_module,
                           parameter_dtype)
from fxprune.macs import count_params, node_macs, total_macs
from fxprune.meta import stand_in
from fxprune.pass_manager import PassManager
from fxprune.adapters import AdapterSite
from fxprune.passes import (DropBlocks, FactorizeConvs, InsertAdapters, MaskWeights,
                            PruneCoupledMaps, PruneFilters, folding)
from fxprune.passes.factorize_convs import factorizable
from fxprune.passes.prune_filters import kept_count
from fxprune.recovery.finetune import FinetuneConfig, finetune as run_finetune, pre_pooling
from fxprune.recovery.practise import RecoveryConfig, recover as run_recovery
from fxprune.selection import SelectionConfig, select_blocks
from fxprune.tracing import example_input, trace

RECOVERIES = ("practise", "none")
FINETUNES = ("none", "ce-mse", "mse", "mir")


def paper_rule(structure: Structure) -> list[str]:
    """The paper's choice: the 2nd block of every stage that has a droppable one."""
    return [stage.blocks[1].id for stage in structure.stages
            if len(stage.blocks) > 1 and stage.blocks[1].droppable]


def resolve_drop(structure: Structure, drop: str | Sequence[str] | None,
                 required: bool = True, gm: fx.GraphModule | None = None) -> list[str]:
    """Block ids from ``"rule"``, ``"1.2,2.2"`` or a list; every id must exist and be
    droppable. ``None`` (or an empty list) is allowed when not ``required``. ``gm``, the
    analysed graph, lets the error for a network with nothing to drop name what applies."""
    if not required and not drop:
        return []
    if isinstance(drop, str):
        ids = paper_rule(structure) if drop == "rule" else [
            part.strip() for part in drop.split(",") if part.strip()]
    else:
        ids = list(drop)
    if not ids and drop == "rule":
        raise FxpruneError(f"nothing to drop: {nothing_to_drop(structure, gm)}")
    if not ids:
        raise FxpruneError(f"nothing to drop ({drop!r} names no block); droppable blocks: "
                           f"{', '.join(b.id for b in structure.blocks if b.droppable) or 'none'}")
    if len(set(ids)) != len(ids):
        raise FxpruneError(f"block ids repeat in {ids}")
    for block_id in ids:
        structure.block(block_id).require_droppable()
    return ids


@dataclass
class CompressResult:
    model: fx.GraphModule  # folded: no adapter, no BN after a conv
    pruned: fx.GraphModule  # the same blocks dropped, nothing recovered (BN folded)
    teacher: fx.GraphModule
    input_size: tuple[int, int, int]
    report: dict[str, Any] = field(default_factory=dict)
    recovered: fx.GraphModule | None = None  # folded after recovery, before a finetune

    def stages(self) -> dict[str, fx.GraphModule]:
        """The models a report compares: original, pruned, recovered (when a finetune
        followed the recovery) and compressed, the one shipped."""
        models = {"original": self.teacher, "pruned": self.pruned}
        if self.recovered is not None:
            models["recovered"] = self.recovered
        return {**models, "compressed": self.model}

    def export_onnx(self, path: str | Path) -> Path:
        """ONNX (opset 17, dynamic batch), checked with ``onnx.checker``."""
        from fxprune.export import export_onnx
        return export_onnx(self.model, self.input_size, path)

    def save(self, path: str | Path) -> Path:
        """A ``.pt2`` archive that ``fxprune.load`` runs without the original model's code."""
        from fxprune.saving import save
        return save(self.model, self.input_size, path)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; an error names what is wrong with it."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise FxpruneError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FxpruneError(f"device {device!r} asked for, but CUDA is not available here "
                           "(torch.cuda.is_available() is False); use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise FxpruneError(f"device {device!r} is not supported (use cpu, cuda or cuda:N)")
    return resolved


def _macs(gm: fx.GraphModule, input_size) -> int:
    return total_macs(node_macs(gm, [example_input(input_size, dtype=parameter_dtype(gm))]))


PruningSpec = float | Mapping[str, int | float]  # one ratio, or per map: kept count | ratio


def explicit_counts(asked: Mapping[str, int | float], channels: Mapping[str, int],
                    what: str) -> dict[str, int]:
    """Per-map requests as kept counts: an int is the count kept, a float the fraction of that
    map's channels pruned (``channels``: per map name, the maps that exist)."""
    counts = {}
    for name, value in asked.items():
        if isinstance(value, (bool, np.bool_)):
            raise FxpruneError(f"'{name}': give a kept count (int) or a ratio (float), not "
                               f"{value!r}")
        if isinstance(value, numbers.Integral):
            counts[name] = int(value)
            continue
        if name not in channels:
            raise FxpruneError(f"no {what} starts at '{name}'; there are: "
                               + (", ".join(channels) or "none"))
        if not 0.0 <= value < 1.0:
            raise FxpruneError(f"the pruning ratio of '{name}' must be in [0, 1), not {value}")
        counts[name] = kept_count(channels[name], value)
    return counts


def _kept_channels(spec: PruningSpec | None, channels: Mapping[str, int], *, excluded: set[str],
                   what: str, why_excluded: str, none_found: str) -> dict[str, int]:
    """Channels kept per map (``channels``: per map name, its width) for a ratio pruned from
    every map, or explicit (``explicit_counts``). Maps in ``excluded`` are left out of a
    ratio, or refused by name."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        refused = sorted(excluded & set(spec))
        if refused:
            raise FxpruneError(f"the {what}s after {', '.join(refused)} {why_excluded}; use "
                               "--schedule layerwise")
        return explicit_counts(spec, channels, what)
    if not channels:
        raise FxpruneError(none_found)
    if set(channels) <= excluded:
        raise FxpruneError(f"all {what}s here {why_excluded}; use --schedule layerwise")
    if not 0.0 <= spec < 1.0:
        raise FxpruneError(f"the pruning ratio of every {what} must be in [0, 1), not {spec}")
    return {name: kept_count(width, spec) for name, width in channels.items()
            if name not in excluded}


def resolve_pruning(gm: fx.GraphModule, prune_filters: PruningSpec | None,
                    full_width: set[str] = frozenset()) -> dict[str, int]:
    """Filters kept per producer conv (``_kept_channels`` over ``prunable_maps``). Maps whose
    chain holds a node of ``full_width`` (stage outputs that stage-wise recovery compares
    with the teacher's, channel for channel) are left out, or refused by name."""
    maps = prunable_maps(gm)
    return _kept_channels(
        prune_filters, {m.producer: m.channels for m in maps},
        excluded={m.producer for m in maps if full_width & set(m.chain)},
        what="prunable feature map",
        why_excluded="pass through stage outputs, which stage-wise and joint recovery compare "
        "at full width",
        none_found="this network has no prunable feature map: none runs an ungrouped conv -> "
        "[BN] -> activation -> an ungrouped conv, each output used once")


def resolve_streams(gm: fx.GraphModule, prune_streams: PruningSpec | None,
                    trainable: set[str] | None = None) -> dict[str, int]:
    """Channels kept per residual stream (``_kept_channels`` over ``coupled_maps``, named by
    the first producer). With ``trainable`` (the nodes stage-wise and joint recovery reach),
    a stream whose convs reach past the last stage output is left out, or refused by name:
    an adapter there could not train."""
    maps = coupled_maps(gm)
    return _kept_channels(
        prune_streams, {m.name: m.channels for m in maps},
        excluded={m.name for m in maps if trainable is not None
                  and not set(m.producers + m.consumers) <= trainable},
        what="residual stream",
        why_excluded="feed convs past the last stage output, which stage-wise and joint "
        "recovery cannot train",
        none_found="no residual stream of this network can be pruned: each reaches an op that "
        "would need the pruned channels too (a parameter-free shortcut such as a slice and "
        "channel pad, or the pooling head)")


def _up_to_last_stage(gm: fx.GraphModule, structure: Structure) -> set[str]:
    """Names of ``gm``'s nodes up to the last stage output (``structure`` from before any
    drop; a dropped exit counts where its stand-in is)."""
    try:
        exit_name = stand_in(gm, structure.last_exit)
    except PreconditionError as error:
        raise PreconditionError(f"{error}, so stage-wise and joint recovery have no stage "
                                "output to mimic; use --schedule layerwise") from None
    names = []
    for node in gm.graph.nodes:
        names.append(node.name)
        if node.name == exit_name:
            break
    return set(names)


def _parse_decouple(decouple: str) -> tuple[str, float]:
    """``"dwpw"`` or ``"lowrank:E"`` (E: the energy kept, default 0.4) -> (method, energy)."""
    method, _, energy = decouple.partition(":")
    try:
        value = float(energy) if energy else 0.4
    except ValueError:
        value = -1.0
    if method not in ("dwpw", "lowrank") or (energy and method == "dwpw") or value <= 0:
        raise FxpruneError(f"--decouple {decouple!r} not understood: use dwpw or lowrank:E "
                           "with E in (0, 1]")
    return method, value


def _auto_selection(teacher, images, size, drop, budget, selection, placement, progress):
    """The blocks ``select_blocks`` chooses when ``drop == "auto"`` (scored with the adapters
    at ``placement``); None otherwise."""
    if drop != "auto":
        if budget is not None or selection is not None:
            raise FxpruneError("a latency budget applies only to --drop auto")
        return None
    if budget is None and selection is None:
        raise FxpruneError("--drop auto needs a latency budget: --budget R, e.g. 0.8 for at "
                           "most 80% of the original's ONNX Runtime latency")
    config = selection or SelectionConfig(budget)
    config = replace(config, placement=placement, **({"budget": budget} if budget is not None
                                                      else {}))
    return select_blocks(teacher, images.cpu(), size, config, progress)


def convs_without_adapters(gm: fx.GraphModule) -> list[str]:
    """Ungrouped plain convs with no adapter as producer or consumer."""
    modules = named_modules(gm)
    adapters = set(adapter_nodes(gm))
    return [node.name for node in gm.graph.nodes
            if type(conv_of(node, modules)) is nn.Conv2d and conv_of(node, modules).groups == 1
            and owns_module(gm, node) and node.args[0] not in adapters
            and not adapters & set(node.users)]


def zero_fraction(gm: fx.GraphModule, convs: Sequence[str]) -> float:
    """Fraction of exactly-zero weights over the named convs (after folding)."""
    modules = named_modules(gm)
    weights = [conv_of(node, modules).weight for node in gm.graph.nodes if node.name in convs]
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


def compress(model: nn.Module, images: torch.Tensor, input_size: Sequence[int], *,
             labels: torch.Tensor | None = None, drop: str | Sequence[str] | None = "rule",
             prune_filters: PruningSpec | None = None,
             prune_streams: PruningSpec | None = None,
             sparsity: float | None = None, decouple: str | None = None,
             placement: str = "cvpr", recover: str = "practise",
             recovery: RecoveryConfig | None = None, finetune: str = "none",
             finetuning: FinetuneConfig | None = None, seed: int = 0,
             budget: float | None = None, selection: SelectionConfig | None = None,
             leaf_modules: Sequence[type | str] = (), progress: bool = True,
             device: str | torch.device = "cpu") -> CompressResult:
    """Compress ``model`` (left untouched) using the normalised NCHW ``images``.

    ``drop`` names blocks (``"rule"``, ``"1.2,2.2"``, a list, or None), or is ``"auto"``: the
    blocks are chosen so that the ONNX Runtime latency is at most ``budget`` times the
    original's (``selection`` sets the strategy, batch and threads; ``fxprune.selection``);
    ``prune_filters`` prunes a fraction of every prunable feature map's filters (L1 norm), or
    per producer conv name keeps an int count or prunes a float fraction; ``prune_streams``
    does the same for the residual streams between blocks (``PruneCoupledMaps``, keyed by a
    stream's first producer); ``sparsity`` masks that fraction of the weights of every conv
    (magnitude), except convs next to an adapter, which stay dense (folding an adapter into a
    masked conv would fill its zeros); ``decouple`` (``"dwpw"`` or ``"lowrank:E"``)
    factorizes every conv with no adapter next to it into a pair with an adapter between
    (``FactorizeConvs``). At least one of them must compress something.
    ``recover="none"`` skips the adapters (``finetune="ce-mse"`` then is the paper's Eq. 4
    baseline; a masked conv's zeros stay zero through it). ``seed`` seeds every shuffle and
    augmentation. Training runs on ``device`` (e.g. ``"cuda"``); the returned models are on
    the CPU."""
    if recover not in RECOVERIES:
        raise FxpruneError(f"unknown recovery '{recover}' (use {', '.join(RECOVERIES)})")
    if finetune not in FINETUNES:
        raise FxpruneError(f"unknown finetune '{finetune}' (use {', '.join(FINETUNES)})")
    start = time.perf_counter()
    device = resolve_device(device)
    size = tuple(input_size)
    teacher = trace(model, size, leaf_modules).eval()
    student = trace(model, size, leaf_modules).eval()
    structure = find_structure(student)
    if finetune == "mir":
        pre_pooling(teacher)  # the feature it mimics must exist: fail before any training
    auto = _auto_selection(teacher, images, size, drop, budget, selection, placement, progress)
    drop = auto.blocks if auto is not None else drop
    others = any(option is not None for option in (prune_filters, prune_streams, sparsity,
                                                     decouple))
    ids = resolve_drop(structure, drop, required=not others, gm=student)
    sites = drop_sites(student, structure, ids, placement) if recover == "practise" else []
    if recover == "practise" and not sites and not others:
        warnings.warn(f"no adapter can be placed (and folded) around blocks {ids}: the network "
                      "is only pruned, not recovered", FxpruneWarning, stacklevel=2)
        recover = "none"
    config = recovery or RecoveryConfig()
    # streams before the drop's adapters: an adapter next to a producer or consumer would
    # hide the stream from the analysis; a drop site that falls on a stream's conv is then
    # served by the stream's own adapter (N -> C before a consumer absorbs a C -> C one)
    student = DropBlocks(ids)(student).graph_module
    staged = recover == "practise" and config.schedule != "layerwise"
    streams = resolve_streams(student, prune_streams,
                              _up_to_last_stage(student, structure) if staged else None)
    student = PassManager([PruneCoupledMaps(streams), InsertAdapters(sites)])(
        student).graph_module
    stage_outputs = {stand_in(student, stage.output) for stage in structure.stages} \
        if staged else set()
    keep = resolve_pruning(student, prune_filters, stage_outputs)
    student = PruneFilters(keep)(student).graph_module
    # stage-wise and joint recovery mimic stage outputs: nothing after the last one can train
    trainable = _up_to_last_stage(student, structure) if staged else \
        {node.name for node in student.graph.nodes}
    factorization, factorized = [], []
    if decouple is not None:
        method, energy = _parse_decouple(decouple)
        without = set(convs_without_adapters(student)) & trainable
        factorized = [name for name in factorizable(student, method) if name in without]
        factorization = [FactorizeConvs(method, factorized, energy, images)]
        student = PassManager([*factorization, InsertAdapters(
            [AdapterSite(name, "input") for name in factorized] if recover == "practise"
            else [])])(student).graph_module
    masked = [name for name in convs_without_adapters(student) if name in trainable] \
        if sparsity is not None else []
    for option, asked, chosen in (("decouple", decouple, factorized),
                                  ("sparsity", sparsity, masked)):
        if asked is not None and not chosen:
            warnings.warn(f"--{option} selects no conv (each must be an ungrouped, zero-padded "
                          "nn.Conv2d with no adapter next to it, before the last stage output "
                          "for stage-wise recovery)", FxpruneWarning, stacklevel=2)
    student = MaskWeights(sparsity or 0.0, masked)(student).graph_module
    # folding keeps each conv's target, so a baseline finetune can hold its mask's zeros
    masks = {f"{node.target}.weight": named_modules(student)[node.target].mask
             for node in masked_nodes(student)} if recover == "none" else {}
    if recover == "none" and (keep or streams or masked):  # the plain pruned network, BN kept
        student = folding(batchnorm=False)(student).graph_module
    pruned = PassManager([DropBlocks(ids), PruneCoupledMaps(streams), PruneFilters(keep),
                          *factorization,
                          MaskWeights(sparsity or 0.0, masked), folding()])(
        copy.deepcopy(teacher)).graph_module
    adapters = len(adapter_nodes(student)) + len(masked_nodes(student))
    phases: dict[str, float] = {}
    steps = []
    teacher, student, images = teacher.to(device), student.to(device), images.to(device)
    labels = labels.to(device) if labels is not None else None
    if recover == "practise":
        tick = time.perf_counter()
        if config.fit is not None:
            config = replace(config, fit=replace(config.fit, seed=seed))
        steps = run_recovery(teacher, student, images, config, progress=progress)
        phases["recover"] = time.perf_counter() - tick
    recovered = None
    if finetune != "none":
        if recover == "practise":
            recovered = folding()(copy.deepcopy(student)).graph_module.eval()
        tick = time.perf_counter()
        config = replace(finetuning or FinetuneConfig(), objective=finetune, seed=seed)
        run_finetune(teacher, student, images, labels, config, progress=progress, masks=masks)
        phases["finetune"] = time.perf_counter() - tick
    teacher, student = teacher.cpu(), student.cpu()
    recovered = recovered.cpu() if recovered is not None else None
    tick = time.perf_counter()
    student = folding()(student).graph_module.eval()
    phases["fold"] = time.perf_counter() - tick
    report = {
        "input_size": list(size), "images": len(images), "seed": seed,
        "drop": ids, "auto": auto.as_report() if auto is not None else None,
        "placement": placement if sites else None,
        "adapters": adapters if recover == "practise" else 0,
        "decouple": {"method": decouple, "convs": factorized} if factorized else None,
        "prune_filters": {"ratio": prune_filters if not isinstance(prune_filters, Mapping)
                          else None, "kept": keep} if keep else None,
        "prune_streams": {"ratio": prune_streams if not isinstance(prune_streams, Mapping)
                          else None, "kept": streams} if streams else None,
        "sparsity": {"target": sparsity, "masked_convs": masked,
                     "weights_zero": zero_fraction(student, masked)} if masked else None,
        "recover": recover, "finetune": finetune,
        "schedule": (recovery or RecoveryConfig()).schedule if recover == "practise" else None,
        "init": (recovery or RecoveryConfig()).init if recover == "practise" else None,
        "device": str(device),
        "original": {"macs": _macs(teacher, size), "params": count_params(teacher)},
        "pruned": {"macs": _macs(pruned, size), "params": count_params(pruned)},
        "compressed": {"macs": _macs(student, size), "params": count_params(student)},
        **({"recovered": {"macs": _macs(recovered, size), "params": count_params(recovered)}}
           if recovered is not None else {}),
        "recovery_steps": [vars(step) for step in steps],
        "phases": phases, "seconds": time.perf_counter() - start,
    }
    return CompressResult(student, pruned, teacher, size, report, recovered)
