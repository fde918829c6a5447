"""EfficientNet-Lite0 (ImageNet-pretrained) on the 1,000 ImageNet sample images: drop blocks,
recover from 100 or 500 of them, evaluate on others.

The 1,000 images (one per class) are split once (seed 0) into a 500-image pool and 500 held-out
images; tiny sets are drawn from the pool (N = 500: all of it), evaluation is always on the
same held-out 500. Choices: ``rule`` (the 2nd block of every stage that has one: 2.2, 3.2, 4.2,
5.2, 6.2), ``auto`` (``--drop auto --budget 0.85``, greedy) and ``streams`` (no block dropped:
``--prune-streams 0.25``, a quarter of the channels of every residual stream between inverted
residuals, recovered layer-wise; ``streams-stagewise``: the same, recovered stage-wise).
Reported per choice: top-1 and
agreement with the original on the held-out images for the pruned (no recovery) and the
recovered network, the MAC ratio, the ONNX Runtime latency ratio (batch 1, one thread,
interleaved) and seconds. Recovery: fxprune's default (stage-wise PRACTISE; for ``streams``,
layer-wise), or with ``--steps`` Adam steps per fit at lr 1e-3 in minibatches of 64 (how the
rows in ``efficientnet_lite0_before.md`` ran, with 100 steps).

    .venv/bin/python tools/bench_efficientnet.py [--sizes 100 500] [--seeds 0] [--steps 100]
                                                 [--threads T]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune.datasets import open_pool, to_tensor  # noqa: E402
from fxprune.evaluate import percent_equal, predictions  # noqa: E402
from fxprune.export import export_onnx  # noqa: E402
from fxprune.latency import bench_input, onnx_runner, paired_ratios  # noqa: E402
from fxprune.options import (DEFAULT_FIT, Drop, Options, Recovery, Schedule,  # noqa: E402
                             StreamPruning)
from fxprune.recovery.fit import FitConfig  # noqa: E402
from fxprune.selection.auto import whole_ratio  # noqa: E402
from tools.harness import add_run_arguments, open_results  # noqa: E402

BUDGET = 0.85
STREAM_RATIO = 0.25
CHOICES = {  # what each choice compresses, and the schedule that recovers it
    "rule": (dict(drop=Drop.rule()), Schedule.STAGEWISE),
    "auto": (dict(drop=Drop.auto(BUDGET, batch=1, threads=1)), Schedule.STAGEWISE),
    "streams": (dict(drop=None, streams=StreamPruning(STREAM_RATIO)), Schedule.LAYERWISE),
    "streams-stagewise": (dict(drop=None, streams=StreamPruning(STREAM_RATIO)),
                          Schedule.STAGEWISE)}
RESULTS = ROOT / "tools" / "results" / "efficientnet_lite0"
COMMAND = ("`.venv/bin/python tools/bench_efficientnet.py --sizes 100 500 --seeds 0 1 2 "
           "--choices rule --threads 1` and `... --sizes 500 --seeds 0 --choices auto "
           "--threads 1`")


class Bench:
    def __init__(self):
        self.loaded = fxprune.load_model("efficientnet:lite0")
        self.size = self.loaded.input_size
        pool = open_pool("imagenet-sample")
        self.images = to_tensor(pool, self.size, self.loaded.mean, self.loaded.std)
        self.labels = pool.labels
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
        self.pool, self.held = order[:500], order[500:]
        self.teacher = fxprune.trace(self.loaded.model, self.size).eval()
        self.reference = predictions(self.teacher, self.images[self.held])

    def scores(self, model) -> dict:
        predicted = predictions(model, self.images[self.held])
        return {"top1": percent_equal(predicted, self.labels[self.held]),
                "agreement": percent_equal(predicted, self.reference)}

    def latency_ratio(self, model, scratch: Path) -> float:
        """ONNX Runtime, batch 1, one thread, interleaved: ``latency_ratio`` to the original."""
        inputs = bench_input(self.size)
        runners = [onnx_runner(export_onnx(net, self.size, scratch / f"{name}.onnx"), inputs,
                               threads=1)
                   for name, net in (("original", self.teacher), ("compressed", model))]
        return paired_ratios(runners, warmup=3, repeats=200, budget_s=60.0)[0]

    def run(self, choice: str, size: int, seed: int, steps: int) -> dict:
        draw = torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(seed))
        tiny = self.images[self.pool[draw[:size]]]
        compression, schedule = CHOICES[choice]
        fit = {} if steps is None else {"fit": FitConfig(lr=1e-3, max_steps=steps, patience=20)}
        options = Options(**compression, recovery=Recovery(schedule=schedule, **fit), seed=seed)
        tick = time.perf_counter()
        result = fxprune.compress(self.loaded.model, tiny, self.size, options, progress=False)
        seconds = time.perf_counter() - tick
        report = result.report
        with tempfile.TemporaryDirectory() as scratch:
            latency = whole_ratio(self.teacher, report.drop, self.size, 1, 1,
                                  Path(scratch))[0] if report.drop else \
                self.latency_ratio(result.model, Path(scratch))
        models = report.models
        return {"blocks": report.drop or [f"streams -{STREAM_RATIO:.0%}"],
                "pruned": self.scores(result.pruned),
                "recovered": self.scores(result.model),
                "mac_ratio": models["compressed"].macs / models["original"].macs,
                "latency_ratio": latency, "seconds": seconds,
                "steps": steps or DEFAULT_FIT.max_steps,
                "recipe": "default" if steps is None else "lr 1e-3, minibatches of 64",
                "threads": torch.get_num_threads(), "auto": report.as_json()["auto"]}


def summarize(results: dict) -> str:
    original = results["original"]
    lines = ["# EfficientNet-Lite0: block drop + tiny-set recovery on ImageNet sample images",
             "", f"{COMMAND} — top-1 % and agreement % with the original on 500 held-out "
             "ImageNet sample images (one per class, disjoint from the tiny sets); latency "
             "ratio: ONNX Runtime, batch 1, one thread, interleaved with the original (the "
             "streams-stagewise row: ratio of 10th-percentile times, `latency_ratio`; the "
             "earlier rows: median of per-round ratios); "
             f"`auto` = `--drop auto --budget {BUDGET}` (greedy).", "",
             f"Original: top-1 {original:.2f} on the held-out images.", "",
             "| N | choice | seed | blocks | MAC ratio | latency ratio | pruned top-1 | "
             "recovered top-1 | loss vs original | agreement | steps | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in sorted(results["cells"].items(),
                           key=lambda item: (int(item[0].split("/")[1]), item[0])):
        choice, size, seed = key.split("/")
        lines.append(f"| {size} | {choice} | {seed} | {', '.join(row['blocks'])} | "
                     f"{row['mac_ratio']:.3f} | {row['latency_ratio']:.3f} | "
                     f"{row['pruned']['top1']:.2f} | {row['recovered']['top1']:.2f} | "
                     f"{original - row['recovered']['top1']:.2f} | "
                     f"{row['recovered']['agreement']:.2f} | {row['steps']} | "
                     f"{row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 500])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--choices", nargs="+",
                        choices=list(CHOICES),
                        default=["rule", "auto"])
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam steps per fit at lr 1e-3, batch 64 (default: fxprune's "
                             "default recovery)")
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/bench_efficientnet.py", argv)
    bench = Bench()
    results["original"] = percent_equal(bench.reference, bench.labels[bench.held])
    for size in args.sizes:
        for seed in args.seeds:
            for choice in args.choices:
                key = f"{choice}/{size}/{seed}"
                if key in results["cells"]:
                    continue
                results["cells"][key] = bench.run(choice, size, seed, args.steps)
                file.save(results)
                print(key, results["cells"][key]["recovered"], flush=True)


if __name__ == "__main__":
    main()
