"""``device=``: training where the user asks, results back on the CPU, clear errors."""

from __future__ import annotations

import pytest
import torch

import fxprune
from fxprune import Drop, Options, Recovery
from fxprune.errors import FxpruneError
from fxprune.models import cifar_resnet
from fxprune.execute import resolve_device
from fxprune.recovery.fit import FitConfig
from fxprune.tracing import example_input

SIZE = (3, 16, 16)
QUICK = Recovery(fit=FitConfig(lr=1e-3, max_steps=5, patience=5))


def _compress(device):
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    images = example_input(SIZE, batch=8, seed=2)
    result = fxprune.compress(model, images, SIZE, Options(
        drop=Drop.blocks("1.2", "2.2"), recovery=QUICK, seed=0), progress=False, device=device)
    return result, images


def _on_cpu(module):
    return all(tensor.device.type == "cpu" for tensor in
               [*module.parameters(), *module.buffers()])


@pytest.mark.slow
def test_cpu_device_is_the_default():
    explicit, images = _compress("cpu")
    default, _ = _compress(torch.device("cpu"))
    torch.testing.assert_close(explicit.model(images), default.model(images), rtol=0, atol=0)
    assert explicit.report.device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_returns_cpu_models_close_to_cpu_training():
    on_gpu, images = _compress("cuda")
    on_cpu, _ = _compress("cpu")
    assert all(_on_cpu(model) for model in on_gpu.stages().values())
    assert on_gpu.report.device == "cuda"
    # different kernels, same optimisation: close but not bit-identical
    torch.testing.assert_close(on_gpu.model(images), on_cpu.model(images), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device, message", [
    ("gpu0", "unknown device 'gpu0'"),
    ("meta", "not supported"),
])
def test_bad_devices_are_user_errors(device, message):
    with pytest.raises(FxpruneError, match=message):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_says_so(capsys, tmp_path):
    from fxprune.cli import main
    code = main(["compress", "cifar:resnet20", "--data", "noise:20", "--images", "5",
                 "--drop", "1.2", "--device", "cuda", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA is not available" in err
    assert not (tmp_path / "out").exists()
