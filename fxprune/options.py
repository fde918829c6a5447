"""What to compress and how to recover it: the typed options that ``fxprune.plan`` turns into a
compression plan. Each option validates itself when built, so a plan never sees a bad value;
text (``"1.2,2.2"``, ``"lowrank:0.4"``) is parsed by the command line, not here.

    Options(drop=Drop.rule())                                   # the paper's blocks
    Options(drop=Drop.auto(budget=0.8), recovery=Recovery(schedule=Schedule.JOINT))
    Options(drop=None, filters=FilterPruning(0.5), finetune=FinetuneConfig("ce-mse"))
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from fxprune.errors import FxpruneError
from fxprune.recovery.finetune import FinetuneConfig
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig
from fxprune.recovery.views import views_for

if TYPE_CHECKING:
    from fxprune.selection import SelectionConfig


class Schedule(StrEnum):
    """How adapters train: per stage, all at once, or one layer at a time (the paper)."""
    STAGEWISE = "stagewise"
    JOINT = "joint"
    LAYERWISE = "layerwise"


class Placement(StrEnum):
    """Where the adapters around a dropped block go (``fxprune.analysis.sites``)."""
    PAPER = "paper"
    CVPR = "cvpr"
    INNER = "inner"


class Init(StrEnum):
    """An adapter's start: the identity, or the closed-form layer-wise optimum."""
    IDENTITY = "identity"
    LSTSQ = "lstsq"


class Strategy(StrEnum):
    """How ``Drop.auto`` chooses: re-score the chosen set each round, or rank blocks alone."""
    GREEDY = "greedy"
    ALONE = "alone"


@dataclass(frozen=True)
class Drop:
    """Residual blocks to drop: the paper's rule (2nd block of every stage), named blocks, or
    those chosen so that the ONNX Runtime latency is at most ``budget`` x the original's."""

    kind: str  # "rule" | "blocks" | "auto"
    ids: tuple[str, ...] = ()
    selection: SelectionConfig | None = None

    @classmethod
    def rule(cls) -> Drop:
        return cls("rule")

    @classmethod
    def blocks(cls, *ids: str) -> Drop:
        if not ids:
            raise FxpruneError("Drop.blocks needs at least one block id, e.g. '1.2'")
        if len(set(ids)) != len(ids):
            raise FxpruneError(f"block ids repeat in {list(ids)}")
        return cls("blocks", tuple(ids))

    @classmethod
    def auto(cls, budget: float, strategy: Strategy = Strategy.GREEDY, batch: int = 1,
             threads: int = 1, **tuning) -> Drop:
        """Latencies at ``batch`` and ``threads`` (ONNX Runtime) decide what the budget buys;
        ``tuning``: the other fields of ``fxprune.selection.SelectionConfig``."""
        from fxprune.selection import SelectionConfig  # here: selection imports this module
        return cls("auto", selection=SelectionConfig(budget, strategy=str(Strategy(strategy)),
                                                     batch=batch, threads=threads, **tuning))


PerMap = Mapping[str, int | float]  # per map name: the kept count (int) or ratio pruned (float)


@dataclass(frozen=True)
class PruningAmount:
    """``amount``: the fraction of channels pruned (L1 norm) from every map, or per map (named
    by ``fxprune inspect``) a kept count (int) or a pruned fraction (float)."""

    amount: float | PerMap

    def __post_init__(self):
        if isinstance(self.amount, Mapping):
            object.__setattr__(self, "amount", MappingProxyType(dict(self.amount)))
            for name, value in self.amount.items():
                _check_amount(value, f"'{name}'")
        elif isinstance(self.amount, numbers.Integral) or not 0.0 <= self.amount < 1.0:
            raise FxpruneError(f"the pruning ratio must be in [0, 1), not {self.amount!r}")

    @property
    def ratio(self) -> float | None:
        return None if isinstance(self.amount, Mapping) else float(self.amount)


def _check_amount(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FxpruneError(f"{what}: give a kept count (int) or a ratio (float), not {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise FxpruneError(f"{what}: keep at least one channel, not {value}")
    elif not 0.0 <= value < 1.0:
        raise FxpruneError(f"the pruning ratio of {what} must be in [0, 1), not {value}")


class FilterPruning(PruningAmount):
    """Filters of the feature maps inside blocks (``PruneFilters``)."""


class StreamPruning(PruningAmount):
    """Channels of the residual streams between blocks, shortcuts included
    (``PruneCoupledMaps``, maps named by a stream's first producer)."""


@dataclass(frozen=True)
class Sparsity:
    """Mask this fraction of every eligible conv's weights (magnitude)."""

    fraction: float

    def __post_init__(self):
        if not 0.0 <= self.fraction < 1.0:
            raise FxpruneError(f"the sparsity must be in [0, 1), not {self.fraction}")


@dataclass(frozen=True)
class Decouple:
    """Factorize convs: depthwise + pointwise, or a low-rank pair keeping ``energy`` of the
    output's PCA."""

    method: str
    energy: float = 0.4

    @classmethod
    def dwpw(cls) -> Decouple:
        return cls("dwpw")

    @classmethod
    def lowrank(cls, energy: float = 0.4) -> Decouple:
        if not 0.0 < energy <= 1.0:
            raise FxpruneError(f"the low-rank energy must be in (0, 1], not {energy}")
        return cls("lowrank", energy)

    def __str__(self) -> str:
        return self.method if self.method == "dwpw" else f"lowrank:{self.energy:g}"


DEFAULT_FIT = RecoveryConfig().fit


@dataclass(frozen=True)
class Recovery:
    """Label-free recovery with 1x1 adapters. ``placement`` defaults to ``paper`` for the
    layer-wise schedule and ``cvpr`` otherwise; ``init`` to the identity, except that the
    layer-wise schedule with no ``steps`` solves each layer in closed form (as accurate,
    3x faster); ``steps`` caps the Adam steps of each fit (0 with ``Init.LSTSQ``: the closed
    form only); ``fit`` replaces the whole Adam configuration (experiments)."""

    schedule: Schedule = Schedule.STAGEWISE
    placement: Placement | None = None
    init: Init | None = None
    steps: int | None = None
    # augmented copies of the tiny set as extra pairs; None: enough for MIN_PAIRS pairs
    # (recovery/views.py)
    views: int | None = None
    mix: bool = False  # those views blended with another image
    # the fraction of the tiny set kept out of training to judge (and stop) each fit
    holdout: float = 0.0
    fit: FitConfig | None = field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "schedule", Schedule(self.schedule))
        if self.steps is not None and self.steps < 0:
            raise FxpruneError(f"--steps must be >= 0, not {self.steps}")
        if self.views is not None and self.views < 0:
            raise FxpruneError(f"--views must be >= 0, not {self.views}")
        if not 0 <= self.holdout < 1:
            raise FxpruneError(f"--holdout is a fraction of the tiny set in [0, 1), not "
                               f"{self.holdout}")
        if self.holdout and (self.steps == 0 or self._closed_form):
            raise FxpruneError("--holdout judges gradient fits; the closed form (--steps 0, or "
                               "--schedule layerwise without --steps or --init) has none")
        if self.mix and self.views == 0:
            raise FxpruneError("--mix blends augmented views: it cannot go with --views 0")
        if self.steps == 0 and self.init != Init.LSTSQ:
            raise FxpruneError("0 recovery steps (--steps 0) train nothing; it needs --init "
                               "lstsq (the closed form)")

    @property
    def sites(self) -> Placement:
        if self.placement is not None:
            return Placement(self.placement)
        return Placement.PAPER if self.schedule == Schedule.LAYERWISE else Placement.CVPR

    @property
    def _closed_form(self) -> bool:
        return self.schedule == Schedule.LAYERWISE and self.init is None \
            and self.steps is None and self.fit is None

    def config(self, seed: int, images: int = 0) -> RecoveryConfig:
        """The engine's configuration for a tiny set of ``images`` images (they decide the
        default number of views), every shuffle seeded by ``seed``."""
        closed_form = self._closed_form
        init = Init.LSTSQ if closed_form else Init(self.init or Init.IDENTITY)
        fit = self.fit or (replace(DEFAULT_FIT, max_steps=self.steps) if self.steps
                           else DEFAULT_FIT)
        if closed_form or self.steps == 0:
            fit = None
        else:
            fit = replace(fit, seed=seed)
        return RecoveryConfig(schedule=str(self.schedule), init=str(init), fit=fit,
                              views=views_for(images) if self.views is None else self.views,
                              mix=self.mix, holdout=self.holdout)


@dataclass(frozen=True)
class Options:
    """Everything ``fxprune.plan`` needs to know. ``recovery=None`` inserts no adapter (with a
    ``finetune`` it is the paper's Eq. 4 baseline); ``seed`` seeds every shuffle."""

    drop: Drop | None = field(default_factory=Drop.rule)
    filters: FilterPruning | None = None
    streams: StreamPruning | None = None
    sparsity: Sparsity | None = None
    decouple: Decouple | None = None
    recovery: Recovery | None = field(default_factory=Recovery)
    finetune: FinetuneConfig | None = None
    seed: int = 0

    def __post_init__(self):
        if all(option is None for option in (self.drop, self.filters, self.streams,
                                             self.sparsity, self.decouple)):
            raise FxpruneError("nothing to compress: give --drop IDS|rule|auto, --prune-filters "
                               "RATIO, --prune-streams RATIO, --decouple dwpw|lowrank:E and/or "
                               "--sparsity S")

    @property
    def only_drops(self) -> bool:
        """Blocks are dropped and nothing else compresses."""
        return all(option is None for option in (self.filters, self.streams, self.sparsity,
                                                 self.decouple))
