"""How well the network recovers when a set of blocks is dropped (PRACTISE v2's
"recoverability", scored on any set of blocks, not only one block alone).

    recoverability(S) = || f_student(S)(x) - f_teacher(x) ||^2 / || f_teacher(x) ||^2

where ``f`` is the last stage's output (the pre-pooling feature map), ``x`` the scoring images,
and ``student(S)`` the network with the blocks ``S`` dropped, adapters inserted and trained
briefly (the default stage-wise recovery with few steps). Lower is better; 0 means the
adapters make the loss invisible at the head. Results are memoised by set.

Sets are scored in batches (``scores``): the students are built one after the other, and
trained as they come by as many worker threads as torch has intra-op threads, each training
with one intra-op thread. The convolutions of a brief recovery are too small for two threads
to share one well (ResNet-56, 50 images: six sets in 33 s with two intra-op threads, 19 s in
two workers of one), and a score does not depend on the number of workers.

Stage-wise recovery trains a stage from what the stages before it left, and the part of a
student up to a stage output depends only on the blocks dropped up to there. So a set that
shares that part with a set already scored (the greedy rounds add one block to the same chosen
set) starts from a copy of those trained adapters and trains only the stages after: the same
result, without training the shared stages again.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import fx

from fxprune.analysis.structure import find_structure
from fxprune.errors import FxpruneWarning
from fxprune.graph import input_name, named_modules, recovery_nodes
from fxprune.meta import adapter_site, stand_in
from fxprune.options import Drop, Options, Recovery
from fxprune.recovery.fit import RECOVERY_BATCH, FitConfig, channels_last
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.recovery.targets import teacher_stages
from fxprune.segments import run_batched, segment
from fxprune.threads import torch_threads

# Not halved with the default recovery (issue 18): 10 steps at lr 2e-3 rank the 27 ResNet-56
# blocks alone alike (Spearman 0.99) and score 1.6x faster, but greedy at budget 0.657 (seed 0)
# then took block 1.3 for 3.3, and the recovered network lost 0.9 points (91.05 vs 91.94 %).
# Minibatches of 16, half the final recovery's: a score only ranks candidates (ResNet-56,
# budget 0.657, 50 images, 5 seeds: 71.6 s and top-1 90.58 ± 0.55 against 99.8 s and
# 90.23 ± 1.00 with minibatches of 32; tools/results/speed.md).
SCORING_BATCH = RECOVERY_BATCH // 2
BRIEF_RECOVERY = RecoveryConfig(fit=FitConfig(lr=1e-3, max_steps=20, patience=5,
                                                batch_size=SCORING_BATCH))


class Recoverability:
    """``scorer(block_ids)`` -> relative feature MSE after a brief recovery (memoised)."""

    def __init__(self, teacher: fx.GraphModule, images: torch.Tensor,
                 recovery: RecoveryConfig = BRIEF_RECOVERY, placement: str = "cvpr",
                 batch_size: int = 256):
        self.teacher = teacher.eval()
        self.structure = find_structure(teacher)
        self.images = images
        self.recovery = recovery
        self.placement = placement
        self.batch_size = batch_size
        self.source = input_name(teacher)
        self.feature = self.structure.last_exit
        self.target = self._feature(teacher)
        # what every candidate's recovery mimics, computed once (as recover would: in
        # channels-last memory, so that a score does not depend on who computed them)
        self.stages = None
        if recovery.trains_on_given_images:
            with channels_last(teacher):
                self.stages = teacher_stages(
                    teacher, images.contiguous(memory_format=torch.channels_last), batch_size)
        self.scale = float(self.target.pow(2).mean()) or 1.0
        self.scores_by_set: dict[frozenset[str], float] = {}
        self._local = threading.local()
        # (blocks dropped up to a stage, adapter sites before its output) -> trained adapters
        self._trained: dict[tuple, dict[object, dict[str, torch.Tensor]]] = {}
        blocks = [{block.id for block in stage.blocks} for stage in self.structure.stages]
        self._dropped_up_to = [set().union(*blocks[:index + 1]) for index in range(len(blocks))]

    def _feature(self, gm: fx.GraphModule) -> torch.Tensor:
        part = segment(gm, [self.source], [stand_in(gm, self.feature)])
        return run_batched(part, [self.images], self.batch_size)[0]

    def student(self, block_ids: Iterable[str]) -> fx.GraphModule:
        """The teacher with ``block_ids`` dropped and adapters inserted (untrained): the
        rewriting of the plan that drops them."""
        from fxprune.plan import plan  # the planner itself uses this module for Drop.auto

        ids = list(block_ids)
        if not ids:
            return copy.deepcopy(self.teacher)
        options = Options(drop=Drop.blocks(*ids), recovery=Recovery(placement=self.placement))
        with warnings.catch_warnings():  # a candidate with no adapter site is scored as it is
            warnings.simplefilter("ignore", FxpruneWarning)
            planned = plan(self.teacher, options, input_size=tuple(self.images.shape[1:]),
                           progress=False)
        # the plan is this call's own: its rewriting is taken, not copied
        return planned.rewritten if planned.rewritten is not None else planned.rewrite()

    def __call__(self, block_ids: Iterable[str]) -> float:
        return self.scores([block_ids])[0]

    def scores(self, block_sets: Sequence[Iterable[str]],
               done: Callable[[], None] = lambda: None) -> list[float]:
        """The score of every set (memoised); ``done()`` is called as each new one is
        scored."""
        keys = [frozenset(ids) for ids in block_sets]
        new = [key for key in dict.fromkeys(keys) if key not in self.scores_by_set]
        workers = min(torch.get_num_threads(), len(new)) or 1
        with torch_threads(1), ThreadPoolExecutor(workers) as pool:
            # planning is Python-bound: students are built here while the workers train
            running = [(key, pool.submit(self._recovered_error, key, *self._prepared(key)))
                       for key in new]
            for key, future in running:
                self.scores_by_set[key] = future.result()
                done()
        return [self.scores_by_set[key] for key in keys]

    def _prepared(self, key: frozenset[str]) -> tuple[fx.GraphModule, set[str]]:
        """The student of ``key``, with the adapters of its longest stage prefix already
        recovered copied in, and their names."""
        student = self.student(sorted(key))
        modules = named_modules(student)
        if self.recovery.schedule == "stagewise":
            for prefix, adapters in reversed(self._stage_prefixes(student, key)):
                states = self._trained.get(prefix)
                if states is not None and adapters:
                    for node in adapters:
                        modules[node.target].load_state_dict(states[_site(node)])
                    return student, {node.name for node in adapters}
        return student, set()

    def _stage_prefixes(self, student: fx.GraphModule, key: frozenset[str]
                        ) -> list[tuple[tuple, list[fx.Node]]]:
        """For every stage output of ``student``: what identifies the student up to there
        (blocks dropped up to that stage, adapter sites before it) and those adapters."""
        order = {node.name: index for index, node in enumerate(student.graph.nodes)}
        trained = recovery_nodes(student)
        prefixes = []
        for stage, dropped in zip(self.structure.stages, self._dropped_up_to):
            cut = order[stand_in(student, stage.output)]
            before = [node for node in trained if order[node.name] < cut]
            prefixes.append(((key & dropped, frozenset(map(_site, before))), before))
        return prefixes

    def _recovered_error(self, key: frozenset[str], student: fx.GraphModule,
                         trained: set[str]) -> float:
        if key:
            recover(self._own_teacher(), student, self.images, self.recovery, progress=False,
                    trained=trained, stages=self.stages)
            modules = named_modules(student)
            for prefix, adapters in self._stage_prefixes(student, key):
                self._trained.setdefault(prefix, {
                    _site(node): {name: value.detach().clone() for name, value
                                  in modules[node.target].state_dict().items()}
                    for node in adapters})
        error = torch.nn.functional.mse_loss(self._feature(student), self.target)
        return float(error) / self.scale

    def _own_teacher(self) -> fx.GraphModule:
        """The teacher, copied once per worker thread: recovery switches its memory format
        while it trains."""
        if not hasattr(self._local, "teacher"):
            self._local.teacher = copy.deepcopy(self.teacher)
        return self._local.teacher

    @property
    def evaluations(self) -> int:
        return len(self.scores_by_set)


def _site(node: fx.Node) -> object:
    """What identifies a trained node across students: its adapter site, else its name."""
    return adapter_site(node) or node.name
