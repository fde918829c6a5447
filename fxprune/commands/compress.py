"""``fxprune compress``: drop blocks, recover from a tiny image set, fold, export, report.

Outputs go to a temporary folder beside ``--out`` that is renamed into place at the end, so an
error or Ctrl-C never leaves a half-written output folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from fxprune.commands.common import (add_model_arguments, add_threads_argument, atomic_output,
                                     positive_int)
from fxprune.pipeline import FINETUNES, RECOVERIES, compress, resolve_device
from fxprune.datasets import open_pool, split_pool, to_tensor
from fxprune.errors import FxpruneError, FxpruneWarning
from fxprune.evaluate import onnx_predictions, percent_equal, predictions
from fxprune.export import export_onnx, onnx_max_abs_diff
from fxprune.latency import Timing, bench_input, interleaved_seconds, onnx_runner, latency_ratio
from fxprune.models import load_model
from fxprune.quantize import QUANTIZED_FILE, quantize_onnx
from fxprune.recovery.practise import INITS, SCHEDULES, RecoveryConfig
from fxprune.report import setbacks, write_report
from fxprune.saving import MODEL_FILE
from fxprune.selection import STRATEGIES, SelectionConfig
from fxprune.threads import torch_threads
from fxprune.tracing import run_example

LATENCY_BUDGET_S = 20.0  # the report's latencies are a guide; `fxprune bench` measures properly


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
    parser.add_argument("--decouple", metavar="dwpw|lowrank:E",
                        help="factorize convs: depthwise + pointwise, or a low-rank pair "
                             "keeping energy E of the output's PCA (default 0.4)")
    parser.add_argument("--sparsity", type=float, metavar="S",
                        help="mask this fraction of every conv's weights (magnitude), e.g. 0.9; "
                             "the adapters learn inside the mask so its zeros ship")
    parser.add_argument("--recover", choices=RECOVERIES, default="practise",
                        help="practise: train 1x1 adapters to mimic the original's features, "
                             "label-free, then fold them (default); none: no adapters (with "
                             "--finetune: the paper's baseline)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=RecoveryConfig().schedule,
                        help="how adapters are trained: stagewise, per stage (default); joint, "
                             "all at once; layerwise, one layer at a time as in the paper")
    parser.add_argument("--placement", choices=("paper", "cvpr"),
                        help="where adapters go around a dropped block (default: paper for the "
                             "layerwise schedule, cvpr otherwise)")
    parser.add_argument("--finetune", choices=FINETUNES, default="none",
                        help="then train every weight: ce-mse = labels + feature mimicking "
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
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    parser.set_defaults(run=run)


def _evaluation_pool(args, rest):
    if args.eval:
        return open_pool(args.eval, "test")
    if args.data.split(":", 1)[0] == "cifar10":
        return open_pool(args.data, "test")
    return rest


def _check_labels(model, example, *pools) -> None:
    """Labels are used as the model's class indices (accuracy, cross-entropy): they must fit."""
    classes = run_example(model.eval(), example).shape[-1]
    for pool in pools:
        if pool.labels is not None and len(pool.labels) and int(pool.labels.max()) >= classes:
            raise FxpruneError(
                f"pool {pool.name} has label {int(pool.labels.max())} but the model predicts "
                f"{classes} classes: labels must be the model's class indices (for a folder, "
                "its sorted class sub-folders must match the model's class order)")


def run(args: argparse.Namespace) -> int:
    with atomic_output(args.out, args.force) as staging, torch_threads(args.threads):
        report = compress_to(args, staging)
    _print_summary(report, args.out)
    return 0


def _recovery_config(args: argparse.Namespace) -> RecoveryConfig:
    default = RecoveryConfig()
    if args.schedule == "layerwise" and args.init is None and args.steps is None:
        return replace(default, schedule="layerwise", init="lstsq", fit=None)
    init = args.init or "identity"
    if args.steps is None:
        return replace(default, schedule=args.schedule, init=init)
    if args.steps < 0:
        raise FxpruneError(f"--steps must be >= 0, not {args.steps}")
    if args.steps == 0 and init != "lstsq":
        raise FxpruneError("--steps 0 trains nothing; it needs --init lstsq (the closed form)")
    fit = replace(default.fit, max_steps=args.steps) if args.steps else None
    return replace(default, schedule=args.schedule, init=init, fit=fit)


def _selection_config(args: argparse.Namespace) -> SelectionConfig | None:
    if args.drop != "auto":
        for option, value in (("--budget", args.budget), ("--select", args.select)):
            if value is not None:
                raise FxpruneError(f"{option} applies only to --drop auto")
        return None
    if args.budget is None:
        raise FxpruneError("--drop auto needs --budget R, e.g. --budget 0.8 for at most 80% "
                           "of the original's ONNX Runtime latency")
    return SelectionConfig(args.budget, strategy=args.select or "greedy", batch=args.bench_batch,
                           threads=args.bench_threads)


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


def compress_to(args: argparse.Namespace, folder: Path) -> dict:
    """The whole command, writing its outputs into ``folder``; returns the report."""
    start = time.perf_counter()
    device = resolve_device(args.device)  # before any work: a typo must not cost a minute
    if all(option is None for option in (args.drop, args.prune_filters, args.prune_streams,
                                         args.sparsity, args.decouple)):
        raise FxpruneError("nothing to compress: give --drop IDS|rule|auto, --prune-filters "
                           "RATIO, --prune-streams RATIO, --decouple dwpw|lowrank:E and/or "
                           "--sparsity S")
    recovery = _recovery_config(args)
    selection = _selection_config(args)
    loaded = load_model(args.model, args.weights)
    size = args.input_size or loaded.input_size
    chosen, rest = split_pool(open_pool(args.data), n=args.images, per_class=args.shots,
                              seed=args.seed)
    if len(chosen) == 0:
        raise FxpruneError("the tiny set is empty: ask for at least one image")
    images = to_tensor(chosen, size, loaded.mean, loaded.std)
    evaluation = _evaluation_pool(args, rest)
    eval_images = to_tensor(evaluation, size, loaded.mean, loaded.std)
    _check_labels(loaded.model, eval_images[:1], chosen, evaluation)
    placement = args.placement or ("paper" if args.schedule == "layerwise" else "cvpr")
    result = compress(loaded.model, images, size, labels=chosen.labels, drop=args.drop,
                      prune_filters=args.prune_filters, prune_streams=args.prune_streams,
                      sparsity=args.sparsity,
                      decouple=args.decouple, selection=selection,
                      placement=placement, recover=args.recover,
                      recovery=recovery, finetune=args.finetune, seed=args.seed,
                      leaf_modules=args.leaf, device=device)
    report = result.report
    report.update(model=args.model, weights=loaded.weights, data=args.data,
                  tiny_set={"images": len(chosen), "per_class": args.shots, "seed": args.seed,
                            "labelled": chosen.labels is not None},
                  evaluation={"pool": evaluation.name, "images": len(evaluation),
                              "labelled": evaluation.labels is not None})
    reference = predictions(result.teacher, eval_images)
    stages = result.stages()
    for key, model in stages.items():
        predicted = reference if model is result.teacher else predictions(model, eval_images)
        _score(report[key], predicted, reference, evaluation.labels)
    shipped = {"compressed": export_onnx(result.model, size, folder / "model.onnx")}
    report["onnx_max_abs_diff"] = onnx_max_abs_diff(result.model, shipped["compressed"],
                                                    eval_images[:64])
    if args.quantize == "int8":
        _quantize(report, shipped, images, folder)
    if "quantized" in shipped:
        _score(report["quantized"], onnx_predictions(shipped["quantized"], eval_images),
               reference, evaluation.labels)
    samples = _latencies(stages, size, shipped, args.bench_batch, args.bench_threads)
    report["latency"] = {"runtime": "onnxruntime", "batch": args.bench_batch,
                         "threads": args.bench_threads}
    report["torch_threads"] = torch.get_num_threads()
    for key, times in samples.items():
        timing = Timing.of(times)
        report[key].update(latency_ms=timing.median_ms, latency_iqr_ms=timing.iqr_ms,
                           latency_ratio=latency_ratio(times, samples["original"]))
    report["setbacks"] = setbacks(report)
    for warning in report["setbacks"]:
        warnings.warn(warning, FxpruneWarning, stacklevel=2)
    result.save(folder / MODEL_FILE)
    report["seconds_total"] = time.perf_counter() - start
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    write_report(report, folder)
    return report


def _quantize(report: dict, shipped: dict[str, Path], images: torch.Tensor, folder: Path
              ) -> None:
    """``model.int8.onnx`` from the shipped file, calibrated on the tiny set, into ``shipped``
    and the report; a failure only warns: the fp32 outputs stand on their own."""
    tick = time.perf_counter()
    try:
        shipped["quantized"] = quantize_onnx(shipped["compressed"], images,
                                             folder / QUANTIZED_FILE)
    except FxpruneError as error:
        warnings.warn(f"no int8 file: {error}", FxpruneWarning, stacklevel=3)
        return
    seconds = time.perf_counter() - tick
    report["phases"]["quantize"] = seconds
    report["seconds"] += seconds
    report["quantized"] = {"format": "int8 QDQ, per-channel weights",
                           "calibration_images": len(images),
                           **{key: report["compressed"][key] for key in ("macs", "params")}}


def _score(row: dict, predicted: torch.Tensor, reference: torch.Tensor,
           labels: torch.Tensor | None) -> None:
    """A model's top-1 (None without labels) and agreement with the original's predictions."""
    row["top1"] = percent_equal(predicted, labels) if labels is not None else None
    row["agreement"] = percent_equal(predicted, reference)


def _latencies(stages: dict, size, shipped: dict[str, Path], batch: int, threads: int
               ) -> dict[str, list[float]]:
    """Seconds of every run of every model (ONNX Runtime): the stages' (exported here unless
    ``shipped`` has their file) and the other ``shipped`` files, timed interleaved on one
    input, round by round."""
    with tempfile.TemporaryDirectory(prefix="fxprune-latency-") as scratch:
        paths = {key: shipped.get(key) or
                 export_onnx(model, size, Path(scratch) / f"{key}.onnx")
                 for key, model in stages.items()}
        paths.update(shipped)
        inputs = bench_input(size, batch)
        runners = [onnx_runner(path, inputs, threads) for path in paths.values()]
        times = interleaved_seconds(runners, warmup=2, repeats=30, budget_s=LATENCY_BUDGET_S)
        return dict(zip(paths, times))


def _print_summary(report: dict, out: Path) -> None:
    def accuracy(key):
        value = report[key]["top1"]
        return f"{value:.2f}%" if value is not None else "n/a"

    ratio = report["compressed"]["macs"] / report["original"]["macs"]
    speed = report["compressed"]["latency_ratio"]
    quantized = (f"int8 {accuracy('quantized')} (agreement "
                 f"{report['quantized']['agreement']:.1f}%), latency x"
                 f"{report['quantized']['latency_ratio']:.3f}; ") if "quantized" in report else ""
    print(f"top-1 original {accuracy('original')}, pruned {accuracy('pruned')}, "
          f"compressed {accuracy('compressed')} (agreement "
          f"{report['compressed']['agreement']:.1f}%); MACs x{ratio:.3f}; ONNX Runtime "
          f"latency x{speed:.3f}; {quantized}{report['seconds']:.0f} s; outputs in {out}")
