"""Choosing what to drop: block latencies (cached), recoverability scores, the budgeted choice."""

from fxprune.selection.auto import STRATEGIES, Candidate, Selection, SelectionConfig, select_blocks
from fxprune.selection.block_latency import LatencyCache, block_shares
from fxprune.selection.recoverability import Recoverability

__all__ = ["Candidate", "LatencyCache", "Recoverability", "STRATEGIES", "Selection",
           "SelectionConfig", "block_shares", "select_blocks"]
