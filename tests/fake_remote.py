"""A local stand-in for the download servers: small fake files whose hashes the tests control,
in a folder that ``FXPRUNE_DOWNLOAD_BASE`` points at, and the pinned entries swapped for them."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fxprune import download
from fxprune.datasets import CIFAR10_CLASSES
from fxprune.models import cifar_resnet


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve(monkeypatch: pytest.MonkeyPatch, remote: Path, cache: Path) -> None:
    """Downloads allowed, from ``remote`` (a ``file://`` base) into ``cache``; no data folder."""
    monkeypatch.delenv("FXPRUNE_OFFLINE", raising=False)
    monkeypatch.setenv("FXPRUNE_DATA", "none")
    monkeypatch.setenv("FXPRUNE_DOWNLOAD_BASE", remote.as_uri())
    monkeypatch.setenv("FXPRUNE_CACHE", str(cache))


def publish_checkpoint(monkeypatch: pytest.MonkeyPatch, remote: Path, depth: int,
                       full_digest: bool = True) -> dict[str, torch.Tensor]:
    """A randomly initialised CIFAR ResNet saved as akamaster does (``module.`` keys inside a
    ``state_dict`` entry), named after its own hash and pinned as the checkpoint of ``depth``;
    returns its state dict. ``full_digest=False`` pins only the 8-hex prefix, as for the
    depths whose full hash is not known."""
    torch.manual_seed(depth)
    state = cifar_resnet(depth).state_dict()
    staged = remote / "staged.th"
    remote.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, staged)
    digest = sha256(staged)
    pinned = download._checkpoint(depth, digest if full_digest else digest[:8])
    staged.rename(remote / pinned.name)
    monkeypatch.setitem(download.CIFAR_RESNETS, depth, pinned)
    return state


def publish_cifar10(monkeypatch: pytest.MonkeyPatch, remote: Path, train: int = 20,
                    test: int = 30) -> None:
    """A ``cifar-10-python.tar.gz`` laid out as torchvision's (pickled batches in
    ``cifar-10-batches-py/``) with ``train`` images per training batch and ``test`` test
    images, pinned as the CIFAR-10 archive."""
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": train for i in range(1, 6)} | {"test_batch": test}
    remote.mkdir(parents=True, exist_ok=True)
    archive = remote / download.CIFAR10_ARCHIVE.name
    with tarfile.open(archive, "w:gz") as tar:
        for name, count in batches.items():
            batch = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                     "labels": [int(i % 10) for i in range(count)]}
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch))
        _add(tar, "cifar-10-batches-py/batches.meta",
             pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    monkeypatch.setattr(download, "CIFAR10_ARCHIVE",
                        replace(download.CIFAR10_ARCHIVE, sha256=sha256(archive)))


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
