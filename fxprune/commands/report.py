"""``fxprune report DIR...``: several compress runs in one table and one trade-off plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fxprune.commands.common import atomic_output
from fxprune.errors import FxpruneError
from fxprune.render import merge_reports


def register(commands) -> None:
    parser = commands.add_parser(
        "report", help="compare several compress output folders in one table and plot")
    parser.add_argument("runs", nargs="+", type=Path, metavar="DIR",
                        help="compress output folders (each holding report.json)")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for report.md and tradeoff.png")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    parser.set_defaults(run=run)


def read_report(folder: Path) -> dict:
    path = folder / "report.json"
    if not path.is_file():
        raise FxpruneError(f"{folder} is not a compress output folder (no report.json)")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FxpruneError(f"{path} is not valid JSON ({error})") from error
    missing = [key for key in ("original", "pruned", "compressed", "drop", "recover",
                               "finetune", "images", "seconds") if key not in report]
    if missing:
        raise FxpruneError(f"{path} lacks {', '.join(missing)}: not a compress report")
    return report


def run(args: argparse.Namespace) -> int:
    names = [folder.name for folder in args.runs]
    if len(set(names)) != len(names):  # fall back to paths when folder names collide
        names = [str(folder) for folder in args.runs]
    reports = [(name, read_report(folder)) for name, folder in zip(names, args.runs)]
    with atomic_output(args.out, args.force) as staging:
        markdown = merge_reports(reports, staging)
    print(markdown, end="")
    print(f"outputs in {args.out}")
    return 0
