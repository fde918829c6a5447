"""``--drop auto``: block latencies and their cache, recoverability, the budgeted choice."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fxprune import Drop, Options, compress, find_structure
from fxprune.errors import FxpruneError, FxpruneWarning
from fxprune.models import cifar_resnet
from fxprune.recovery.fit import FitConfig
from fxprune.recovery.practise import RecoveryConfig
from fxprune.render import render_report
from fxprune.selection import (LatencyCache, Recoverability, SelectionConfig, block_shares,
                               select_blocks)
from fxprune.selection import auto
from fxprune.threads import torch_threads
from fxprune.tracing import example_input
from tests.helpers import SMALL_SIZE

QUICK = RecoveryConfig(fit=FitConfig(lr=1e-3, max_steps=3, patience=2))


@pytest.fixture
def images():
    return example_input(SMALL_SIZE, batch=12, seed=5)


@pytest.fixture
def fake_latency(monkeypatch):
    """Every block takes 10% of a 10 ms network; the whole network measures
    ``1 - per_block * len(blocks)`` (``per_block`` settable), so tests are deterministic."""
    state = {"per_block": 0.1}

    def shares(gm, blocks, input_size, batch, threads, cache):
        return {block.id: 0.1 for block in blocks}, len(blocks)

    def whole_ratio(teacher, ids, size, batch, threads, scratch):
        return 1 - state["per_block"] * len(ids), 10.0

    monkeypatch.setattr(auto, "block_shares", shares)
    monkeypatch.setattr(auto, "whole_ratio", whole_ratio)
    return state


def test_block_shares_are_cached_and_shared_by_identical_blocks(small_resnet, tmp_path):
    blocks = [block for block in find_structure(small_resnet).blocks if block.droppable]
    cache = LatencyCache(tmp_path / "cache" / "latency.json")
    first, timed = block_shares(small_resnet, blocks, SMALL_SIZE, batch=2, threads=1,
                                cache=cache)
    assert set(first) == {block.id for block in blocks}
    assert all(0 < share < 1 for share in first.values())
    # blocks 1.2 and 1.3 are the same operations on the same shapes: one timing serves both
    assert first["1.2"] == first["1.3"] and first["2.2"] == first["2.3"]
    assert timed == 3  # one signature per stage
    again, timed_again = block_shares(small_resnet, blocks, SMALL_SIZE, 2, 1,
                                      LatencyCache(tmp_path / "cache" / "latency.json"))
    assert timed_again == 0 and again == first
    _, other_batch = block_shares(small_resnet, blocks, SMALL_SIZE, 4, 1, cache)
    assert other_batch == 3  # the batch is part of the key


def test_unreadable_cache_is_reported_and_rebuilt(tmp_path):
    path = tmp_path / "latency.json"
    path.write_text("{ not json")
    with pytest.warns(FxpruneWarning, match="unreadable"):
        cache = LatencyCache(path)
    cache.put({"key": 1.5})
    assert json.loads(path.read_text()) == {"key": 1.5}


def test_recoverability(small_resnet, images):
    scorer = Recoverability(small_resnet, images, QUICK)
    assert scorer([]) == 0.0  # nothing dropped: the student is the teacher
    untrained = scorer.student(["1.2"])
    feature = scorer._feature(untrained)
    before = float(torch.nn.functional.mse_loss(feature, scorer.target)) / scorer.scale
    after = scorer(["1.2"])
    assert 0 < after < before  # the brief recovery helps
    assert scorer(["1.2"]) == after and scorer.evaluations == 2  # memoised


def test_a_scoring_recovery_with_a_holdout_computes_its_own_stages(small_resnet, images):
    """A holdout trains on part of the images, so the teacher's features on all of them
    cannot be shared between candidates: each recovery computes its own."""
    scorer = Recoverability(small_resnet, images, replace(QUICK, holdout=0.25))
    assert scorer.stages is None
    assert scorer(["1.2"]) > 0


def test_scores_do_not_depend_on_workers_or_on_what_was_scored_before(small_resnet, images):
    """A set scored in a batch by two workers, or after a set sharing its first stage (whose
    trained adapters it then reuses), scores exactly what it scores alone, one worker."""
    sets = [["1.2", "2.2"], ["1.2", "3.2"], ["2.2"]]
    with torch_threads(1):
        alone = [Recoverability(small_resnet, images, QUICK)(ids) for ids in sets]
    scorer = Recoverability(small_resnet, images, QUICK)
    with torch_threads(2):
        assert scorer(["1.2"]) > 0
        reused = scorer._prepared(frozenset(sets[0]))[1]
        assert len(reused) == 2  # after block 1.1 and before block 1.3 (cvpr sites)
        assert scorer.scores(sets) == alone
    assert scorer.evaluations == 4


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["greedy", "alone"])
def test_choice_meets_the_budget(small_resnet, images, fake_latency, strategy, tmp_path):
    config = SelectionConfig(0.75, strategy=strategy, recovery=QUICK, cache=tmp_path / "c.json")
    selection = select_blocks(small_resnet, images, SMALL_SIZE, config, progress=False)
    assert len(selection.blocks) == 3  # 25% of the latency must go: three 10% blocks
    assert selection.measured_ratio == pytest.approx(0.7)
    assert selection.predicted_ratio == pytest.approx(0.7)
    rounds = {c.block: c.round for c in selection.candidates if c.round is not None}
    assert [b for b, _ in sorted(rounds.items(), key=lambda item: item[1])] == selection.blocks
    alone = sorted(selection.candidates, key=lambda c: c.alone)
    if strategy == "alone":
        assert set(selection.blocks) == {c.block for c in alone[:3]}
    else:  # every round re-scored its shortlist with the blocks chosen before
        chosen = [c for c in selection.candidates if c.round is not None]
        assert all(c.marginal is not None for c in chosen)
    assert all(c.reason for c in selection.candidates) and selection.recoverability > 0


@pytest.mark.slow
def test_blocks_are_added_when_the_measurement_misses(small_resnet, images, fake_latency,
                                                      tmp_path):
    fake_latency["per_block"] = 0.06  # blocks save less than their own timing predicts
    config = SelectionConfig(0.8, strategy="alone", recovery=QUICK, cache=tmp_path / "c.json")
    selection = select_blocks(small_resnet, images, SMALL_SIZE, config, progress=False)
    assert len(selection.blocks) == 4 and selection.measured_ratio == pytest.approx(0.76)
    added = [c for c in selection.candidates if c.reason.startswith("added")]
    assert len(added) == 2


def test_unreachable_budget(small_resnet, images, fake_latency, tmp_path):
    config = SelectionConfig(0.2, recovery=QUICK, cache=tmp_path / "c.json")
    with pytest.raises(FxpruneError, match="lowest reachable ratio is about 0.30"):
        select_blocks(small_resnet, images, SMALL_SIZE, config, progress=False)


@pytest.mark.slow
def test_compress_with_auto_drop(images, fake_latency, tmp_path):
    drop = Drop.auto(0.85, recovery=QUICK, cache=tmp_path / "c.json")
    result = compress(cifar_resnet(20).eval(), images, SMALL_SIZE, Options(drop=drop),
                      progress=False)
    report = result.report.as_json()
    assert report["drop"] == report["auto"]["blocks"] and len(report["drop"]) == 2
    assert report["compressed"]["macs"] < report["original"]["macs"]
    assert "Automatic block choice (greedy)" in render_report(report)
    with pytest.raises(FxpruneError, match="latency budget must be a ratio in"):
        Drop.auto(0.0)


@pytest.mark.slow
def test_a_budget_still_missed_is_reported(small_resnet, images, fake_latency, tmp_path):
    fake_latency["per_block"] = 0.01  # the network barely speeds up, whatever is dropped
    config = SelectionConfig(0.8, strategy="alone", recovery=QUICK, cache=tmp_path / "c.json")
    with pytest.warns(FxpruneWarning, match="over the budget"):
        selection = select_blocks(small_resnet, images, SMALL_SIZE, config, progress=False)
    assert len(selection.blocks) == 2 + auto.MAX_EXTRA_BLOCKS


@pytest.mark.slow
def test_signatures_are_stable_across_processes(tmp_path):
    """The cache key holds no object address, so another process computes the same key."""
    script = ("import sys; sys.path.insert(0, {root!r})\n"
              "from fxprune import find_structure, trace\n"
              "from fxprune.models import cifar_resnet\n"
              "from fxprune.selection.block_latency import signature\n"
              "gm = trace(cifar_resnet(20).eval(), (3, 16, 16))\n"
              "block = find_structure(gm).block('1.2')\n"
              "print(signature(gm, block.nodes, block.in_shape, 1, 1))\n")
    root = str(Path(__file__).resolve().parent.parent)
    keys = {subprocess.run([sys.executable, "-c", script.format(root=root)], check=True,
                           capture_output=True, text=True).stdout.strip() for _ in range(2)}
    assert len(keys) == 1 and len(keys.pop()) == 24


class PairScorer:
    """Blocks 1.2 and 1.3 cost little alone and a lot together; every other block costs 0.05
    (1.1 0.04). Counts its distinct evaluations like ``Recoverability``."""

    def __init__(self):
        self.seen = set()

    def __call__(self, ids):
        ids = frozenset(ids)
        self.seen.add(ids)
        alone = {"1.2": 0.01, "1.3": 0.011, "1.1": 0.04}
        return sum(alone.get(block, 0.05) for block in ids) + (
            1.0 if {"1.2", "1.3"} <= ids else 0.0)

    def scores(self, block_sets, done=lambda: None):
        return [self(ids) for ids in block_sets]

    @property
    def evaluations(self):
        return len(self.seen)


@pytest.mark.parametrize("strategy, expected", [("alone", {"1.2", "1.3"}),
                                                ("greedy", {"1.2", "1.1"})])
def test_greedy_rescoring_avoids_a_pair_that_hurts_together(small_resnet, images, fake_latency,
                                                             tmp_path, strategy, expected):
    config = SelectionConfig(0.85, strategy=strategy, cache=tmp_path / "c.json")
    selection = select_blocks(small_resnet, images, SMALL_SIZE, config, progress=False,
                              scorer=PairScorer())
    assert set(selection.blocks) == expected
    assert selection.recoverability == pytest.approx(0.05 if strategy == "greedy" else 1.021)
