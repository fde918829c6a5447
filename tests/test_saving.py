"""``fxprune.save`` / ``fxprune.load``: a compressed model runs from its file alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import fxprune
from fxprune.passes import FoldBatchNorm
from fxprune.errors import FxpruneError

# A model whose class lives only in this string: the loading process cannot import it.
MODEL_SOURCE = """
import torch
from torch import nn

class Private(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(x.mean((2, 3)))
"""


@pytest.fixture
def saved(tmp_path):
    namespace: dict = {}
    exec(textwrap.dedent(MODEL_SOURCE), namespace)  # noqa: S102 (test fixture source)
    torch.manual_seed(0)
    model = namespace["Private"]().eval()
    gm = fxprune.PassManager([FoldBatchNorm()])(
        fxprune.trace(model, (3, 12, 12))).graph_module
    path = fxprune.save(gm, (3, 12, 12), tmp_path / "model.pt2")
    images = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    torch.save({"images": images, "expected": model(images).detach()}, tmp_path / "check.pt")
    return path, model, images


def test_loaded_model_matches_and_takes_any_batch(saved):
    path, model, images = saved
    loaded = fxprune.load(path)
    torch.testing.assert_close(loaded(images), model(images), rtol=1e-5, atol=1e-5)
    assert loaded(images[:1]).shape == (1, 5)
    assert loaded(torch.cat([images] * 3)).shape == (9, 5)
    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    assert fxprune.load(path.parent)(images).shape == (3, 5)  # the folder form


@pytest.mark.slow
def test_loads_without_the_model_code_or_fxprune(saved):
    path, _, _ = saved
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["fxprune"] = None  # importing fxprune would fail
        module = torch.export.load({str(path)!r}).module()
        check = torch.load({str(path.parent / 'check.pt')!r})
        difference = (module(check["images"]) - check["expected"]).abs().max().item()
        assert difference < 1e-5, difference
        print("ok")
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(FxpruneError, match="no saved model"):
        fxprune.load(tmp_path / "absent.pt2")
    with pytest.raises(FxpruneError, match="model.pt2"):
        fxprune.load(tmp_path)  # a folder without model.pt2
    garbled = tmp_path / "garbled.pt2"
    garbled.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FxpruneError, match="garbled.pt2"):
        fxprune.load(garbled)
