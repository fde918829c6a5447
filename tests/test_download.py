"""First-use downloads (``fxprune.download``) from a local ``file://`` stand-in for the servers:
verified, cached, atomic, and a one-line error when the file cannot be had. No test here
reaches the internet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fxprune import download
from fxprune.datasets import open_pool
from fxprune.errors import FxpruneError
from fxprune.models import load_model
from tests.fake_remote import publish_checkpoint, publish_cifar10, serve


@pytest.fixture
def remote(tmp_path, monkeypatch) -> Path:
    """The stand-in server's folder; downloads go to ``tmp_path / 'cache'``."""
    serve(monkeypatch, tmp_path / "remote", tmp_path / "cache")
    return tmp_path / "remote"


def _cache_files(tmp_path: Path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) \
        if cache.exists() else []


@pytest.mark.parametrize("full_digest", [True, False])
def test_cifar_spec_downloads_its_checkpoint_once(remote, tmp_path, monkeypatch, full_digest):
    state = publish_checkpoint(monkeypatch, remote, 20, full_digest)
    name = download.CIFAR_RESNETS[20].name
    loaded = load_model("cifar:resnet20")
    assert loaded.weights == str(tmp_path / "cache" / "weights" / name)
    assert torch.equal(loaded.model.state_dict()["linear.weight"], state["linear.weight"])
    assert _cache_files(tmp_path) == [f"weights/{name}"]  # no temporary file left
    (remote / name).unlink()  # the second use reads the cache only
    assert load_model("cifar:resnet20").weights == loaded.weights


def test_corrupted_download_is_refused_and_not_cached(remote, tmp_path, monkeypatch):
    publish_checkpoint(monkeypatch, remote, 56)
    name = download.CIFAR_RESNETS[56].name
    with open(remote / name, "ab") as served:
        served.write(b"garbage")
    with pytest.raises(FxpruneError, match=rf"{name}.*sha256 .*expected .*not cached") as error:
        download.cifar_resnet_weights(56)
    assert "\n" not in str(error.value)
    assert _cache_files(tmp_path) == []


def test_unreachable_server_says_what_it_tried_and_what_to_do(remote, tmp_path, monkeypatch):
    publish_checkpoint(monkeypatch, remote, 20)
    name = download.CIFAR_RESNETS[20].name
    (remote / name).unlink()
    with pytest.raises(FxpruneError) as error:
        load_model("cifar:resnet20")
    message = str(error.value)
    assert f"could not download {remote.as_uri()}/{name}" in message
    assert "--weights FILE" in message and "FXPRUNE_DATA" in message and "\n" not in message
    assert f"put {name} in {tmp_path / 'cache' / 'weights'}" in message
    assert _cache_files(tmp_path) == []


def test_interrupted_download_leaves_nothing(remote, tmp_path, monkeypatch):
    publish_checkpoint(monkeypatch, remote, 20)

    def killed(url, sink, remote_file, target):
        sink.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_download", killed)
    with pytest.raises(KeyboardInterrupt):
        download.cifar_resnet_weights(20)
    assert list((tmp_path / "cache" / "weights").iterdir()) == []


def test_offline_forbids_downloads(remote, tmp_path, monkeypatch):
    publish_checkpoint(monkeypatch, remote, 20)
    monkeypatch.setenv("FXPRUNE_OFFLINE", "1")
    assert load_model("cifar:resnet20").weights is None  # random init, as torchvision: specs
    with pytest.raises(FxpruneError, match="FXPRUNE_OFFLINE is set.*--weights FILE"):
        download.cifar_resnet_weights(20)
    assert _cache_files(tmp_path) == []


def test_data_folder_comes_first(remote, tmp_path, monkeypatch):
    publish_checkpoint(monkeypatch, remote, 20)
    local = tmp_path / "data" / "weights" / "cifar10-resnet" / "resnet20-00000000.th"
    local.parent.mkdir(parents=True)
    local.write_bytes((remote / download.CIFAR_RESNETS[20].name).read_bytes())
    monkeypatch.setenv("FXPRUNE_DATA", str(tmp_path / "data"))
    assert load_model("cifar:resnet20").weights == str(local.resolve())
    assert _cache_files(tmp_path) == []


def test_base_may_be_a_plain_folder(remote, tmp_path, monkeypatch):
    publish_checkpoint(monkeypatch, remote, 32, full_digest=False)
    monkeypatch.setenv("FXPRUNE_DOWNLOAD_BASE", str(remote))
    assert download.cifar_resnet_weights(32).parent == tmp_path / "cache" / "weights"


def test_cifar10_pool_downloads_and_extracts_once(remote, tmp_path, monkeypatch):
    publish_cifar10(monkeypatch, remote, train=20, test=30)
    train, test = open_pool("cifar10", "train"), open_pool("cifar10", "test")
    assert (len(train), len(test)) == (100, 30) and train.class_names[0] == "airplane"
    # the extracted batches are the cache entry; the archive is gone
    assert _cache_files(tmp_path) == sorted(
        f"cifar10/cifar-10-batches-py/{n}" for n in ["batches.meta", "test_batch"]
        + [f"data_batch_{i}" for i in range(1, 6)])
    (remote / download.CIFAR10_ARCHIVE.name).unlink()
    assert len(open_pool("cifar10", "test")) == 30


def test_corrupted_cifar10_archive_is_not_extracted(remote, tmp_path, monkeypatch):
    publish_cifar10(monkeypatch, remote)
    archive = remote / download.CIFAR10_ARCHIVE.name
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(FxpruneError, match="sha256"):
        open_pool("cifar10")
    assert _cache_files(tmp_path) == []
