"""Every compression scheme on torchvision classifiers the tests do not cover, random weights:
which schemes apply, what each leaves of the MACs, and that the rest fail with an fxprune error
that says why — never with a traceback. A robustness check, not an accuracy benchmark (two
Adam steps per fit, four random images).

    .venv/bin/python tools/sweep_torchvision.py [--models alexnet densenet121 ...] [--threads 1]

Writes ``tools/results/torchvision_sweep.md`` and ``.json``; exits with status 1 when a run
fails with anything other than an ``FxpruneError``.
"""

from __future__ import annotations

import re
import sys
import traceback
import warnings
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune.errors import FxpruneError  # noqa: E402
from fxprune.options import (Decouple, Drop, FilterPruning, Options, Recovery,  # noqa: E402
                             Schedule, Sparsity, StreamPruning)
from fxprune.recovery.fit import FitConfig  # noqa: E402
from fxprune.tracing import example_input  # noqa: E402
from tools.harness import open_sweep  # noqa: E402

MODELS = ("alexnet", "squeezenet1_0", "densenet121", "shufflenet_v2_x0_5", "mnasnet0_5",
          "googlenet", "inception_v3", "regnet_y_400mf", "convnext_tiny", "efficientnet_v2_s",
          "mobilenet_v3_small")
QUICK = FitConfig(lr=1e-3, max_steps=2, patience=2)
STAGEWISE = Recovery(fit=QUICK)
LAYERWISE = Recovery(schedule=Schedule.LAYERWISE, fit=QUICK)
SCHEMES = {  # name -> compress() options; the channel schemes train layer-wise
    "drop rule": Options(drop=Drop.rule(), recovery=STAGEWISE),
    "prune filters 0.5": Options(drop=None, filters=FilterPruning(0.5), recovery=LAYERWISE),
    "prune streams 0.25": Options(drop=None, streams=StreamPruning(0.25), recovery=LAYERWISE),
    "dwpw": Options(drop=None, decouple=Decouple.dwpw(), recovery=STAGEWISE),
    "dwpw, layer-wise": Options(drop=None, decouple=Decouple.dwpw(), recovery=LAYERWISE),
    "sparsity 0.5": Options(drop=None, sparsity=Sparsity(0.5), recovery=STAGEWISE),
}
RESULTS = ROOT / "tools" / "results" / "torchvision_sweep"


def run(name: str, scheme: Options) -> dict:
    """One model and scheme: the MAC ratio and blocks dropped, or the error's message."""
    size = (3, 96, 96) if name == "inception_v3" else (3, 64, 64)
    options = {"aux_logits": False, "init_weights": False} \
        if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **options).eval()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fxprune.compress(model, example_input(size, batch=4, seed=0), size,
                                      scheme, progress=False)
    except FxpruneError as error:
        return {"outcome": "refused", "message": " ".join(str(error).split())}
    except Exception as error:  # noqa: BLE001 - the sweep exists to find these
        traceback.print_exc()
        return {"outcome": "crash", "message": f"{type(error).__name__}: {error}"}
    report = result.report
    return {"outcome": "ok",
            "macs": report.models["compressed"].macs / report.models["original"].macs,
            "drop": report.drop, "adapters": report.adapters,
            "weights_zero": (report.scheme.sparsity or {}).get("weights_zero"),
            "warnings": [" ".join(str(w.message).split()) for w in caught]}


def summarize(results: dict) -> str:
    lines = ["# fxprune on other torchvision classifiers (random weights)", "",
             f"`{results.get('command', '.venv/bin/python tools/sweep_torchvision.py')}` "
             f"(commit {results.get('commit', '?')}, {results.get('threads', '?')} thread(s)) — "
             "MAC ratio of the compressed network where a scheme applies, else the reason "
             "fxprune gives (its first clause; the JSON has the whole message); input 3×64×64 "
             "(Inception-v3: 96×96). Masks leave the dense MACs as they are.", "",
             "| model | " + " | ".join(SCHEMES) + " |", "|---" * (len(SCHEMES) + 1) + "|"]
    for name, row in results["cells"].items():
        cells = []
        for scheme in SCHEMES:
            cell = row.get(scheme)
            if cell is None:
                cells.append("")
            elif cell["outcome"] == "ok":
                count = len(cell["drop"])
                dropped = f" ({count} block{'s' * (count > 1)})" if count else ""
                zeros = cell.get("weights_zero")
                masked = f" ({zeros:.0%} zeros)" if zeros else ""
                cells.append(f"×{cell['macs']:.3f}{dropped}{masked}")
            else:
                reason = re.split("[:;(]", cell["message"])[0].strip()
                droppable = re.search(r"droppable blocks: ([\d., ]+)$", cell["message"])
                if droppable and droppable.group(1).strip():
                    reason += f" (droppable: {droppable.group(1).strip()})"
                cells.append(f"{cell['outcome']}: {reason}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, file, results = open_sweep(__doc__.split("\n\n")[0], MODELS, RESULTS, summarize,
                                     "tools/sweep_torchvision.py", argv, rows=True,
                                     torchvision=torchvision.__version__)
    for name in args.models:
        results["cells"][name] = {scheme: run(name, options)
                                  for scheme, options in SCHEMES.items()}
        file.save(results)
        print(name, {scheme: cell["outcome"] for scheme, cell in results["cells"][name].items()},
              flush=True)
    crashes = [(name, scheme) for name in args.models
               for scheme, cell in results["cells"][name].items() if cell["outcome"] == "crash"]
    print(f"{len(crashes)} crash(es): {crashes}" if crashes else "no crash")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
