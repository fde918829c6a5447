"""How well the network recovers when a set of blocks is dropped (PRACTISE v2's
"recoverability", scored on any set of blocks, not only one block alone).

    recoverability(S) = || f_student(S)(x) - f_teacher(x) ||^2 / || f_teacher(x) ||^2

where ``f`` is the last stage's output (the pre-pooling feature map), ``x`` the scoring images,
and ``student(S)`` the network with the blocks ``S`` dropped, adapters inserted and trained
briefly (the default stage-wise recovery with few steps). Lower is better; 0 means the
adapters make the loss invisible at the head. Results are memoised by set.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import fx

from fxprune.analysis.structure import find_structure
from fxprune.errors import FxpruneWarning
from fxprune.meta import stand_in
from fxprune.options import Drop, Options, Recovery
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig, recover
from fxprune.segments import run_batched, segment

# Not halved with the default recovery (issue 18): 10 steps at lr 2e-3 rank the 27 ResNet-56
# blocks alone alike (Spearman 0.99) and score 1.6x faster, but greedy at budget 0.657 (seed 0)
# then took block 1.3 for 3.3, and the recovered network lost 0.9 points (91.05 vs 91.94 %).
BRIEF_RECOVERY = RecoveryConfig(fit=FitConfig(lr=1e-3, max_steps=20, patience=5))


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
        self.source = next(node.name for node in teacher.graph.nodes if node.op == "placeholder")
        self.feature = self.structure.last_exit
        self.target = self._feature(teacher)
        self.scale = float(self.target.pow(2).mean()) or 1.0
        self.scores: dict[frozenset[str], float] = {}

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
        return planned.rewrite()

    def __call__(self, block_ids: Iterable[str]) -> float:
        key = frozenset(block_ids)
        if key not in self.scores:
            student = self.student(sorted(key))
            if key:
                recover(self.teacher, student, self.images, self.recovery, progress=False)
            error = torch.nn.functional.mse_loss(self._feature(student), self.target)
            self.scores[key] = float(error) / self.scale
        return self.scores[key]

    @property
    def evaluations(self) -> int:
        return len(self.scores)
