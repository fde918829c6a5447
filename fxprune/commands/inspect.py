"""``fxprune inspect``: stages, blocks, MACs and params of a model."""

from __future__ import annotations

import argparse
import json

from fxprune.commands.common import add_model_arguments, load_and_trace
from fxprune.summary import format_table, summarize


def register(commands) -> None:
    parser = commands.add_parser("inspect", help="stages, blocks, MACs and params of a model")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loaded, size, gm = load_and_trace(args)
    summary = summarize(gm, size)
    if args.json:
        print(json.dumps({"model": args.model, "weights": loaded.weights, **summary}))
    else:
        print(f"{args.model}  (weights: {loaded.weights or 'random init'})")
        print(format_table(summary))
    return 0
