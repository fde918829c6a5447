"""``fxprune compress``: drop blocks, recover from a tiny image set, fold, export, report.

Outputs go to a temporary folder beside ``--out`` that is renamed into place at the end, so an
error or Ctrl-C never leaves a half-written output folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fxprune.commands.common import (add_model_arguments, add_threads_argument, atomic_output,
                                     positive_int)
from fxprune.errors import FxpruneError
from fxprune.job import RunSettings
from fxprune.named import NamedJob, compress_named, plan_named
from fxprune.options import (Decouple, Drop, FilterPruning, Options, Placement, Recovery,
                             Schedule, Sparsity, StreamPruning)
from fxprune.recovery.finetune import OBJECTIVES, FinetuneConfig
from fxprune.recovery.practise import INITS, SCHEDULES, RecoveryConfig
from fxprune.recovery.fit import RECOVERY_BATCH
from fxprune.recovery.views import MIN_PAIRS
from fxprune.report import Report
from fxprune.selection import STRATEGIES
from fxprune.threads import torch_threads


def register(commands) -> None:
    parser = commands.add_parser(
        "compress", help="drop blocks and recover accuracy from a tiny image set")
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="image pool for the tiny set, e.g. cifar10:DIR, folder:DIR, "
                             "imagenet32:FILE")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--images", type=int, metavar="N", help="number of tiny-set images")
    size.add_argument("--shots", type=int, metavar="K", help="images per class (labelled pools)")
    parser.add_argument("--drop", metavar="IDS|rule|auto",
                        help="block ids such as 1.2,2.2, 'rule' (2nd block of every stage), or "
                             "'auto' (chosen under --budget)")
    parser.add_argument("--budget", type=float, metavar="R",
                        help="with --drop auto: ONNX Runtime latency at most R x the "
                             "original's, at --bench-batch and --bench-threads")
    parser.add_argument("--select", choices=STRATEGIES,
                        help="with --drop auto: re-score the chosen set each round (greedy, "
                             "default) or rank blocks scored alone")
    parser.add_argument("--prune-filters", type=pruning_spec, metavar="RATIO|MAP=RATIO,...",
                        help="prune this fraction of the filters of every prunable feature map "
                             "(L1 norm), e.g. 0.5, or per map named by its producer conv, e.g. "
                             "layer1_0_conv1=0.5,layer2_0_conv1=0.25 (fxprune inspect lists "
                             "them)")
    parser.add_argument("--prune-streams", type=pruning_spec, metavar="RATIO|MAP=RATIO,...",
                        help="prune this fraction of the channels of every residual stream "
                             "between blocks, shortcuts included (L1 norm summed over the "
                             "stream's convs), e.g. 0.25, or per stream named by its first "
                             "producer conv")
    parser.add_argument("--decouple", type=decouple_spec, metavar="dwpw|lowrank:E",
                        help="factorize convs: depthwise + pointwise, or a low-rank pair "
                             "keeping energy E of the output's PCA (default 0.4)")
    parser.add_argument("--sparsity", type=float, metavar="S",
                        help="mask this fraction of every conv's weights (magnitude), e.g. 0.9; "
                             "the adapters learn inside the mask so its zeros ship")
    parser.add_argument("--recover", choices=("practise", "none"), default="practise",
                        help="practise: train 1x1 adapters to mimic the original's features, "
                             "label-free, then fold them (default); none: no adapters (with "
                             "--finetune: the paper's baseline)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=RecoveryConfig().schedule,
                        help="how adapters are trained: stagewise, per stage (default); joint, "
                             "all at once; layerwise, one layer at a time as in the paper")
    parser.add_argument("--placement", choices=[str(p) for p in Placement],
                        help="where adapters go around a dropped block (default: paper for the "
                             "layerwise schedule, cvpr otherwise; inner: cvpr and before the "
                             "last conv of the stage's other blocks)")
    parser.add_argument("--finetune", choices=("none", *OBJECTIVES), default="none",
                        help="then train every weight: kd = the original's logits on "
                             "blended views, label-free; ce-mse = labels + feature mimicking "
                             "(paper's Eq. 4), mse = feature mimicking only, mir = pre-pooling "
                             "features with BN in train mode (CVPR'23 code); default none")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="int8: also write model.int8.onnx, int8 weights and activations "
                             "(ONNX Runtime static quantization) with activation ranges "
                             "calibrated on the tiny set; the report adds its top-1 and "
                             "latency (default none)")
    parser.add_argument("--seed", type=int, default=0,
                        help="draws the tiny set and seeds training (default 0)")
    parser.add_argument("--eval", metavar="SPEC", help="evaluation images (default: the pool's "
                        "test split where it has one, else the pool's images not drawn)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help=f"at most N Adam steps per adapter fit (default "
                             f"{RecoveryConfig().fit.max_steps}); 0 with --init lstsq: the "
                             "closed form only")
    parser.add_argument("--views", type=int, metavar="N",
                        help="add N augmented copies of the tiny set (crop + flip) as extra "
                             f"label-free training pairs (default: for a set of fewer than "
                             f"{RECOVERY_BATCH} images, enough for {MIN_PAIRS} pairs: 25 for "
                             "10 images, 8 for 30; none for larger sets)")
    parser.add_argument("--mix", action="store_true",
                        help="blend each augmented view with another image of the set")
    parser.add_argument("--holdout", type=float, default=0.0, metavar="F",
                        help="keep this fraction of the tiny set (a seeded draw) out of "
                             "adapter training, to judge each fit and stop it where those "
                             "images are matched best, e.g. 0.2 (default 0: the training "
                             "loss judges)")
    parser.add_argument("--init", choices=INITS,
                        help="adapter start: identity, or the closed-form layer-wise optimum "
                             "(default: identity; lstsq with no gradient step for --schedule "
                             "layerwise, where it is as accurate and 3x faster)")
    parser.add_argument("--device", default="cpu",
                        help="where recovery and finetuning run: cpu (default), cuda, cuda:N")
    parser.add_argument("--bench-batch", "--batch", type=positive_int, default=1, metavar="B",
                        help="batch size of the ONNX Runtime latencies: the report's and "
                             "--drop auto's (default 1)")
    parser.add_argument("--bench-threads", type=positive_int, default=1, metavar="T",
                        help="ONNX Runtime threads for the report's latencies and --drop auto "
                             "(default 1)")
    add_threads_argument(parser)
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the compression plan (passes, arguments, adapter sites, "
                             "recovery) and stop; --drop auto still measures and scores")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    job = named_job(args)
    if args.out is None and not args.dry_run:
        raise FxpruneError("give --out FOLDER for the outputs (or --dry-run to see the plan)")
    if args.dry_run:
        print(plan_named(job))
        return 0
    with atomic_output(args.out, args.force) as staging, torch_threads(args.threads):
        report = compress_named(job, staging)
    _print_summary(report, args.out)
    return 0


def named_job(args: argparse.Namespace) -> NamedJob:
    """The command line as a ``NamedJob``: every option parsed and validated here, once."""
    options = Options(drop=_drop(args), filters=_given(FilterPruning, args.prune_filters),
                      streams=_given(StreamPruning, args.prune_streams),
                      sparsity=_given(Sparsity, args.sparsity),
                      decouple=args.decouple, recovery=_recovery(args),
                      finetune=FinetuneConfig(args.finetune) if args.finetune != "none"
                      else None, seed=args.seed)
    settings = RunSettings(device=args.device, quantize=args.quantize == "int8",
                           bench_batch=args.bench_batch, bench_threads=args.bench_threads)
    return NamedJob(args.model, args.data, images=args.images, shots=args.shots,
                    weights=args.weights, input_size=args.input_size, leaf=tuple(args.leaf),
                    evaluation=args.eval, options=options, settings=settings)


def _given(option: type, value):
    return None if value is None else option(value)


def _recovery(args: argparse.Namespace) -> Recovery | None:
    recovery = Recovery(schedule=Schedule(args.schedule), placement=args.placement,
                        init=args.init, steps=args.steps, views=args.views,
                        mix=args.mix, holdout=args.holdout)  # checked even when unused
    return recovery if args.recover == "practise" else None


def _drop(args: argparse.Namespace) -> Drop | None:
    if args.drop != "auto":
        for option, value in (("--budget", args.budget), ("--select", args.select)):
            if value is not None:
                raise FxpruneError(f"{option} applies only to --drop auto")
    if args.drop is None:
        return None
    if args.drop == "rule":
        return Drop.rule()
    if args.drop == "auto":
        if args.budget is None:
            raise FxpruneError("--drop auto needs --budget R, e.g. --budget 0.8 for at most 80% "
                               "of the original's ONNX Runtime latency")
        return Drop.auto(args.budget, strategy=args.select or "greedy", batch=args.bench_batch,
                         threads=args.bench_threads)
    return Drop.blocks(*[part.strip() for part in args.drop.split(",") if part.strip()])


def decouple_spec(text: str) -> Decouple:
    """``dwpw`` or ``lowrank:E`` (E: the energy kept, default 0.4) for argparse."""
    method, _, energy = text.partition(":")
    try:
        if method == "dwpw" and not energy:
            return Decouple.dwpw()
        if method == "lowrank":
            return Decouple.lowrank(float(energy) if energy else 0.4)
    except (ValueError, FxpruneError):
        pass
    raise argparse.ArgumentTypeError(f"--decouple {text!r} not understood: use dwpw or "
                                     "lowrank:E with E in (0, 1]")


def pruning_spec(text: str) -> float | dict[str, float]:
    """``0.5`` (every map) or ``name=0.5,other=0.25`` (per map) for argparse."""
    try:
        if "=" not in text:
            return float(text)
        pairs = [item.split("=") for item in text.split(",")]
        if any(len(pair) != 2 or not pair[0] for pair in pairs):
            raise ValueError
        return {name.strip(): float(ratio) for name, ratio in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a ratio such as 0.5 or NAME=RATIO[,NAME=RATIO...], got {text!r}") from None


def _print_summary(report: Report, out: Path) -> None:
    models = report.models

    def accuracy(key):
        value = models[key].top1
        return f"{value:.2f}%" if value is not None else "n/a"

    ratio = models["compressed"].macs / models["original"].macs
    quantized = (f"int8 {accuracy('quantized')} (agreement "
                 f"{models['quantized'].agreement:.1f}%), latency x"
                 f"{models['quantized'].latency_ratio:.3f}; ") if "quantized" in models else ""
    print(f"top-1 original {accuracy('original')}, pruned {accuracy('pruned')}, "
          f"compressed {accuracy('compressed')} (agreement "
          f"{models['compressed'].agreement:.1f}%); MACs x{ratio:.3f}; ONNX Runtime "
          f"latency x{models['compressed'].latency_ratio:.3f}; {quantized}"
          f"{report.seconds:.0f} s; outputs in {out}")
