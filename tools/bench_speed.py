"""Compression speed: the commands of issue 18's targets, timed as subprocesses, with their
top-1; optionally the same commands on an earlier commit ("before"), run alternately with this
checkout's so that both see the same machine load.

    .venv/bin/python tools/bench_speed.py [--rows rule50 rule500 auto50 demo] [--seeds 0]
                                          [--before COMMIT] [--label NAME] [--threads T]

``--before COMMIT`` runs ``git archive COMMIT`` unpacked into a temporary folder, with this
venv and the same data folder (``$FXPRUNE_DATA``, default ``../shared/data``). Writes
``tools/results/speed.md`` and ``.json`` (resumable: runs already there are kept). Each run gets a fresh latency cache
(``$FXPRUNE_CACHE``), so ``--drop auto`` times its blocks as on a first run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxprune.data import data_dir  # noqa: E402
from tools.harness import RUN_KEY, add_run_arguments, open_results  # noqa: E402

RESULTS = ROOT / "tools" / "results" / "speed"
COMPRESS = ["compress", "cifar:resnet56", "--data", "cifar10"]
# row -> (fxprune arguments, target compression seconds, target top-1 mean)
ROWS = {
    "rule50": ([*COMPRESS, "--images", "50", "--drop", "rule"], 20, 91.85),
    "rule500": ([*COMPRESS, "--images", "500", "--drop", "rule"], 40, None),
    "auto50": ([*COMPRESS, "--images", "50", "--drop", "auto", "--budget", "0.657"], 90, 90.0),
    "demo": (["demo"], 60, None),
}
# issue 18's figures for this 2-core machine, quiet, before the work (compression seconds)
PUBLISHED = {"rule50": 53, "rule500": None, "auto50": 500, "demo": 170}


def run_once(source: Path, arguments: list[str], seed: int, threads: int | None) -> dict:
    """One ``fxprune`` command from the checkout ``source``: wall seconds, the report's
    compression seconds and compressed top-1."""
    with tempfile.TemporaryDirectory(prefix="fxprune-speed-") as folder:
        out = Path(folder) / "out"
        command = [sys.executable, "-c", "import sys; from fxprune.cli import main; "
                   "sys.exit(main())", *arguments, "--seed", str(seed), "--out", str(out),
                   *(["--threads", str(threads)] if threads else [])]
        # a fresh latency cache: --drop auto times its blocks as on a first run
        environment = {**os.environ, "PYTHONPATH": str(source), "FXPRUNE_CACHE": folder,
                       "FXPRUNE_DATA": str(data_dir() or "")}
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, cwd=source,
                                  env=environment)
        if finished.returncode:
            raise RuntimeError(f"fxprune {' '.join(arguments)} failed in {source}:\n"
                               + finished.stderr[-2000:])
        wall = time.perf_counter() - start
        report = json.loads((out / "report.json").read_text())
    return {"seed": seed, "wall": round(wall, 1), "seconds": round(report["seconds"], 1),
            "top1": report["compressed"]["top1"]}


def unpacked(commit: str, folder: Path) -> Path:
    """``commit``'s tree (``git archive``) unpacked under ``folder``, importable from there:
    its top-level ``passes/`` copied to ``fxprune/passes`` as setup.cfg maps it."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    shutil.copytree(folder / "passes", folder / "fxprune" / "passes")
    return folder


def _mean(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs]
    if len(values) == 1:
        return f"{values[0]:.2f}" if key == "top1" else f"{values[0]:.1f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if key == "top1" \
        else f"{statistics.mean(values):.1f}"


def summarize(results: dict) -> str:
    lines = ["# Compression speed (issue 18)", "",
             f"`{results['command']}` (commit {results['commit']}, {results['machine']}, "
             f"torch threads {results['threads']}); compression s = report.json `seconds`, "
             "wall = the whole command; top-1 on the 1,017 lossless CIFAR-10 test images, "
             "mean ± std over the seeds run. \"before\": the same command on commit "
             f"{results.get('before') or '(none run; issue 18 figures, quiet 2 cores)'}.", "",
             "| row | code | seeds | compression s | wall s | top-1 | target s | target top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for row, cell in results["cells"].items():
        _, target, accuracy = ROWS[row]
        for code, runs in cell.items():
            if code == RUN_KEY:
                continue
            lines.append(f"| {row} | {code} | {len(runs)} | {_mean(runs, 'seconds')} | "
                         f"{_mean(runs, 'wall')} | {_mean(runs, 'top1')} | ≤ {target} | "
                         f"{'≥ ' + str(accuracy) if accuracy else '-'} |")
        if "before" not in cell and PUBLISHED[row]:
            lines.append(f"| {row} | before (published) | 1 | {PUBLISHED[row]} | - | - | "
                         f"≤ {target} | - |")
    commands = sorted({cell[RUN_KEY]["command"] for cell in results["cells"].values()
                       if RUN_KEY in cell})
    lines += ["", "Commands (each cell's run record in speed.json: commit, versions, threads, "
              "machine):", "", *[f"- `{command}`" for command in commands]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--before", metavar="COMMIT", help="also time this commit, alternately")
    parser.add_argument("--label", default="after",
                        help="what this checkout's runs are called in the table (default "
                             "after; another label keeps earlier runs of this checkout apart)")
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/bench_speed.py", argv)
    results["before"] = args.before or results.get("before")
    with tempfile.TemporaryDirectory(prefix="fxprune-before-") as folder:
        sources = {args.label: ROOT}
        if args.before:
            sources["before"] = unpacked(args.before, Path(folder))
        for row in args.rows:
            arguments = ROWS[row][0]
            cell = results["cells"].setdefault(row, {})
            for seed in args.seeds:  # alternate the code versions: both see the same load
                for code, source in sources.items():
                    runs = cell.setdefault(code, [])
                    if not any(run["seed"] == seed for run in runs):
                        runs.append(run_once(source, arguments, seed, args.threads))
                        file.save(results)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
