"""The ``fxprune`` command line. User mistakes print one line and exit with status 2."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from fxprune.commands import bench, compress, demo, inspect, report
from fxprune.errors import FxpruneError, FxpruneWarning

COMMANDS = [demo, inspect, compress, bench, report]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxprune", description="Compress pretrained CNNs with torch.fx graph rewrites and "
                                    "recover accuracy from a tiny image set (PRACTISE).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", FxpruneWarning)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        return _run(args)


def _one_line_warnings(show):
    """fxprune's own warnings as ``fxprune: warning: ...`` lines; others as usual."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FxpruneWarning):
            print(f"fxprune: warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except FxpruneError as error:
        print(f"fxprune: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fxprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
