"""The compression plan: a value that says which passes run, in which order, with which
arguments, where the adapters sit and how they recover — decided before any weight moves.

``plan(model, options)`` reads the graph (and, for ``Drop.auto``, measures latencies and
scores candidates on the tiny set) and returns a frozen ``CompressionPlan``; printing it
(``fxprune compress --dry-run``) shows every step. ``fxprune.execute`` carries it out. The
plain pruned network a report compares against is the same plan without its adapters.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import fx, nn

from fxprune.adapters import AdapterSite
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import Structure, find_structure
from fxprune.meta import stand_in
from fxprune.errors import FxpruneError, FxpruneWarning
from fxprune.options import Drop, Options, Placement, Recovery, Schedule
from fxprune.pass_manager import PassManager, this_before_that
from fxprune.passes import (DropBlocks, FactorizeConvs, InsertAdapters, MaskWeights,
                            PruneCoupledMaps, PruneFilters, folding)
from fxprune.passes.factorize_convs import factorizable
from fxprune.recovery.finetune import FinetuneConfig, pre_pooling
from fxprune.recovery.views import MIN_PAIRS
from fxprune.resolve import (convs_without_adapters, drop_ids, kept_filters, kept_streams,
                             up_to_last_stage)
from fxprune.selection import Selection, select_blocks
from fxprune.tracing import trace

# The order the planner emits, declared so that the pass manager checks it: streams are found
# on the graph after the drop; a pruned stream before the drop's adapters, since an adapter
# next to a producer or consumer would hide the stream from the analysis; filters after both;
# factorization after the adapters it must avoid; masks last, on convs nothing else rewrote.
PASS_ORDER = [this_before_that(*pair) for pair in (
    (DropBlocks, PruneCoupledMaps), (PruneCoupledMaps, InsertAdapters),
    (PruneCoupledMaps, PruneFilters), (PruneFilters, FactorizeConvs),
    (FactorizeConvs, MaskWeights), (InsertAdapters, MaskWeights))]


@dataclass(frozen=True)
class Step:
    """One pass of a plan: its type (or a function making it) and keyword arguments.
    ``calibrated`` passes also take the tiny set (``images=``) when they are built."""

    pass_type: Callable
    arguments: tuple[tuple[str, Any], ...] = ()
    calibrated: bool = False

    def build(self, images: torch.Tensor | None = None):
        extra = {"images": images} if self.calibrated else {}
        return self.pass_type(**dict(self.arguments), **extra)

    def __str__(self) -> str:
        shown = ", ".join(f"{name}={_short(value)}" for name, value in self.arguments)
        return f"{self.pass_type.__name__}({shown})"


def _short(value) -> str:
    """An argument as the plan prints it: long lists and dicts cut, sites as 'input of x'."""
    if isinstance(value, (list, tuple)):
        shown = [_short(item) for item in value[:3 if len(value) > 6 else len(value)]]
        return f"[{', '.join(shown)}{f', ... {len(value)} in all' if len(value) > 6 else ''}]"
    if isinstance(value, dict) and len(value) > 6:
        return f"{{{len(value)} entries}}"
    return str(value) if isinstance(value, AdapterSite) else repr(value)


def step(pass_type: Callable, calibrated: bool = False, **arguments) -> Step:
    return Step(pass_type, tuple(arguments.items()), calibrated)


@dataclass(frozen=True)
class CompressionPlan:
    """What a compression will do. ``teacher`` is the traced original (not compared or
    printed); ``seconds`` what planning took (an automatic choice measures and scores)."""

    input_size: tuple[int, int, int]
    steps: tuple[Step, ...]
    blocks: tuple[str, ...]
    adapter_sites: tuple[AdapterSite, ...]
    recovery: Recovery | None
    placement: Placement | None  # of the drop's adapters (None: no drop site)
    options: Options
    selection: Selection | None = field(default=None, repr=False)
    teacher: fx.GraphModule | None = field(default=None, repr=False, compare=False)
    seconds: float = field(default=0.0, repr=False, compare=False)
    # the planner's own rewriting of the teacher, kept when it read no image
    rewritten: fx.GraphModule | None = field(default=None, repr=False, compare=False)

    def arguments(self, pass_type: Callable) -> dict[str, Any]:
        """The arguments of the step running ``pass_type`` ({} when the plan has none)."""
        found = [s for s in self.steps if s.pass_type is pass_type and s.arguments]
        return dict(found[0].arguments) if found else {}

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def finetune(self) -> FinetuneConfig | None:
        return self.options.finetune

    def without_adapters(self) -> CompressionPlan:
        """The same compression with nothing to recover: the plain pruned network."""
        return replace(self, steps=tuple(s for s in self.steps if s.pass_type
                                         is not InsertAdapters), adapter_sites=(),
                       rewritten=None,
                       recovery=None, placement=None,
                       options=replace(self.options, recovery=None, finetune=None))

    def passes(self, images: torch.Tensor | None = None) -> PassManager:
        """The plan's rewriting as a pass manager that checks the declared order."""
        return PassManager([s.build(images) for s in self.steps], constraints=PASS_ORDER)

    def rewrite(self, images: torch.Tensor | None = None) -> fx.GraphModule:
        """A copy of the teacher with the plan's passes applied (adapters untrained)."""
        passes = self.passes(images)  # checks the order even when the planner's copy serves
        if self.rewritten is not None:  # no step reads images: the planner's result is it
            return copy.deepcopy(self.rewritten)
        return passes(copy.deepcopy(self.teacher)).graph_module

    def as_json(self) -> dict[str, Any]:
        recovery = self.recovery
        return {"input_size": list(self.input_size), "steps": [str(s) for s in self.steps],
                "adapter_sites": [str(site) for site in self.adapter_sites],
                "recovery": None if recovery is None else {
                    "schedule": str(recovery.schedule), "placement": str(recovery.sites),
                    "init": recovery.config(self.seed).init,
                    "views": recovery.views, "mix": recovery.mix,
                    "holdout": recovery.holdout},
                "finetune": None if self.finetune is None else self.finetune.objective,
                "seed": self.seed}

    def __str__(self) -> str:
        described = self.as_json()
        lines = [f"compression plan for input {tuple(self.input_size)}, seed {self.seed}:"]
        lines += [f"  {index}. {text}" for index, text in enumerate(described["steps"], 1)]
        lines.append(f"  adapters: {len(self.adapter_sites)} sites"
                     + (f" ({', '.join(described['adapter_sites'])})"
                        if 0 < len(self.adapter_sites) <= 8 else ""))
        recovery = described["recovery"]
        lines.append("  recovery: none" if recovery is None else
                     f"  recovery: {recovery['schedule']}, {recovery['placement']} sites, "
                     f"{recovery['init']} start"
                     + _views(recovery["views"], recovery["mix"])
                     + (f", {recovery['holdout']:.0%} of the images held out to judge each fit"
                        if recovery["holdout"] else ""))
        lines.append(f"  finetune: {described['finetune'] or 'none'}")
        return "\n".join(lines)


def _views(views: int | None, mix: bool) -> str:
    kind = "mixed" if mix else "augmented"
    if views is None:
        return f", {kind} views up to {MIN_PAIRS} pairs for a small set"
    return f", {views} {kind} views" if views else ""


class _Scratch:
    """A copy of the teacher that the planner rewrites step by step, so that each decision
    reads the graph the earlier steps leave."""

    def __init__(self, teacher: fx.GraphModule, images: torch.Tensor | None):
        self.gm, self.images, self.steps = copy.deepcopy(teacher), images, []

    def apply(self, planned: Step) -> None:
        self.steps.append(planned)
        self.gm = PassManager([planned.build(self.images)])(self.gm).graph_module


def plan(model: nn.Module | fx.GraphModule, options: Options = Options(), *,
         input_size: Sequence[int], images: torch.Tensor | None = None,
         leaf_modules: Sequence[type | str] = (), progress: bool = True) -> CompressionPlan:
    """The plan that compresses ``model`` (traced here unless a ``GraphModule``; left
    untouched) as ``options`` say. ``images`` (normalised NCHW, the tiny set) are needed by
    ``Drop.auto`` and ``Decouple.lowrank``."""
    start = time.perf_counter()
    size = tuple(input_size)
    teacher = (model if isinstance(model, fx.GraphModule) else
               trace(model, size, leaf_modules)).eval()
    structure = find_structure(teacher)
    if options.finetune is not None and options.finetune.objective == "mir":
        pre_pooling(teacher)  # the feature it mimics must exist: fail before any training
    selection = _auto(teacher, options, images, size, progress)
    drop = Drop.blocks(*selection.blocks) if selection is not None else options.drop
    ids = drop_ids(structure, drop, teacher)
    recovery = options.recovery
    sites = drop_sites(teacher, structure, ids, recovery.sites) if recovery else []
    if recovery is not None and not sites and options.only_drops:
        warnings.warn(f"no adapter can be placed (and folded) around blocks {ids}: the network "
                      "is only pruned, not recovered", FxpruneWarning, stacklevel=2)
        recovery = None
    placement = recovery.sites if recovery is not None and sites else None
    scratch = _Scratch(teacher, images)
    sites += _plan_rewrites(scratch, structure, ids, sites, replace(options, recovery=recovery))
    calibrated = any(planned.calibrated for planned in scratch.steps)
    return CompressionPlan(size, tuple(scratch.steps), tuple(ids), tuple(sites), recovery,
                           placement, options, selection, teacher, time.perf_counter() - start,
                           None if calibrated else scratch.gm)


def _auto(teacher, options: Options, images, size, progress) -> Selection | None:
    """The blocks ``Drop.auto`` chooses, scored with the adapters where recovery puts them."""
    if options.drop is None or options.drop.kind != "auto":
        return None
    if images is None:
        raise FxpruneError("an automatic drop scores candidates on the tiny set: pass images")
    placement = options.recovery.sites if options.recovery else Recovery().sites
    config = replace(options.drop.selection, placement=str(placement))
    return select_blocks(teacher, images.cpu(), size, config, progress)


def _plan_rewrites(scratch: _Scratch, structure: Structure, ids: list[str],
                   sites: list[AdapterSite], options: Options) -> list[AdapterSite]:
    """Append the rewriting steps to ``scratch``; returns the adapter sites added after the
    drop's (those between factorized pairs)."""
    recovery = options.recovery
    staged = recovery is not None and recovery.schedule != Schedule.LAYERWISE
    if ids:
        scratch.apply(step(DropBlocks, block_ids=ids))
    streams = kept_streams(scratch.gm, options.streams,
                           up_to_last_stage(scratch.gm, structure) if staged else None)
    if streams:
        scratch.apply(step(PruneCoupledMaps, keep=streams))
    if sites:
        scratch.apply(step(InsertAdapters, sites=sites))
    outputs = {stand_in(scratch.gm, stage.output) for stage in structure.stages} \
        if staged else set()
    keep = kept_filters(scratch.gm, options.filters, outputs)
    if keep:
        scratch.apply(step(PruneFilters, keep=keep))
    trainable = up_to_last_stage(scratch.gm, structure) if staged else \
        {node.name for node in scratch.gm.graph.nodes}
    added = _plan_factorization(scratch, options, trainable)
    masked = [name for name in convs_without_adapters(scratch.gm) if name in trainable] \
        if options.sparsity is not None else []
    _warn_if_empty("sparsity", options.sparsity, masked)
    if masked:
        scratch.apply(step(MaskWeights, sparsity=options.sparsity.fraction, convs=masked))
    if recovery is None and (keep or streams or masked):  # the plain pruned network, BN kept
        scratch.apply(step(folding, batchnorm=False))
    return added


def _plan_factorization(scratch: _Scratch, options: Options, trainable: set[str]
                        ) -> list[AdapterSite]:
    """Factorize the trainable convs with no adapter next to them, with an adapter between
    each pair when recovering."""
    if options.decouple is None:
        return []
    method = options.decouple.method
    without = set(convs_without_adapters(scratch.gm)) & trainable
    convs = [name for name in factorizable(scratch.gm, method) if name in without]
    _warn_if_empty("decouple", options.decouple, convs)
    if not convs:
        return []
    if method == "lowrank" and scratch.images is None:
        raise FxpruneError("a low-rank factorization reads the output statistics of the tiny "
                           "set: pass images")
    scratch.apply(step(FactorizeConvs, calibrated=method == "lowrank", method=method,
                       convs=convs, energy=options.decouple.energy))
    sites = [AdapterSite(name, "input") for name in convs] if options.recovery else []
    if sites:
        scratch.apply(step(InsertAdapters, sites=sites))
    return sites


def _warn_if_empty(option: str, asked, chosen: list[str]) -> None:
    if asked is not None and not chosen:
        warnings.warn(f"--{option} selects no conv (each must be an ungrouped, zero-padded "
                      "nn.Conv2d with no adapter next to it, before the last stage output "
                      "for stage-wise recovery)", FxpruneWarning, stacklevel=3)
