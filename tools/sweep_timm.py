"""fxprune on timm's CNN families (random weights, 10 classes, input 3×128×128): the stages and
blocks found against the architecture's own definition, the paper-rule drop with adapters at
both placements folded away exactly (float64 and float32, random adapters and BN statistics),
ONNX Runtime parity of the folded network, the prunable maps and residual streams found, and a
short ``fxprune.compress`` (a few recovery steps on noise images). A robustness and exactness
check, not an accuracy benchmark.

    .venv/bin/python tools/sweep_timm.py [--models resnet18 regnety_008 ...] [--threads 1]

Writes ``tools/results/timm_sweep.md`` and ``.json`` (resumable: finished models are kept);
exits with status 1 when any model fails with anything other than an ``FxpruneError``.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune.adapters import Adapter  # noqa: E402
from fxprune.analysis.channels import coupled_maps, prunable_maps  # noqa: E402
from fxprune.errors import FxpruneError  # noqa: E402
from fxprune.export import export_onnx, onnx_outputs  # noqa: E402
from fxprune.options import Drop, Options, Placement, Recovery  # noqa: E402
from fxprune.passes import folding  # noqa: E402
from fxprune.recovery.fit import FitConfig  # noqa: E402
from fxprune.tracing import example_input, opaque_leaves, trace  # noqa: E402
from tests.helpers import calibrate_and_randomize, randomize_adapters  # noqa: E402
from tools.harness import open_sweep  # noqa: E402

SIZE = (3, 128, 128)
MODELS = (  # by family; every name is a timm 1.0 architecture
    "resnet18 resnet50d resnext26ts seresnet33ts ecaresnet26t skresnet18 resnest14d "
    "res2net50_14w_8s resnetrs50 resnetv2_50 regnetx_008 regnety_008 regnetz_b16 "
    "efficientnet_b0 efficientnet_lite0 tf_efficientnet_lite0 tf_efficientnet_b0 "
    "efficientnetv2_rw_t tf_efficientnetv2_b0 mobilenetv2_100 mobilenetv3_large_100 "
    "mobilenetv4_conv_small mnasnet_100 fbnetc_100 spnasnet_100 mixnet_s tinynet_a lcnet_100 "
    "ghostnet_100 rexnet_100 hardcorenas_a dla34 cspresnet50 cspdarknet53 darknet53 dpn68 "
    "hrnet_w18_small repvgg_a2 gernet_s mobileone_s0 ese_vovnet19b_dw selecsls42b nf_resnet26 "
    "convnext_atto vgg11_bn inception_v3 xception41 densenet121 halonet26t bat_resnext26ts "
    "fastvit_t8").split()
QUICK = Recovery(fit=FitConfig(lr=1e-3, max_steps=3, patience=3))
RESULTS = ROOT / "tools" / "results" / "timm_sweep"
FP64_LIMIT, FP32_LIMIT, ONNX_LIMIT = 1e-9, 1e-4, 1e-4


def definition_blocks(model: nn.Module) -> list[int] | None:
    """Blocks per stage as the architecture's own module tree lists them: ResNet-style
    ``layer1..4``, ``stages[i]`` (or ``stages[i].blocks``), EfficientNet-style ``blocks[i]``,
    RegNet's ``s1..s4``, else the block modules under each top-level child; None when no
    module is a block."""
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    for attribute in ("stages", "blocks"):
        stages = getattr(model, attribute, None)
        if isinstance(stages, nn.Sequential):
            inner = [getattr(stage, "blocks", stage) for stage in stages]
            return [len(blocks) if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else 1
                    for blocks in inner]
    if all(hasattr(model, f"s{i}") for i in range(1, 5)):
        return [len(list(getattr(model, f"s{i}").children())) for i in range(1, 5)]
    counts = [_block_modules(child) for child in model.children()]  # DLA levels, ReXNet, ...
    return [count for count in counts if count] or None


def _block_modules(module: nn.Module) -> int:
    """How many innermost modules below ``module`` the definition names as blocks (a class
    name ending in Block, Bottleneck, Basic or Module: DLA's DlaBasic, ReXNet's
    LinearBottleneck)."""
    inner = sum(_block_modules(child) for child in module.children())
    return inner or int(type(module).__name__.endswith(("Block", "Bottleneck", "Basic",
                                                         "Module")))


def relative(expected: torch.Tensor, actual: torch.Tensor) -> float:
    expected, actual = expected.double(), actual.double()
    return ((expected - actual).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _fold(model: nn.Module, ids: list[str], dtype: torch.dtype, placement: Placement):
    """Drop ``ids``, place adapters, randomize them and the BN statistics, fold: the output
    with identity adapters, before and after folding, the sites and the folded graph."""
    # drawn in float64 for both dtypes: the float32 run must see the same input
    x = example_input(SIZE, batch=2, dtype=torch.float64, seed=1).to(dtype)
    gm = trace(model.to(dtype), SIZE)
    calibrate_and_randomize(gm, x)
    plan = fxprune.plan(gm, Options(drop=Drop.blocks(*ids), recovery=Recovery(
        placement=placement)), input_size=SIZE, progress=False)
    sites = plan.adapter_sites
    gm = plan.rewrite()
    with torch.no_grad():
        identity = gm(x)
        randomize_adapters(gm, scale=0.3)
        unfolded = gm(x)
        gm = folding()(gm).graph_module
        folded = gm(x)
    return identity, unfolded, folded, sites, gm


def fold_errors(model: nn.Module, ids: list[str]) -> dict:
    """Worst relative fold error over both placements: in float64 (folded vs unfolded), and
    in float32 against the float64 unfolded output beside the float32 rounding of the unfolded
    network itself (``fp32_rounding``: random weights can make a network ill-conditioned);
    the adapters placed and left, how much the random adapters change the output
    (``effect``: a fold error is only meaningful when they do), and the folded float32
    network's ONNX Runtime parity."""
    row = {"adapters": {}, "adapters_left": 0, "fp64": 0.0, "fp32": 0.0, "fp32_rounding": 0.0,
           "effect": 0.0}
    reference = {}
    for dtype in (torch.float64, torch.float32):
        for placement in Placement:
            identity, unfolded, folded, sites, gm = _fold(model, ids, dtype, placement)
            if dtype == torch.float64:
                reference[placement] = unfolded
                row["fp64"] = max(row["fp64"], relative(unfolded, folded))
                row["effect"] = max(row["effect"], relative(identity, unfolded))
            else:
                row["fp32"] = max(row["fp32"], relative(reference[placement], folded))
                row["fp32_rounding"] = max(row["fp32_rounding"],
                                           relative(reference[placement], unfolded))
            row["adapters"][placement] = len(sites)
            row["adapters_left"] += sum(isinstance(m, Adapter) for m in gm.modules())
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(gm, SIZE, Path(folder) / "folded.onnx")
        x = example_input(SIZE, batch=2, seed=2)
        with torch.no_grad():
            row["onnx"] = relative(gm(x), onnx_outputs(path, x))
    model.float()
    return row


def short_compress(model: nn.Module) -> dict:
    images = example_input(SIZE, batch=4, seed=0)
    options = Options(drop=Drop.rule(), recovery=QUICK)
    report = fxprune.compress(model, images, SIZE, options, progress=False).report
    return {"macs": report.models["compressed"].macs / report.models["original"].macs,
            "drop": report.drop, "adapters": report.adapters}


def export_check(model: nn.Module) -> dict:
    """Whether ``torch.export`` (the alternative front end to torch.fx tracing) captures the
    model at this size, and how long it takes: the measurement behind fxprune's choice."""
    start = time.perf_counter()
    try:
        torch.export.export(model, (example_input(SIZE),), strict=False)
        outcome = "ok"
    except Exception as error:  # noqa: BLE001 - recorded, not raised
        outcome = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return {"outcome": outcome, "seconds": round(time.perf_counter() - start, 2)}


def measure(name: str) -> dict:
    """One architecture: outcome 'compressed', 'refused' (an FxpruneError, its message) or
    'failed' (anything else, with the traceback printed)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    row = {"definition": definition_blocks(model), "export": export_check(model)}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = trace(model, SIZE)
        row["trace_seconds"] = round(time.perf_counter() - start, 2)
        structure = fxprune.find_structure(gm)
        row.update(found=[len(stage.blocks) for stage in structure.stages],
                   kinds=sorted({block.kind for block in structure.blocks}),
                   residual=any(block.join for block in structure.blocks),
                   droppable=sum(block.droppable for block in structure.blocks),
                   leaves=opaque_leaves(gm),
                   maps=len(prunable_maps(gm, structure)), streams=len(coupled_maps(gm)))
        row["rule"] = fxprune.paper_rule(structure)
        if row["rule"]:
            row.update(fold_errors(model, row["rule"]))
        row["compress"] = short_compress(model)
        row["outcome"] = "compressed"
    except FxpruneError as error:
        row.update(outcome="refused", message=" ".join(str(error).split()))
    except Exception as error:  # noqa: BLE001 - the sweep exists to find these
        traceback.print_exc()
        row.update(outcome="failed", message=f"{type(error).__name__}: {error}")
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def exact(row: dict) -> bool:
    """Folding exact: float64 within ``FP64_LIMIT``; float32 within ``FP32_LIMIT``, or within
    twice the float32 rounding the unfolded network itself shows; ONNX Runtime within
    ``ONNX_LIMIT``; no adapter left."""
    fp32_limit = max(FP32_LIMIT, 2 * row.get("fp32_rounding", 0.0))
    return row.get("fp64", 1) <= FP64_LIMIT and row.get("fp32", 1) <= fp32_limit and \
        row.get("onnx", 1) <= ONNX_LIMIT and row.get("adapters_left", 1) == 0


def as_definition(row: dict) -> str | None:
    """'stages' when the blocks per stage equal the definition's, 'blocks' when only their
    total does (the definition groups blocks otherwise than by output shape), None else —
    allowing a first or last definition stage of plain convs that fxprune counts into the stem
    or head, and a stem that is itself a block (RepVGG's)."""
    found, definition = row.get("found"), row.get("definition")
    if found is None or definition is None:
        return None
    variants = (definition, definition[1:], definition[:-1])
    if found in variants or found[1:] in variants:
        return "stages"
    totals = {sum(variant) for variant in variants}
    return "blocks" if {sum(found), sum(found[1:])} & totals else None


def summarize(results: dict) -> str:
    cells = results["cells"]
    residual = [name for name, row in cells.items() if row.get("residual")]
    good = [name for name in residual
            if as_definition(cells[name]) and cells[name].get("rule") and exact(cells[name])]
    outcomes = {kind: [name for name, row in cells.items() if row["outcome"] == kind]
                for kind in ("compressed", "refused", "failed")}
    exported = [name for name, row in cells.items() if row["export"]["outcome"] == "ok"]
    traced = [name for name, row in cells.items() if "trace_seconds" in row]
    lines = ["# fxprune on timm CNNs (random weights, 10 classes, input 3×128×128)", "",
             f"`{results.get('command', '.venv/bin/python tools/sweep_timm.py')}` (commit "
             f"{results.get('commit', '?')}, {results.get('threads', '?')} thread(s), "
             f"{results.get('machine', '?')}; "
             + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()) + ")", "",
             f"{len(cells)} architectures: **{len(outcomes['compressed'])} compressed, "
             f"{len(outcomes['refused'])} refused with one line "
             f"({', '.join(outcomes['refused']) or 'none'}), {len(outcomes['failed'])} "
             f"failed**. Of the {len(residual)} with residual (add) blocks, **{len(good)} "
             f"({len(good) / max(1, len(residual)):.0%})** have their blocks found as their "
             "definition lists them (per stage, or in total), a paper-rule drop, and exact "
             "folding; the others: "
             f"{', '.join(name for name in residual if name not in good) or 'none'}. "
             f"Front ends: fxprune's torch.fx trace with canonicalization captures "
             f"{len(traced)}, `torch.export` (non-strict) {len(exported)} of {len(cells)}.", "",
             "Definition: blocks per timm stage container; found: fxprune's stages (runs of "
             "blocks with one output shape); `≠`: neither per stage nor in total as the "
             "definition, `(=Σ)`: the same total, grouped otherwise. Fold errors are the worst over the "
             "paper's and the CVPR placement, relative to the output's largest magnitude; "
             "float32 is against the float64 unfolded output, and where random weights make the "
             "network itself round worse than 1e-4 in float32 (its `fp32_rounding` in the "
             "JSON), the bar is twice that. Leaves: modules still opaque after "
             "canonicalization.", "",
             "| model | definition | found | kinds | droppable | rule drop | adapters paper / "
             "cvpr | fp64 | fp32 | ONNX | maps / streams | compress (MACs) | leaves | s |",
             "|---" * 14 + "|"]
    for name, row in cells.items():
        if row["outcome"] != "compressed":
            lines.append(f"| {name} | {row['definition'] or '—'} | **{row['outcome']}**: "
                         f"{row['message'][:160]} |" + " |" * 11 + f" {row['seconds']} |")
            continue
        adapters = row.get("adapters", {})
        errors = " | ".join(f"{row[key]:.1e}" if key in row else "—"
                            for key in ("fp64", "fp32", "onnx"))
        mark = {"stages": "", "blocks": " (=Σ)", None: " ≠"}[as_definition(row)] \
            if row["residual"] else ""
        lines.append(
            f"| {name} | {row['definition'] or '—'} | {row['found']}{mark} | "
            f"{', '.join(row['kinds'])} | {row['droppable']} | {', '.join(row['rule']) or '—'} | "
            f"{adapters.get('paper', '—')} / {adapters.get('cvpr', '—')} | {errors} | "
            f"{row['maps']} / {row['streams']} | ×{row['compress']['macs']:.3f} | "
            f"{', '.join(row['leaves']) or '—'} | {row['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, file, results = open_sweep(__doc__.split("\n\n")[0], MODELS, RESULTS, summarize,
                                     "tools/sweep_timm.py", argv, timm=timm.__version__)
    for name in args.models:
        results["cells"][name] = measure(name)
        file.save(results)
        row = results["cells"][name]
        print(f"{name}: {row['outcome']} {row.get('found', row.get('message', ''))} "
              f"fp64 {row.get('fp64')} onnx {row.get('onnx')} ({row['seconds']} s)", flush=True)
    failed = [name for name in args.models if results["cells"][name]["outcome"] == "failed"]
    print(f"{len(failed)} failed: {failed}" if failed else "none failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
