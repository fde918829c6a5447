"""Where recovery fits the tiny set and where it transfers (issue 19): the student's relative
feature error at every stage output, ``mean((student - teacher)^2) / mean(teacher^2)``, on the
tiny set and on held-out images, before and after the stage-wise recovery, with each stage
fit's training loss before and after.

Same models, tiny sets and held-out images as ``tools/recovery_ablation.py`` (EfficientNet-Lite0
rule drop: the first 200 of its held-out images; ResNet-56 rule drop: the first 200 lossless
test images). Variants as there: ``BN[+viewsN|+mixN][+placement]``.

    .venv/bin/python tools/stage_errors.py --model effnet --size 100 --variants keep
        [--seed 0] [--steps 150] [--lr 2e-3] [--unscaled] [--threads T]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxprune.analysis.structure import find_structure  # noqa: E402
from fxprune.meta import stand_in  # noqa: E402
from fxprune.recovery.fit import FitConfig  # noqa: E402
from fxprune.recovery.practise import RecoveryConfig, recover  # noqa: E402
from fxprune.segments import run_batched, segment  # noqa: E402
from tools.harness import add_run_arguments, open_results  # noqa: E402
from tools.recovery_ablation import Bench, parse_variant  # noqa: E402

RESULTS = ROOT / "tools" / "results" / "stage_errors"
HELD_OUT = 200


def stage_features(gm, names: list[str], images: torch.Tensor) -> list[torch.Tensor]:
    source = next(node.name for node in gm.graph.nodes if node.op == "placeholder")
    return run_batched(segment(gm, [source], [stand_in(gm, name) for name in names]),
                       [images], 50)


def relative_errors(gm, names, images, references) -> list[float]:
    return [round(float((mine - theirs).pow(2).mean() / theirs.pow(2).mean()), 4)
            for mine, theirs in zip(stage_features(gm, names, images), references)]


def measure(bench: Bench, variant: str, size: int, seed: int, fit: FitConfig) -> dict:
    parsed = parse_variant(variant)
    tiny = bench.tiny(size, seed)
    held = bench.evals[next(iter(bench.evals))][0][:HELD_OUT]
    names = list(dict.fromkeys(stage.output for stage in find_structure(bench.teacher).stages))
    references = {"tiny": stage_features(bench.teacher, names, tiny),
                  "held-out": stage_features(bench.teacher, names, held)}
    images = {"tiny": tiny, "held-out": held}
    student = bench.student(tiny, parsed["placement"])
    row = {"stages": names}
    row.update({f"before {key}": relative_errors(student, names, images[key], references[key])
                for key in images})
    config = RecoveryConfig(fit=fit, views=parsed["views"], mix=parsed["mix"])
    reports = recover(bench.teacher, student, tiny, config, progress=False)
    row["fits"] = [{"target": r.target, "adapters": len(r.adapters),
                    "loss before": round(r.loss_before, 4), "loss after": round(r.loss_after, 4),
                    "epochs": r.epochs} for r in reports]
    row.update({f"after {key}": relative_errors(student, names, images[key], references[key])
                for key in images})
    return row


def summarize(results: dict) -> str:
    lines = ["# Stage-output errors before and after recovery (issue 19)", "",
             f"`{results['command']}` (commit {results['commit']}). Relative feature error "
             "mean((student − teacher)²) / mean(teacher²) at each stage output, on the tiny set "
             f"and on {HELD_OUT} held-out images; then each stage fit's training loss (MSE) "
             "before and after.", ""]
    for key, row in results["cells"].items():
        lines += [f"## {key}", "", "| stage output | " + " | ".join(
            f"{when} {where}" for when in ("before", "after")
            for where in ("tiny", "held-out")) + " |", "|---|---|---|---|---|"]
        for index, name in enumerate(row["stages"]):
            lines.append(f"| {name} | " + " | ".join(
                f"{row[f'{when} {where}'][index]:.4f}" for when in ("before", "after")
                for where in ("tiny", "held-out")) + " |")
        lines += ["", "| fit target | adapters | loss before | loss after | epochs |",
                  "|---|---|---|---|---|"]
        lines += [f"| {fit['target']} | {fit['adapters']} | {fit['loss before']} | "
                  f"{fit['loss after']} | {fit['epochs']} |" for fit in row["fits"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("effnet", "resnet56"), default="effnet")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=["keep"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--unscaled", action="store_true",
                        help="one learning rate for every adapter, whatever its width")
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    file, results = open_results(args, summarize, "tools/stage_errors.py", argv)
    bench = Bench(args.model)
    fit = FitConfig(lr=args.lr, max_steps=args.steps, patience=20, seed=args.seed,
                    reference_width=None if args.unscaled else 64)
    for variant in args.variants:
        key = (f"{args.model} {variant}, {args.size} images, seed {args.seed}, "
               f"{args.steps}@{args.lr:g}" + (", unscaled rate" if args.unscaled else ""))
        if key not in results["cells"]:
            results["cells"][key] = measure(bench, variant, args.size, args.seed, fit)
            file.save(results)
    print(summarize(results))


if __name__ == "__main__":
    main()
