"""Choosing what to drop: block latencies (cached), recoverability scores, the budgeted choice."""

from fxprune.selection.auto import STRATEGIES, Candidate, Selection, SelectionConfig, select_blocks
from fxprune.selection.block_latency import LatencyCache, block_latencies
from fxprune.selection.recoverability import Recoverability

__all__ = ["Candidate", "LatencyCache", "Recoverability", "STRATEGIES", "Selection",
           "SelectionConfig", "block_latencies", "select_blocks"]
