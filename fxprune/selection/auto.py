"""Choose the blocks to drop so the network meets a latency budget and recovers best.

Given a budget ``R`` (the compressed model's ONNX Runtime latency at most ``R`` times the
original's, at the user's batch and threads):

1. every droppable block's own latency ``t_b`` is measured, as a fraction of the network's
   (``block_latency``; cached);
2. every block is scored alone: ``r_b`` = recoverability of dropping ``b`` alone, and its cost
   per share of latency saved is ``r_b / t_b``;
3. ``"alone"`` (what the CVPR'23 code does) drops the blocks of lowest ``r_b / t_b`` until the
   savings reach ``(1 - R)`` of the original latency. ``"greedy"`` (the default) builds the set
   one block at a time: each round re-scores the ``shortlist`` best-ranked remaining blocks
   *together with the blocks already chosen* and takes the one whose marginal
   ``(r(S + b) - r(S)) / t_b`` is lowest, so two blocks that are harmless alone but not
   together (adjacent blocks, a stage emptied) are not both taken on their solo scores. The
   shortlist is re-scored lazily, two at a time, until the best re-scored block ranks ahead
   of the next one's earlier score (marginals grow as blocks go);
4. the chosen set is checked by timing the whole pruned network against the original,
   interleaved; while it misses the budget the next-ranked block is added.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx
from tqdm.auto import tqdm

from fxprune.analysis.droppable import nothing_to_drop
from fxprune.analysis.structure import find_structure
from fxprune.errors import FxpruneError, FxpruneWarning
from fxprune.export import export_onnx
from fxprune.latency import bench_input, interleaved_seconds, latency_ratio, onnx_runner
from fxprune.passes import DropBlocks
from fxprune.recovery.practise import RecoveryConfig
from fxprune.selection.block_latency import LatencyCache, block_shares
from fxprune.selection.recoverability import BRIEF_RECOVERY, Recoverability

STRATEGIES = ("greedy", "alone")
# greedy re-scores its shortlist this many at a time (fixed, so that the choice does not
# depend on the machine's threads; two workers score them in parallel)
RESCORED_TOGETHER = 2
MAX_EXTRA_BLOCKS = 3  # blocks added when the measured latency misses the budget
CHECK_ROUNDS, CHECK_BUDGET_S = 200, 20.0  # timing the chosen set against the original


@dataclass(frozen=True)
class SelectionConfig:
    budget: float  # latency ratio R in (0, 1)
    strategy: str = "greedy"
    batch: int = 1
    threads: int = 1
    shortlist: int = 3
    score_images: int = 128  # the first images of the tiny set score the candidates
    recovery: RecoveryConfig = BRIEF_RECOVERY
    placement: str = "cvpr"
    cache: str | Path | None = None  # None: the default cache file; see block_latency

    def __post_init__(self):
        if not 0 < self.budget < 1:
            raise FxpruneError(f"latency budget must be a ratio in (0, 1), not {self.budget}")
        if self.strategy not in STRATEGIES:
            raise FxpruneError(f"unknown selection strategy '{self.strategy}' "
                               f"(use {', '.join(STRATEGIES)})")
        if self.shortlist < 1 or self.score_images < 1:
            raise FxpruneError("shortlist and score_images must be at least 1")


@dataclass
class Candidate:
    block: str
    saved: float  # the block's own latency, as a fraction of the original's
    alone: float  # recoverability of dropping it alone
    marginal: float | None = None  # r(chosen + it) - r(chosen) when it was last re-scored
    round: int | None = None  # 1-based round it was chosen in, None if not chosen
    reason: str = ""

    @property
    def cost(self) -> float:
        return self.alone / self.saved


@dataclass
class Selection:
    blocks: list[str]
    strategy: str
    budget: float
    original_ms: float
    predicted_ratio: float  # 1 - the chosen blocks' shares of the original latency
    measured_ratio: float  # the pruned network against the original, timed interleaved
    recoverability: float  # of the chosen set
    candidates: list[Candidate] = field(default_factory=list)
    evaluations: int = 0
    timed_blocks: int = 0  # distinct blocks timed (0: all from the cache)
    seconds: float = 0.0

    def as_report(self) -> dict:
        return asdict(self)


def whole_ratio(teacher: fx.GraphModule, ids: Sequence[str], input_size, batch: int,
                 threads: int, scratch: Path) -> tuple[float, float]:
    """(latency of ``teacher`` without blocks ``ids`` / the original's (``latency_ratio``),
    the original's median ms), timed interleaved; ``scratch`` keeps the
    original's ONNX file between calls."""
    pruned = DropBlocks(list(ids))(copy.deepcopy(teacher)).graph_module
    original = scratch / "original.onnx"
    if not original.exists():  # the same teacher for every check of one selection
        export_onnx(teacher, input_size, original)
    inputs = bench_input(input_size, batch)
    runners = [onnx_runner(path, inputs, threads) for path in
               (original, export_onnx(pruned, input_size, scratch / "pruned.onnx"))]
    first, second = interleaved_seconds(runners, 3, CHECK_ROUNDS, CHECK_BUDGET_S)
    return latency_ratio(second, first), float(np.median(first)) * 1e3


def select_blocks(teacher: fx.GraphModule, images: torch.Tensor, input_size: Sequence[int],
                  config: SelectionConfig, progress: bool = True,
                  scorer: Recoverability | None = None) -> Selection:
    """The blocks of ``teacher`` (a traced network, left untouched) to drop under
    ``config.budget``; see the module docstring. A ``scorer`` built on the same teacher and
    images can be shared between calls (its scores are memoised); a stand-in needs
    ``scores(block_sets, done)``, ``__call__(block_ids)`` and ``evaluations``. Raises ``FxpruneError`` when
    even dropping every droppable block cannot meet the budget; warns when the measured
    latency still misses it after ``MAX_EXTRA_BLOCKS`` more blocks."""
    start = time.perf_counter()
    size = tuple(input_size)
    structure = find_structure(teacher)
    droppable = [block for block in structure.blocks if block.droppable]
    if not droppable:
        raise FxpruneError(f"--drop auto: nothing to drop: {nothing_to_drop(structure, teacher)}")
    cache = LatencyCache(config.cache)
    saved, timed = block_shares(teacher, droppable, size, config.batch, config.threads, cache)
    need = 1 - config.budget
    if sum(saved.values()) < need:
        raise FxpruneError(
            f"latency budget {config.budget} cannot be met by dropping blocks: all "
            f"{len(droppable)} droppable blocks together take {sum(saved.values()):.0%} of "
            f"the original's latency (batch {config.batch}, {config.threads} thread(s)); the "
            f"lowest reachable ratio is about {1 - sum(saved.values()):.2f}")
    scorer = scorer or Recoverability(teacher, images[:config.score_images], config.recovery,
                                      config.placement)
    with tqdm(total=len(droppable), desc="score blocks", leave=False,
              disable=not progress or None) as bar:
        alone = scorer.scores([[block.id] for block in droppable], bar.update)
    candidates = {block.id: Candidate(block.id, max(saved[block.id], 1e-6), score)
                  for block, score in zip(droppable, alone)}
    chosen = _choose(candidates, scorer, need, config, progress)
    with tempfile.TemporaryDirectory(prefix="fxprune-select-") as scratch:
        ratio, original_ms = whole_ratio(teacher, chosen, size, config.batch, config.threads,
                                          Path(scratch))
        extra = 0
        while ratio > config.budget and extra < MAX_EXTRA_BLOCKS:
            remaining = sorted((c for c in candidates.values() if c.round is None),
                               key=_rank)
            if not remaining:
                break
            remaining[0].round = len(chosen) + 1
            remaining[0].reason = (f"added: the chosen set measured x{ratio:.3f} > budget "
                                   f"x{config.budget}")
            chosen.append(remaining[0].block)
            extra += 1
            ratio, original_ms = whole_ratio(teacher, chosen, size, config.batch,
                                              config.threads, Path(scratch))
    if ratio > config.budget:
        warnings.warn(f"--drop auto: blocks {', '.join(chosen)} measured x{ratio:.3f} of the "
                      f"original's latency, over the budget x{config.budget} (a busy machine "
                      "makes timings noisy; fxprune bench --vs measures longer)", FxpruneWarning,
                      stacklevel=2)
    for candidate in candidates.values():
        if candidate.round is None:
            candidate.reason = candidate.reason or "not needed: the budget was met without it"
    predicted = 1 - sum(saved[block] for block in chosen)
    return Selection(chosen, config.strategy, config.budget, original_ms, predicted, ratio,
                     scorer(chosen), list(candidates.values()), scorer.evaluations, timed,
                     time.perf_counter() - start)


def _rank(candidate: Candidate) -> tuple[float, float]:
    """Sort key, best first: recoverability lost per latency share saved (the marginal one
    once re-scored; a negative marginal, noise of a brief recovery, counts as 0), then the
    larger saving."""
    lost = candidate.alone if candidate.marginal is None else max(candidate.marginal, 0.0)
    return lost / candidate.saved, -candidate.saved


def _rescore(shortlist: list[Candidate], chosen: list[str], current: float,
             scorer: Recoverability) -> list[Candidate]:
    """Re-score the shortlist's marginals with ``chosen`` dropped, ``RESCORED_TOGETHER`` at
    a time in rank order, stopping once the best re-scored candidate ranks ahead of every
    one not re-scored yet: a marginal only grows as more blocks go (in the noise of a brief
    recovery), so a later one would not have won. Returns the candidates re-scored."""
    done: list[Candidate] = []
    while len(done) < len(shortlist):
        wave = shortlist[len(done):len(done) + RESCORED_TOGETHER]
        for candidate, score in zip(wave, scorer.scores(
                [[*chosen, candidate.block] for candidate in wave])):
            candidate.marginal = score - current
        done += wave
        if len(done) < len(shortlist) and \
                _rank(min(done, key=_rank)) <= _rank(shortlist[len(done)]):
            break
    return done


def _choose(candidates: dict[str, Candidate], scorer: Recoverability, need: float,
            config: SelectionConfig, progress: bool) -> list[str]:
    """Block ids in the order chosen, until their latency shares add up to ``need``."""
    chosen: list[str] = []
    current = 0.0
    bar = tqdm(total=round(100 * need, 1), desc="choose blocks", leave=False,
               unit="% latency", disable=not progress or None)
    while sum(candidates[block].saved for block in chosen) < need - 1e-9:
        remaining = sorted((c for c in candidates.values() if c.round is None), key=_rank)
        if not remaining:
            break
        if config.strategy == "alone":
            best = remaining[0]
            best.reason = (f"rank {len(chosen) + 1} by recoverability alone per latency "
                           f"share saved ({best.cost:.4g})")
        else:
            shortlist = _rescore(remaining[:config.shortlist], chosen, current, scorer)
            best = min(shortlist, key=_rank)
            best.reason = (f"lowest marginal recoverability per latency share saved with "
                           f"{{{', '.join(chosen) or 'nothing'}}} dropped "
                           f"({best.marginal:.4g} / {best.saved:.1%}) among "
                           f"{', '.join(c.block for c in shortlist)}")
            current += best.marginal
        best.round = len(chosen) + 1
        chosen.append(best.block)
        bar.update(round(100 * best.saved, 1))
    bar.close()
    return chosen
