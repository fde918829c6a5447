"""ResNet-56-50% (filter pruning, ``tools/bench_filters.py``'s scheme) recovered by label-free
PRACTISE from 1-3 CIFAR-10 images per class with N augmented views (issue 19): top-1 on the
1,017 lossless test images per seed, then mean ± std and the points lost against the
original. No finetune. Prints; ``tools/results/filter_views.md`` collects the runs.

    .venv/bin/python tools/filter_views.py VIEWS SIZES SEEDS [mix]
    e.g. .venv/bin/python tools/filter_views.py 24 10,20 0,1,2
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fxprune.datasets import sample  # noqa: E402
from fxprune.options import Recovery  # noqa: E402
from tools.bench_filters import Bench  # noqa: E402

torch.set_num_threads(2)
views = int(sys.argv[1])
sizes = [int(x) for x in sys.argv[2].split(",")]
seeds = [int(x) for x in sys.argv[3].split(",")]
mix = len(sys.argv) > 4 and sys.argv[4] == "mix"
bench = Bench()
original = bench.accuracy(bench.loaded.model)
for size in sizes:
    accuracies = []
    for seed in seeds:
        chosen = sample(bench.pool, per_class=size // 10, seed=seed)
        images = bench.tensor(chosen)
        torch.manual_seed(seed)
        tick = time.perf_counter()
        _, row = bench.run(images, chosen.labels, seed, Recovery(views=views, mix=mix), None,
                           "filters 50%")
        accuracies.append(row["top1"])
        print(size, seed, round(row["top1"], 2), round(time.perf_counter() - tick, 1),
              flush=True)
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0
    print(f"views {views} mix {mix} size {size}: {statistics.mean(accuracies):.2f} ± "
          f"{spread:.2f}  loss {original - statistics.mean(accuracies):.2f}", flush=True)
