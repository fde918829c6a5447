"""A benchmark's resumable results: the JSON of the cells done so far, and the markdown table
rebuilt from it after every cell, so an interrupted sweep loses at most the cell it was in, and
two sweeps writing the same file keep each other's cells."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch


class ResultsFile:
    def __init__(self, stem: Path, summarize: Callable[[dict], str]):
        self.json_path, self.md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
        self.summarize = summarize

    def load(self) -> dict:
        """The results so far, or a fresh ``{"cells": {}}``."""
        return json.loads(self.json_path.read_text()) if self.json_path.exists() \
            else {"cells": {}}

    def save(self, results: dict) -> None:
        """Write ``results``, first adopting the cells (and the rows of a cell) that another
        run of the same benchmark saved meanwhile: two sweeps may share a file. A lock file
        serialises the read-merge-write; each file is replaced atomically."""
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.json_path.with_name(f".{self.json_path.name}.lock")
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            for key, cell in self.load()["cells"].items():
                mine = results["cells"].setdefault(key, cell)
                if isinstance(mine, dict) and isinstance(cell, dict):
                    for row, value in cell.items():
                        mine.setdefault(row, value)
            _replace(self.json_path, json.dumps(results, indent=1))
            _replace(self.md_path, self.summarize(results).rstrip("\n") + "\n")


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def add_run_arguments(parser: argparse.ArgumentParser, output: Path) -> None:
    """``--threads`` (torch threads; 1 leaves a core free) and ``--output`` (results stem)."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--output", type=Path, default=output,
                        help="results path without suffix (.json and .md are written)")


def open_results(args: argparse.Namespace, summarize: Callable[[dict], str]
                 ) -> tuple[ResultsFile, dict]:
    """Applies ``--threads``; the results file named by ``--output`` and what it holds."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    file = ResultsFile(args.output, summarize)
    return file, file.load()


def run_record(script: str, argv: list[str] | None, **versions: str) -> dict:
    """What a results file records about the run that made it: the exact command, the commit,
    library versions, threads and machine."""
    import platform
    import subprocess

    import onnxruntime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    return {"command": " ".join([".venv/bin/python", script,
                                 *(argv if argv is not None else sys.argv[1:])]),
            "commit": commit or "unknown", "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         **versions}}


def open_sweep(description: str, models: list[str], output: Path,
               summarize: Callable[[dict], str], script: str, argv: list[str] | None,
               **versions: str):
    """A model sweep's command line (``--models``, ``--threads``, ``--output``) and its
    results file, stamped with ``run_record``: returns (args, file, results)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=list(models))
    add_run_arguments(parser, output)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize)
    results.update(run_record(script, argv, **versions))
    return args, file, results
