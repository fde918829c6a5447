"""``timm:<name>`` model specs: any architecture of PyTorch Image Models (the optional extra
``pip install 'fxprune[timm]'``), with the preprocessing of its pretrained configuration.

timm's modules trace into functional batch norms, shape asserts and input-size-dependent
padding; ``fxprune.trace`` turns those into its canonical graph, so nothing here adapts the
model. Weights never download: ``--weights`` takes a timm checkpoint (``model.safetensors``
or ``pytorch_model.bin`` of the hub, or any ``torch.save`` state dict); the classifier is
sized from the checkpoint, so a fine-tuned 10-class checkpoint loads as well as ImageNet's.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import Tensor, nn

from fxprune.errors import ModelSpecError
from fxprune.models.checkpoints import load_weights, read_state_dict

INSTALL_HINT = "pip install 'fxprune[timm]' (or pip install timm)"


def _timm():
    try:
        import timm
    except ImportError as error:
        raise ModelSpecError(f"spec 'timm:...' needs the package timm: {INSTALL_HINT}") from error
    return timm


def _classes_in(state: dict[str, Tensor], classifier: str | None) -> int | None:
    """The number of classes of a checkpoint, read from its classifier's weight."""
    weight = state.get(f"{classifier}.weight") if classifier else None
    return int(weight.shape[0]) if weight is not None else None


def timm_model(name: str, weights: str | Path | None
               ) -> tuple[nn.Module, tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """The eval-mode model, its input size, mean and std (from timm's pretrained config)."""
    timm = _timm()
    if not timm.is_model(name):  # an architecture, or one with a pretrained tag (resnet50.a1_in1k)
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelSpecError(f"unknown timm architecture {name!r} in spec 'timm:{name}'{hint}")
    state = read_state_dict(weights) if weights is not None else None
    options = {}
    if state is not None:
        classifier = timm.models.get_pretrained_cfg_value(name, "classifier")
        classes = _classes_in(state, classifier if isinstance(classifier, str) else None)
        if classes is not None:
            options["num_classes"] = classes
    model = timm.create_model(name, pretrained=False, **options)
    if state is not None:
        load_weights(model, state, source=str(weights))
    config = timm.data.resolve_data_config({}, model=model)
    return (model.eval(), tuple(config["input_size"]), tuple(config["mean"]),
            tuple(config["std"]))
