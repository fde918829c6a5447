"""CIFAR-10 ResNet-56: block drop + tiny-set recovery, every method on the same images and seeds.

Schemes: the paper's rule (1.2, 2.2, 3.2) and a deeper cut of 9 blocks (x.2-x.4 per stage).
Tiny sets: N in {10, 50, 100, 500} lossless CIFAR-10 training images, N/10 per class, seeds 0-4.
Methods: ``pruned`` (no recovery), ``baseline`` (Eq. 4 finetune of the pruned network, no
adapters), ``practise`` (label-free adapter recovery, the default schedule), ``practise+ce-mse``,
``practise+mir`` and ``practise+kd`` (finetunes from the recovered student). Top-1 on the 1,017 lossless test
images and on the full 10,000-image JPEG test set; seconds per method (this machine, 2 cores).

The run is resumable: every finished cell is appended to the JSON results at once, and a rerun
skips the methods a cell already has, so a long sweep can be spread over several sessions;
``--methods`` runs a subset first. ``--budget`` stops starting new cells after that many
minutes; ``--threads 1`` leaves a core free (the seconds column then says so). The markdown
table is rebuilt from the JSON.

    .venv/bin/python tools/bench_cifar.py [--budget MINUTES] [--schemes 3 9] [--sizes 50 ...]
                                          [--methods practise ...] [--threads T]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune import load_model, trace  # noqa: E402
from fxprune.datasets import open_pool, sample, to_tensor  # noqa: E402
from fxprune.evaluate import top1  # noqa: E402
from fxprune.options import Drop, Options  # noqa: E402
from fxprune.passes import FoldBatchNorm, folding  # noqa: E402
from fxprune.recovery.finetune import FinetuneConfig, finetune  # noqa: E402
from fxprune.recovery.practise import recover  # noqa: E402
from tools.harness import RUN_KEY, add_run_arguments, open_results  # noqa: E402

SCHEMES = {"3": ["1.2", "2.2", "3.2"],
           "9": ["1.2", "1.3", "1.4", "2.2", "2.3", "2.4", "3.2", "3.3", "3.4"]}
SIZES = (50, 10, 100, 500)
METHODS = ("pruned", "baseline", "practise", "practise+ce-mse", "practise+mir", "practise+kd")
RESULTS = ROOT / "tools" / "results" / "cifar_resnet56"
RECOVERY_SEED = 0  # the published rows shuffle every recovery fit with seed 0, whatever the set


class Bench:
    def __init__(self):
        self.loaded = load_model("cifar:resnet56")
        self.size = self.loaded.input_size
        self.pool = open_pool("cifar10", "train")
        lossless = open_pool("cifar10", "test")
        jpeg = open_pool("cifar10-jpeg", "test")
        self.evals = {"lossless": (self.tensor(lossless), lossless.labels),
                      "jpeg": (self.tensor(jpeg), jpeg.labels)}
        self.teacher = trace(self.loaded.model, self.size).eval()

    def tensor(self, pool):
        return to_tensor(pool, self.size, self.loaded.mean, self.loaded.std)

    def accuracy(self, model) -> dict[str, float]:
        return {name: top1(model, images, labels) for name, (images, labels) in self.evals.items()}

    def plan(self, ids: list[str]) -> fxprune.CompressionPlan:
        """The blocks dropped, the default recovery's adapters (stage-wise, CVPR sites)."""
        return fxprune.plan(self.teacher, Options(drop=Drop.blocks(*ids), seed=RECOVERY_SEED),
                            input_size=self.size, progress=False)

    def finetuned(self, student, images, labels, objective: str, seed: int):
        config = FinetuneConfig(objective=objective, seed=seed)
        finetune(self.teacher, student, images, labels, config, progress=False)
        return student

    def cell(self, scheme: str, size: int, seed: int, methods: list[str],
             rows: dict[str, dict]) -> dict[str, dict]:
        """The ``methods`` not yet in ``rows`` for one tiny set; ``rows`` is updated."""
        plan = self.plan(SCHEMES[scheme])
        chosen = sample(self.pool, per_class=size // 10, seed=seed)
        images, labels = self.tensor(chosen), chosen.labels
        todo = [method for method in methods if method not in rows]
        if "baseline" in todo:
            tick = time.perf_counter()
            baseline = self.finetuned(student(plan.without_adapters()), images, labels,
                                      "ce-mse", seed)
            rows["baseline"] = self.row(FoldBatchNorm()(baseline).graph_module, tick)
        finetunes = [method for method in todo if method.startswith("practise+")]
        if "practise" not in todo and not finetunes:
            return rows
        tick = time.perf_counter()
        recovered = student(plan)
        recover(self.teacher, recovered, images, plan.recovery.config(plan.seed, len(images)),
                progress=False)
        seconds = time.perf_counter() - tick
        if "practise" in todo:
            rows["practise"] = self.row(folding()(copy.deepcopy(recovered)).graph_module,
                                        tick, seconds)
        for method in finetunes:
            tick = time.perf_counter()
            objective = method.removeprefix("practise+")
            tuned = self.finetuned(copy.deepcopy(recovered), images, labels, objective, seed)
            rows[method] = self.row(folding()(tuned).graph_module, tick,
                                    seconds + time.perf_counter() - tick)
        return rows

    def row(self, model, tick: float, seconds: float | None = None) -> dict:
        seconds = time.perf_counter() - tick if seconds is None else seconds
        return {"seconds": seconds, "threads": torch.get_num_threads(), **self.accuracy(model)}


def student(plan: fxprune.CompressionPlan):
    """The plan's rewriting of a copy of its teacher: what recovery or a finetune trains."""
    return plan.rewrite()


def summarize(results: dict) -> str:
    lines = ["# CIFAR-10 ResNet-56: block drop + tiny-set recovery", "",
             "`.venv/bin/python tools/bench_cifar.py` — top-1 % mean ± std over seeds "
             "(n = seeds done); lossless = 1,017 exact test images, jpeg = all 10,000 test "
             "images as JPEG q75; seconds on this 2-core CPU.", "",
             *_commands(results),
             f"Original: lossless {results['original']['lossless']:.2f}, jpeg "
             f"{results['original']['jpeg']:.2f}.", ""]
    for scheme in SCHEMES:
        pruned = results.get("pruned", {}).get(scheme)
        if pruned is None:
            continue
        lines += [f"## {scheme} blocks dropped ({', '.join(SCHEMES[scheme])}); pruned, no "
                  f"recovery: lossless {pruned['lossless']:.2f}, jpeg {pruned['jpeg']:.2f}", "",
                  "| N | method | n | lossless | jpeg | seconds |", "|---|---|---|---|---|---|"]
        for size in sorted(SIZES):
            for method in METHODS[1:]:
                cells = [rows[method] for key, rows in results["cells"].items()
                         if key.startswith(f"{scheme}/{size}/") and method in rows]
                if cells:
                    lines.append(f"| {size} | {method} | {len(cells)} | "
                                 f"{mean_std([c['lossless'] for c in cells])} | "
                                 f"{mean_std([c['jpeg'] for c in cells])} | "
                                 f"{_seconds(cells)} |")
        lines.append("")
    return "\n".join(lines)


def _commands(results: dict) -> list[str]:
    """The commands that measured the rows, as the rows record them (``tools.harness``)."""
    commands = sorted({row[RUN_KEY]["command"] for rows in results["cells"].values()
                       for row in rows.values() if RUN_KEY in row})
    return [f"Rows measured by: {', '.join(f'`{command}`' for command in commands)}; the "
            "methods not re-run since issue 19 are in `cifar_resnet56_before.md`.", ""] \
        if commands else []


def _seconds(cells: list[dict]) -> str:
    """Mean seconds, with the torch thread count when it was not 2 (older rows: 2)."""
    threads = sorted({cell.get("threads", 2) for cell in cells})
    note = "" if threads == [2] else f" ({'/'.join(map(str, threads))} thr)"
    return f"{statistics.mean(cell['seconds'] for cell in cells):.0f}{note}"


def mean_std(values: list[float]) -> str:
    """'mean ± sample std' (std 0 for one value), two decimals."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES))
    parser.add_argument("--sizes", nargs="+", type=int, choices=SIZES, default=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", choices=METHODS[1:], default=list(METHODS[1:]))
    parser.add_argument("--budget", type=float, default=None, help="minutes; no new cell after")
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/bench_cifar.py", argv, rows=True)
    start = time.perf_counter()
    bench = Bench()
    results["original"] = bench.accuracy(bench.teacher)
    results.setdefault("pruned", {})
    for scheme in args.schemes:
        if scheme not in results["pruned"]:
            pruned = FoldBatchNorm()(student(bench.plan(SCHEMES[scheme]).without_adapters())
                                     ).graph_module
            results["pruned"][scheme] = bench.accuracy(pruned)
    pending = [f"{scheme}/{size}/{seed}" for scheme in args.schemes for size in args.sizes
               for seed in args.seeds
               if set(args.methods) - set(results["cells"].get(f"{scheme}/{size}/{seed}", {}))]
    for key in pending:
        if args.budget is not None and time.perf_counter() - start > 60 * args.budget:
            print(f"budget reached; {len(pending) - pending.index(key)} cells left", flush=True)
            break
        scheme, size, seed = key.split("/")
        torch.manual_seed(int(seed))
        rows = results["cells"].setdefault(key, {})
        bench.cell(scheme, int(size), int(seed), args.methods, rows)
        file.save(results)
        print(key, {m: round(r["lossless"], 2) for m, r in results["cells"][key].items()},
              flush=True)
    file.save(results)


if __name__ == "__main__":
    main()
