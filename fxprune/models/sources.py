"""Turning a model spec string into a ready model with its preprocessing.

These forms are accepted, so that the tool works on the torchvision zoo, on the bundled
CIFAR ResNets (whose pretrained weights live in the shared data folder) and on any user
model without changes to the tool:

* ``torchvision:<builder>``, e.g. ``torchvision:resnet18`` (never downloads weights);
* ``cifar:resnet20`` (also 32, 44, 56, 110);
* ``efficientnet:lite0`` (to lite4; the PyPI package ``efficientnet-lite-pytorch``, made plain
  by ``efficientnet_lite.plain_convs``; Lite0's pretrained weights come from the data folder);
* ``timm:<architecture>``, e.g. ``timm:regnety_008`` (the optional extra ``fxprune[timm]``;
  never downloads weights, ``--weights`` takes a timm checkpoint);
* ``path/to/file.py:callable`` or ``package.module:callable``, called with no arguments.

The input size and normalisation travel with the model because accuracy measurements and
calibration must preprocess exactly as the weights were trained.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from torch import nn

from fxprune.download import cifar_resnet_weights
from fxprune.errors import ModelSpecError
from fxprune.models.checkpoints import load_weights, read_state_dict
from fxprune.models.cifar_resnet import SUPPORTED_DEPTHS, cifar_resnet
from fxprune.models.efficientnet_lite import LITE_MEAN, LITE_STD, efficientnet_lite
from fxprune.models.efficientnet_lite import default_weights as default_efficientnet_weights
from fxprune.models.timm_models import timm_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET_INPUT = (3, 224, 224)
# Builders whose default input is not 224x224.
_TORCHVISION_INPUT = {"inception_v3": (3, 299, 299)}

_ACCEPTED_FORMS = (
    "expected one of: 'torchvision:<builder>' (e.g. torchvision:resnet18), "
    "'cifar:resnet<depth>' (depth in 20, 32, 44, 56, 110), 'efficientnet:lite0' (to lite4), "
    "'timm:<architecture>' (e.g. timm:regnety_008), "
    "'path/to/file.py:callable' or 'package.module:callable'"
)
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode plus what is needed to feed it correctly."""

    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str | None  # path or description of the weights used; None = random init


def load_model(spec: str, weights: str | None = None) -> LoadedModel:
    """Build the model named by ``spec``; load ``weights`` (a checkpoint path) strictly if given."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "torchvision":
        loaded = _from_torchvision(rest)
    elif sep and prefix == "cifar":
        loaded = _from_cifar(rest, use_default_weights=weights is None)
    elif sep and prefix == "efficientnet":
        # the package's own key names: weights load before its convs are made plain
        return _from_efficientnet(rest, weights)
    elif sep and prefix == "timm":
        return _from_timm(rest, weights)  # the classifier is sized from the weights
    elif ":" in spec:
        loaded = _from_callable(spec)
    else:
        raise ModelSpecError(f"model spec {spec!r} not understood; {_ACCEPTED_FORMS}")
    loaded.model.eval()
    if weights is None:
        return loaded
    load_weights(loaded.model, read_state_dict(weights), source=weights)
    return replace(loaded, weights=weights)


def _from_torchvision(builder: str) -> LoadedModel:
    import torchvision  # here, not at the top: importing it takes seconds (torch._dynamo)

    available = torchvision.models.list_models(module=torchvision.models)
    if builder not in available:
        close = difflib.get_close_matches(builder, available, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelSpecError(
            f"unknown torchvision classification builder {builder!r} in spec "
            f"'torchvision:{builder}'{hint}"
        )
    model = torchvision.models.get_model(builder, weights=None)
    return LoadedModel(
        model=model,
        name=builder,
        input_size=_TORCHVISION_INPUT.get(builder, _IMAGENET_INPUT),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=None,
    )


def _from_cifar(name: str, use_default_weights: bool) -> LoadedModel:
    match = re.fullmatch(r"resnet(\d+)", name)
    if match is None or int(match.group(1)) not in SUPPORTED_DEPTHS:
        known = ", ".join(f"resnet{d}" for d in SUPPORTED_DEPTHS)
        raise ModelSpecError(f"unknown CIFAR model {name!r} in spec 'cifar:{name}'; known: {known}")
    depth = int(match.group(1))
    model = cifar_resnet(depth)
    weights = _default_cifar_weights(depth) if use_default_weights else None
    if weights is not None:
        load_weights(model, read_state_dict(weights), source=str(weights))
    # The source trainer normalised CIFAR images with ImageNet statistics.
    return LoadedModel(
        model=model,
        name=name,
        input_size=(3, 32, 32),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=str(weights) if weights is not None else None,
    )


def _from_efficientnet(variant: str, weights: str | None) -> LoadedModel:
    path = weights if weights is not None else default_efficientnet_weights(variant)
    model, side = efficientnet_lite(variant, path)
    return LoadedModel(model=model, name=f"efficientnet-{variant}", input_size=(3, side, side),
                       mean=LITE_MEAN, std=LITE_STD,
                       weights=str(path) if path is not None else None)


def _from_timm(name: str, weights: str | None) -> LoadedModel:
    model, size, mean, std = timm_model(name, weights)
    return LoadedModel(model=model, name=name, input_size=size, mean=mean, std=std,
                       weights=weights)


def _default_cifar_weights(depth: int) -> Path | None:
    """The pretrained checkpoint for ``depth``: the data folder's, else cached or downloaded;
    None (random init, as for torchvision: specs) only when FXPRUNE_OFFLINE forbids a download."""
    return cifar_resnet_weights(depth, required=False)


def _from_callable(spec: str) -> LoadedModel:
    target, _, attr = spec.rpartition(":")
    if not _DOTTED_NAME.match(attr):
        raise ModelSpecError(f"model spec {spec!r}: {attr!r} is not a callable name; {_ACCEPTED_FORMS}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module, where = _import_file(Path(target), spec), f"file {target}"
    elif _DOTTED_NAME.match(target):
        module, where = _import_module(target, spec), f"module {target}"
    else:
        raise ModelSpecError(f"model spec {spec!r} not understood; {_ACCEPTED_FORMS}")
    factory = _resolve(module, attr, where, spec)
    try:
        model = factory()
    except Exception as exc:  # any failure of user code is a problem with the spec
        raise ModelSpecError(f"model spec {spec!r}: calling {attr}() from {where} failed: {exc!r}") from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model spec {spec!r}: {attr}() from {where} returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return LoadedModel(
        model=model,
        name=attr.rsplit(".", 1)[-1],
        input_size=_IMAGENET_INPUT,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=None,
    )


def _import_file(path: Path, spec: str) -> ModuleType:
    """Import a Python file under a private, path-derived module name."""
    if not path.is_file():
        raise ModelSpecError(f"model spec {spec!r}: file {path} not found")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = "_fxprune_user_" + re.sub(r"\W", "_", resolved.stem) + "_" + digest
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ModelSpecError(f"model spec {spec!r}: cannot import file {path}")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running so that code in the file that looks itself up (dataclasses,
    # pickling) finds it.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # any failure of user code is a problem with the spec
        del sys.modules[module_name]
        raise ModelSpecError(f"model spec {spec!r}: importing file {path} failed: {exc!r}") from exc
    return module


def _import_module(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"model spec {spec!r}: module {name} not found ({exc})") from exc
    except Exception as exc:  # any failure of user code is a problem with the spec
        raise ModelSpecError(f"model spec {spec!r}: importing module {name} failed: {exc!r}") from exc


def _resolve(module: ModuleType, attr: str, where: str, spec: str) -> Callable[[], object]:
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSpecError(f"model spec {spec!r}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"model spec {spec!r}: {attr!r} in {where} is not callable")
    return obj
