"""Model sources: the CIFAR ResNet definition, checkpoint reading/loading and model specs."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fxprune.errors import ModelSpecError, WeightsError
from fxprune.models import LoadedModel, cifar_resnet, load_model
from fxprune.models.checkpoints import load_weights, read_state_dict
from tests.helpers import slow_case


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cifar_weights(shared_path, depth: int) -> Path:
    """The data folder's checkpoint of this depth (skips the test without it)."""
    found = sorted(shared_path("weights/cifar10-resnet").glob(f"resnet{depth}-*.th"))
    if not found:
        pytest.skip(f"no resnet{depth}-*.th in the data folder")
    return found[0]


_LOSSLESS = "cifar10/cifar10_lossless_prefix.npz"


# --- the CIFAR ResNet definition ------------------------------------------------------------


@pytest.mark.parametrize(("depth", "expected"), [(20, 269_722), (56, 853_018)])
def test_param_counts_match_published(depth: int, expected: int) -> None:
    assert _n_params(cifar_resnet(depth)) == expected


def test_all_depths_build_and_bad_depth_is_rejected() -> None:
    for depth in (20, 32, 44, 56, 110):
        blocks = (depth - 2) // 6
        assert len(cifar_resnet(depth).layer3) == blocks
    with pytest.raises(ValueError, match="21"):
        cifar_resnet(21)


def test_num_classes_sets_head() -> None:
    model = cifar_resnet(20, num_classes=100).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_symbolic_trace_matches_eager() -> None:
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    # Non-trivial BN statistics so the comparison exercises every op.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
    # Identity shortcuts add the input directly; only the two downsampling blocks pad.
    pads = [n for n in traced.graph.nodes if n.target is torch.nn.functional.pad]
    owners = [next(reversed(n.meta["nn_module_stack"])) for n in pads]
    assert owners == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert [n.args[1] for n in pads] == [(0, 0, 0, 0, 8, 8), (0, 0, 0, 0, 16, 16)]


def test_state_dict_keys_follow_checkpoint_layout() -> None:
    keys = set(cifar_resnet(20).state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer3.2.conv2.weight", "linear.bias"} <= keys
    assert not any("shortcut" in k for k in keys)


# --- real pretrained weights ----------------------------------------------------------------


def _top1(loaded: LoadedModel, lossless: Path, count: int) -> float:
    data = np.load(lossless)
    x = torch.from_numpy(data["test_x"][:count]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    y = torch.from_numpy(data["test_y"][:count])
    with torch.no_grad():
        pred = loaded.model((x - mean) / std).argmax(1)
    return (pred == y).float().mean().item()


@pytest.mark.parametrize(("depth", "minimum"), [(20, 0.89), slow_case(56, 0.90)])
def test_pretrained_cifar_resnet_accuracy(shared_path, depth: int, minimum: float) -> None:
    weights = _cifar_weights(shared_path, depth)
    loaded = load_model(f"cifar:resnet{depth}")
    assert loaded.weights == str(weights)
    assert loaded.input_size == (3, 32, 32)
    assert not loaded.model.training
    assert _top1(loaded, shared_path(_LOSSLESS), 300) >= minimum


def test_raw_checkpoint_is_unwrapped_and_unprefixed(shared_path) -> None:
    state = read_state_dict(_cifar_weights(shared_path, 20))
    assert len(state) == 97
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)


# --- checkpoint reading ---------------------------------------------------------------------


def _tiny() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "model_state_dict", "net"])
@pytest.mark.parametrize("prefixed", [False, True])
def test_read_state_dict_unwraps_and_strips_prefix(
    tmp_path: Path, wrapper: str | None, prefixed: bool
) -> None:
    source = _tiny()
    state = OrderedDict(
        (("module." if prefixed else "") + k, v) for k, v in source.state_dict().items()
    )
    content = state if wrapper is None else {wrapper: state, "epoch": 7, "best_prec1": 91.2}
    path = tmp_path / "ck.pth"
    torch.save(content, path)
    read = read_state_dict(path)
    assert set(read) == set(source.state_dict())
    for key, value in source.state_dict().items():
        torch.testing.assert_close(read[key], value, rtol=0, atol=0)


def test_prefix_kept_when_not_on_every_key(tmp_path: Path) -> None:
    path = tmp_path / "ck.pth"
    torch.save({"module.a": torch.zeros(1), "b": torch.ones(1)}, path)
    assert set(read_state_dict(path)) == {"module.a", "b"}


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        read_state_dict(path)


def test_garbled_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "garbled.pth"
    path.write_bytes(b"not really a checkpoint" * 10)
    with pytest.raises(WeightsError, match="garbled.pth"):
        read_state_dict(path)


def test_truncated_checkpoint_names_path(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(_tiny().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightsError, match="cut.pth"):
        read_state_dict(path)


def test_file_without_tensors_names_path(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "best_prec1": 90.0}, path)
    with pytest.raises(WeightsError, match="meta.pth"):
        read_state_dict(path)


# --- strict loading -------------------------------------------------------------------------


def test_load_weights_tolerates_missing_num_batches_tracked() -> None:
    source, target = _tiny(), _tiny()
    with torch.no_grad():
        source[0].weight.normal_()
        source[1].running_mean.normal_()
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    load_weights(target, state, source="test")
    torch.testing.assert_close(target[0].weight, source[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(target[1].running_mean, source[1].running_mean, rtol=0, atol=0)


def test_mismatch_error_lists_missing_unexpected_and_shapes() -> None:
    state = dict(_tiny().state_dict())
    del state["1.running_var"]
    state["2.weight"] = torch.zeros(3)
    state["0.weight"] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(WeightsError) as info:
        load_weights(_tiny(), state, source="bad.pth")
    message = str(info.value)
    assert "bad.pth" in message
    assert "missing keys (1): 1.running_var" in message
    assert "unexpected keys (1): 2.weight" in message
    assert "0.weight (file (5, 3, 3, 3), model (4, 3, 3, 3))" in message


def test_mismatch_error_truncates_long_lists() -> None:
    model = cifar_resnet(20)
    with pytest.raises(WeightsError) as info:
        load_weights(model, {}, source="empty")
    message = str(info.value)
    expected_missing = sum("num_batches_tracked" not in k for k in model.state_dict())
    assert f"missing keys ({expected_missing})" in message
    assert f"... and {expected_missing - 8} more" in message


def test_load_model_with_explicit_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = cifar_resnet(20)
    path = tmp_path / "mine.th"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    loaded = load_model("cifar:resnet20", weights=str(path))
    assert loaded.weights == str(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), source.eval()(x), rtol=1e-6, atol=1e-6)


def test_explicit_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "r20.th"
    torch.save(cifar_resnet(20).state_dict(), path)
    with pytest.raises(WeightsError, match=r"r20\.th.*layer1\.3"):
        load_model("cifar:resnet32", weights=str(path))


# --- model specs ----------------------------------------------------------------------------


def test_torchvision_spec() -> None:
    loaded = load_model("torchvision:resnet18")
    assert loaded.name == "resnet18"
    assert loaded.input_size == (3, 224, 224)
    assert loaded.mean == (0.485, 0.456, 0.406) and loaded.std == (0.229, 0.224, 0.225)
    assert loaded.weights is None and not loaded.model.training
    assert _n_params(loaded.model) == 11_689_512


@pytest.mark.filterwarnings("ignore:The default weight initialization of inception_v3")
def test_torchvision_inception_input_size() -> None:
    assert load_model("torchvision:inception_v3").input_size == (3, 299, 299)


def test_unknown_torchvision_builder_suggests_close_names() -> None:
    with pytest.raises(ModelSpecError, match=r"resnet81.*close matches:.*resnet18"):
        load_model("torchvision:resnet81")


def test_torchvision_non_classification_builder_rejected() -> None:
    with pytest.raises(ModelSpecError, match="fasterrcnn_resnet50_fpn"):
        load_model("torchvision:fasterrcnn_resnet50_fpn")


def test_bad_cifar_spec_names_it() -> None:
    with pytest.raises(ModelSpecError, match=r"resnet21.*resnet20, resnet32"):
        load_model("cifar:resnet21")


def test_cifar_offline_without_data_folder_is_random(monkeypatch: pytest.MonkeyPatch) -> None:
    """FXPRUNE_OFFLINE (set for every test) forbids the download: random weights instead."""
    monkeypatch.setenv("FXPRUNE_DATA", "none")
    loaded = load_model("cifar:resnet20")
    assert loaded.weights is None and loaded.input_size == (3, 32, 32)


def test_module_spec() -> None:
    loaded = load_model("torchvision.models:resnet18")
    assert loaded.name == "resnet18" and isinstance(loaded.model, nn.Module)
    assert loaded.input_size == (3, 224, 224) and not loaded.model.training


_USER_FILE = """
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())

def broken():
    raise RuntimeError("kaboom")

def not_a_model():
    return 42
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(_USER_FILE)
    return path


def test_file_spec(user_file: Path) -> None:
    loaded = load_model(f"{user_file}:build")
    assert loaded.name == "build"
    assert _n_params(loaded.model) == 8 * 3 * 3 * 3 + 8


def test_relative_file_spec(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(user_file.parent)
    assert isinstance(load_model("my_model.py:build").model, nn.Sequential)


@pytest.mark.parametrize(
    ("attr", "pattern"),
    [
        ("missing", r"my_model\.py has no attribute 'missing'"),
        ("broken", r"broken\(\).*my_model\.py.*kaboom"),
        ("not_a_model", r"not_a_model\(\).*returned int"),
    ],
)
def test_file_spec_errors(user_file: Path, attr: str, pattern: str) -> None:
    with pytest.raises(ModelSpecError, match=pattern):
        load_model(f"{user_file}:{attr}")


def test_missing_file_spec(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match=r"absent\.py not found"):
        load_model(f"{tmp_path}/absent.py:build")


def test_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "syntax_error.py"
    path.write_text("def build(:\n")
    with pytest.raises(ModelSpecError, match=r"syntax_error\.py"):
        load_model(f"{path}:build")


def test_missing_module_spec() -> None:
    with pytest.raises(ModelSpecError, match=r"module no_such_pkg_xyz\.models not found"):
        load_model("no_such_pkg_xyz.models:build")


def test_missing_attribute_in_module_spec() -> None:
    with pytest.raises(ModelSpecError, match=r"module torchvision\.models has no attribute 'resnet99'"):
        load_model("torchvision.models:resnet99")


@pytest.mark.parametrize("spec", ["resnet18", "", "some thing:build", "pkg.mod:not-a-name"])
def test_unrecognised_spec_lists_accepted_forms(spec: str) -> None:
    with pytest.raises(ModelSpecError) as info:
        load_model(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "torchvision:<builder>" in message and "cifar:resnet<depth>" in message
