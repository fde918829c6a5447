"""Compression time on a quiet and on a busy machine, with the default thread count (the cores
the load average leaves free) and with a fixed count, in one run. The busy case runs one
single-threaded CPU-bound process beside the command (a Python busy loop), started a minute
before so that the load average sees it.

    .venv/bin/python tools/bench_threads.py [--model cifar:resnet56] [--images 50]

Writes ``tools/results/threads.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.harness import run_record, write_results  # noqa: E402

LOAD = [sys.executable, "-c", "while True: pass"]
RESULTS = ROOT / "tools" / "results" / "threads"


def compress_seconds(model: str, images: int, threads: int | None) -> dict:
    """Run ``fxprune compress`` (rule drop, default recovery) and read its report."""
    with tempfile.TemporaryDirectory() as folder:
        command = [str(ROOT / ".venv" / "bin" / "fxprune"), "compress", model, "--data",
                   "cifar10", "--images", str(images), "--drop", "rule", "--seed", "0",
                   "--out", f"{folder}/out", *(["--threads", str(threads)] if threads else [])]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - start
        report = json.loads(Path(f"{folder}/out/report.json").read_text())
    return {"threads": report["torch_threads"], "seconds": round(report["seconds"], 1),
            "wall": round(wall, 1), "top1": report["compressed"]["top1"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar:resnet56")
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args(argv)
    rows = {"quiet, default": compress_seconds(args.model, args.images, None),
            "quiet, 2 threads": compress_seconds(args.model, args.images, 2)}
    load = subprocess.Popen(LOAD)
    try:
        time.sleep(60)
        rows["busy, default"] = compress_seconds(args.model, args.images, None)
        rows["busy, 2 threads"] = compress_seconds(args.model, args.images, 2)
    finally:
        load.kill()
    run = run_record("tools/bench_threads.py", argv)
    quiet = rows["quiet, default"]["seconds"]
    lines = [f"# Compression time, quiet and busy ({args.model}, rule drop, {args.images} "
             "images)", "", f"`{run['command']}` (commit {run['commit']}, "
             f"{run['machine']}); busy: one `python -c 'while True: pass'` beside it.", "",
             "| case | torch threads | compression s | wall s | ÷ quiet default | top-1 |",
             "|---|---|---|---|---|---|"]
    for case, row in rows.items():
        lines.append(f"| {case} | {row['threads']} | {row['seconds']} | {row['wall']} | "
                     f"{row['seconds'] / quiet:.2f} | {row['top1']:.2f} |")
    write_results(RESULTS, {"rows": rows, "load": " ".join(LOAD[1:])}, "\n".join(lines), run)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
