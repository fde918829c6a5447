"""Where models come from: spec strings, the bundled CIFAR ResNets and checkpoint loading."""

from fxprune.models.cifar_resnet import cifar_resnet
from fxprune.models.sources import LoadedModel, load_model

__all__ = ["LoadedModel", "cifar_resnet", "load_model"]
