"""The ``fxprune`` command line. User mistakes print one line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fxprune.errors import FxpruneError
from fxprune.models import load_model
from fxprune.summary import format_table, summarize
from fxprune.tracing import trace


def _input_size(text: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(part) for part in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers), got '{text}'")
    return size


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="torchvision:<builder>, cifar:resnet<depth>, "
                                      "path/to/file.py:callable or package.module:callable")
    parser.add_argument("--weights", help="state_dict or checkpoint file (torch.save format)")
    parser.add_argument("--input-size", type=_input_size, metavar="C,H,W",
                        help="input size (default: the model's, e.g. 3,224,224)")
    parser.add_argument("--leaf", action="append", default=[], metavar="MODULE",
                        help="qualified name of a module to keep opaque when tracing (repeatable)")


def _traced(args: argparse.Namespace):
    loaded = load_model(args.model, args.weights)
    input_size = args.input_size or loaded.input_size
    return loaded, input_size, trace(loaded.model, input_size, leaf_modules=args.leaf)


def _inspect(args: argparse.Namespace) -> int:
    loaded, input_size, gm = _traced(args)
    summary = summarize(gm, input_size)
    if args.json:
        print(json.dumps({"model": args.model, "weights": loaded.weights, **summary}))
    else:
        print(f"{args.model}  (weights: {loaded.weights or 'random init'})")
        print(format_table(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxprune", description="Compress pretrained CNNs with torch.fx graph rewrites and "
                                    "recover accuracy from a tiny image set (PRACTISE).")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="stages, blocks, MACs and params of a model")
    _add_model_arguments(inspect)
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FxpruneError as error:
        print(f"fxprune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fxprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
