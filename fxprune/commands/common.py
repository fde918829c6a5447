"""Arguments and steps shared by several sub-commands."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import fx

from fxprune.errors import FxpruneError

from fxprune.models import LoadedModel, load_model
from fxprune.tracing import trace


def input_size(text: str) -> tuple[int, int, int]:
    """argparse type for ``C,H,W``."""
    try:
        size = tuple(int(part) for part in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers), got '{text}'")
    return size


def positive_int(text: str) -> int:
    """argparse type for an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


MODEL_HELP = ("torchvision:<builder>, cifar:resnet<depth>, efficientnet:lite0, timm:<architecture>,"
              " path/to/file.py:callable or package.module:callable")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=None, metavar="T",
                        help="torch threads for recovery, finetuning and evaluation (default: "
                             "the cores the load average leaves free, at least 1: two threads "
                             "sharing one free core run 2-3x slower than one)")


def add_model_arguments(parser: argparse.ArgumentParser, metavar: str = "MODEL",
                        help: str = MODEL_HELP) -> None:
    parser.add_argument("model", metavar=metavar, help=help)
    parser.add_argument("--weights", help="state_dict or checkpoint file (torch.save format)")
    parser.add_argument("--input-size", type=input_size, metavar="C,H,W",
                        help="input size (default: the model's, e.g. 3,224,224)")
    parser.add_argument("--leaf", action="append", default=[], metavar="MODULE",
                        help="qualified name of a module to keep opaque when tracing (repeatable)")


def load_and_trace(args: argparse.Namespace) -> tuple[LoadedModel, tuple[int, int, int],
                                                      fx.GraphModule]:
    """The model named by ``add_model_arguments``' options, its input size and its trace."""
    loaded = load_model(args.model, args.weights)
    size = args.input_size or loaded.input_size
    return loaded, size, trace(loaded.model, size, leaf_modules=args.leaf)


@contextmanager
def atomic_output(out: Path, force: bool) -> Iterator[Path]:
    """A staging folder beside ``out``, renamed to ``out`` when the block succeeds and removed
    when it fails or is interrupted: ``out`` is either complete or untouched. An existing
    ``out`` is refused unless ``force`` (and always when it is not a folder, or is the current
    folder or one above it); an unwritable place fails here, before any work."""
    target = out.resolve()
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise FxpruneError(f"output folder {out} is the current folder or contains it; "
                           "name a new folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FxpruneError(f"output {out} exists and is not a folder")
    if out.exists() and not force:
        raise FxpruneError(f"output folder {out} exists (use --force to replace it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        raise FxpruneError(f"cannot write output folder {out}: {error.strerror} "
                           f"({error.filename})") from error
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
