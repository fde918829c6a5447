"""The one harness of the benchmarks in tools/: what a run records about itself
(``run_record``: command, commit, library versions, threads, machine), resumable results files
whose every new cell or row carries that record (``ResultsFile``), the command-line options the
tools share, and ``write_results`` for a tool that writes its results whole in one run."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

RUN_KEY = "run"  # where a cell or row keeps the record of the run that measured it


def run_record(script: str, argv: list[str] | None, **versions: str) -> dict:
    """What a result records about the run that made it: the exact command, the commit,
    library versions (torch, onnxruntime and ``versions``), torch threads and machine."""
    import onnxruntime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    return {"command": " ".join([".venv/bin/python", script,
                                 *(argv if argv is not None else sys.argv[1:])]),
            "commit": commit or "unknown", "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         **versions}}


class ResultsFile:
    """A benchmark's resumable results: the JSON of the cells done so far, and the markdown
    table rebuilt from it after every cell, so an interrupted sweep loses at most the cell it
    was in, and two sweeps writing the same file keep each other's cells.

    A cell is a dict of measurements, or, with ``rows=True``, a dict of rows (one dict of
    measurements per method). Every cell (or row) this run adds or changes gets ``run``'s
    record under ``RUN_KEY`` when saved: cells of one file may come from different runs."""

    def __init__(self, stem: Path, summarize: Callable[[dict], str], run: dict,
                 rows: bool = False):
        self.json_path, self.md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
        self.summarize, self.run, self.rows = summarize, run, rows

    def load(self) -> dict:
        """The results so far, or a fresh ``{"cells": {}}``."""
        return json.loads(self.json_path.read_text()) if self.json_path.exists() \
            else {"cells": {}}

    def save(self, results: dict) -> None:
        """Write ``results``, first stamping what this run measured and adopting the cells
        (and the rows of a cell) that another run of the same benchmark saved meanwhile: two
        sweeps may share a file. A lock file serialises the read-merge-write; each file is
        replaced atomically."""
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.json_path.with_name(f".{self.json_path.name}.lock")
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            saved = self.load()["cells"]
            self._stamp(results["cells"], saved)
            for key, cell in saved.items():
                mine = results["cells"].setdefault(key, cell)
                if isinstance(mine, dict) and isinstance(cell, dict):
                    for row, value in cell.items():
                        mine.setdefault(row, value)
            _replace(self.json_path, json.dumps(results, indent=1))
            _replace(self.md_path, self.summarize(results).rstrip("\n") + "\n")

    def _stamp(self, cells: dict, saved: dict) -> None:
        """Stamp every cell (row) that is not in the file as it is there. An unstamped one
        that is (a run before runs were recorded) stays unstamped."""
        for key, cell in cells.items():
            pairs = ([(row, saved.get(key, {}).get(name)) for name, row in cell.items()]
                     if self.rows else [(cell, saved.get(key))])
            for record, on_disk in pairs:
                if RUN_KEY not in record and record != on_disk:
                    record[RUN_KEY] = self.run


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def write_results(stem: Path, results: dict, markdown: str, run: dict) -> None:
    """Results measured whole in one run: ``stem.json`` (``run``'s record, then ``results``)
    and ``stem.md``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    _replace(stem.with_suffix(".json"), json.dumps({**run, **results}, indent=1))
    _replace(stem.with_suffix(".md"), markdown.rstrip("\n") + "\n")


def add_run_arguments(parser: argparse.ArgumentParser, output: Path) -> None:
    """``--threads`` (torch threads; 1 leaves a core free) and ``--output`` (results stem)."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--output", type=Path, default=output,
                        help="results path without suffix (.json and .md are written)")


def open_results(args: argparse.Namespace, summarize: Callable[[dict], str], script: str,
                 argv: list[str] | None, rows: bool = False, **versions: str
                 ) -> tuple[ResultsFile, dict]:
    """Applies ``--threads``; the results file named by ``--output`` and what it holds, with
    this run's ``run_record`` on top (the latest run's command, commit, ...)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run = run_record(script, argv, **versions)
    file = ResultsFile(args.output, summarize, run, rows)
    results = file.load()
    results.update(run)
    return file, results


def open_sweep(description: str, models: list[str], output: Path,
               summarize: Callable[[dict], str], script: str, argv: list[str] | None,
               rows: bool = False, **versions: str):
    """A model sweep's command line (``--models``, ``--threads``, ``--output``) and its
    results file: returns (args, file, results)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=list(models))
    add_run_arguments(parser, output)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, script, argv, rows, **versions)
    return args, file, results
