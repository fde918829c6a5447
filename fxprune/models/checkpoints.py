"""Reading weight files and loading them strictly, with errors that say what does not fit.

Checkpoints in the wild come wrapped (``{'state_dict': ...}``, ``{'model': ...}``) and often
carry the ``module.`` prefix of ``nn.DataParallel``; both are undone here so that every
source of models can share one strict load. Loading is strict because a silently partial
load would make every later accuracy number meaningless.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from fxprune.errors import WeightsError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_DATA_PARALLEL_PREFIX = "module."
_MAX_LISTED = 8


def _is_tensor_mapping(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and any(isinstance(v, Tensor) for v in value.values())
    )


def _unwrap(content: object) -> Mapping[str, object] | None:
    """The mapping of tensors inside ``content``, looking one wrapper level deep."""
    if isinstance(content, Mapping):
        for key in _WRAPPER_KEYS:
            if _is_tensor_mapping(content.get(key)):
                return content[key]
    if _is_tensor_mapping(content):
        return content
    return None


def _safetensors_loader():
    """The reader of ``.safetensors`` files (the format of the Hugging Face hub, where timm's
    weights live)."""
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise WeightsError("reading .safetensors files needs the package safetensors (pip "
                           "install safetensors; timm installs it)") from error
    return lambda path: load_file(str(path), device="cpu")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of the checkpoint at ``path``, unwrapped and without a ``module.`` prefix.

    Only tensors are kept: wrappers often mix in metadata (epochs, accuracies) that a state
    dict must not contain.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    load = _safetensors_loader() if path.suffix == ".safetensors" else \
        lambda file: torch.load(file, map_location="cpu", weights_only=True)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing
            warnings.simplefilter("ignore")
            content = load(path)
    except Exception as exc:  # torch.load raises many types on garbled or unsafe input
        # the loaders' own messages run to several paragraphs; the cause is kept as __cause__
        raise WeightsError(f"cannot read weights file {path}: not a torch.save checkpoint of "
                           f"tensors, or a damaged one ({type(exc).__name__})") from exc
    tensors = _unwrap(content)
    if tensors is None:
        raise WeightsError(
            f"weights file {path} holds no state dict (expected a mapping of names to tensors, "
            f"optionally under one of the keys {', '.join(_WRAPPER_KEYS)})"
        )
    state = {k: v for k, v in tensors.items() if isinstance(v, Tensor)}
    if all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
    return state


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}"


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly; raise WeightsError naming ``source``.

    ``num_batches_tracked`` buffers are tolerated when absent, because checkpoints saved by
    old PyTorch versions lack them and they do not affect inference.
    """
    expected = model.state_dict()
    missing = [
        k for k in expected
        if k not in state_dict and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise WeightsError(
            f"weights {source} do not fit {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=False)
