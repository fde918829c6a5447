"""Pretrained CIFAR ResNets and CIFAR-10 on first use: the data folder, else the cache, else
a download.

As torchvision and ``torch.hub`` do, a file is downloaded once into a cache (``$FXPRUNE_CACHE``,
else ``$XDG_CACHE_HOME/fxprune``, else ``~/.cache/fxprune``) with a progress bar, checked
against a pinned SHA-256 and only then renamed into place: a killed or corrupted download
leaves nothing that a later run would trust. ``$FXPRUNE_DOWNLOAD_BASE`` (a URL or a folder)
replaces the remote locations by one place holding the files under their own names — a
mirror, or a ``file://`` folder in the tests. ``FXPRUNE_OFFLINE=1`` forbids downloading.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fxprune.data import data_dir
from fxprune.errors import FxpruneError

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


@dataclass(frozen=True)
class RemoteFile:
    """A file to download, with the digest that must match and what to do without internet."""

    name: str  # its name in the cache and under $FXPRUNE_DOWNLOAD_BASE
    url: str
    sha256: str  # the full hex digest, or the 8-hex prefix its publisher put in its name
    instead: str  # how to use a local copy instead


def _checkpoint(depth: int, digest: str) -> RemoteFile:
    name = f"resnet{depth}-{digest[:8]}.th"
    return RemoteFile(name, _AKAMASTER + name, digest,
                      f"pass --weights FILE, or set FXPRUNE_DATA to a folder holding "
                      f"weights/cifar10-resnet/{name}")


# Full digests where the file was checked byte for byte (the data folder's README); the
# others are verified against the sha256 prefix in their published names.
CIFAR_RESNETS = {
    20: _checkpoint(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    32: _checkpoint(32, "d509ac18"),
    44: _checkpoint(44, "014dd654"),
    56: _checkpoint(56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
    110: _checkpoint(110, "1d1ed7c2"),
}
CIFAR10_ARCHIVE = RemoteFile(
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "pass --data cifar10:DIR (DIR holds torchvision's cifar-10-batches-py), or set FXPRUNE_DATA "
    "to the fxprune data folder")
_CIFAR10_FOLDER = "cifar-10-batches-py"


def cache_dir() -> Path:
    configured = os.environ.get("FXPRUNE_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fxprune"


def offline() -> bool:
    return os.environ.get("FXPRUNE_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def cifar_resnet_weights(depth: int, required: bool = True) -> Path | None:
    """The akamaster checkpoint of the CIFAR ResNet of this depth: from the data folder, else
    the cache, else downloaded. Offline without a local copy: an error, or None if not
    ``required`` (the caller then builds a randomly initialised model)."""
    root = data_dir()
    folder = root / "weights" / "cifar10-resnet" if root else None
    found = sorted(folder.glob(f"resnet{depth}-*.th")) if folder else []
    if found:
        return found[0]
    remote = CIFAR_RESNETS[depth]
    cached = cache_dir() / "weights" / remote.name
    if not required and offline() and not cached.is_file():
        return None
    return fetch(remote, cached)


def cifar10_folder() -> Path:
    """A folder ``open_pool('cifar10:...')`` reads: the data folder's ``cifar10/``, else
    torchvision's pickled batches, extracted in the cache from the downloaded archive."""
    root = data_dir()
    if root is not None and (root / "cifar10").is_dir():
        return root / "cifar10"
    folder = cache_dir() / "cifar10"
    if not (folder / _CIFAR10_FOLDER).is_dir():
        archive = fetch(CIFAR10_ARCHIVE, folder / CIFAR10_ARCHIVE.name)
        _extract(archive, folder, _CIFAR10_FOLDER)
        archive.unlink()  # the extracted folder is the cache entry; the archive is 170 MB
    return folder / _CIFAR10_FOLDER


def source_url(remote: RemoteFile) -> str:
    base = os.environ.get("FXPRUNE_DOWNLOAD_BASE", "").strip()
    if not base:
        return remote.url
    if "://" not in base:  # a plain folder
        base = Path(base).expanduser().resolve().as_uri()
    return f"{base.rstrip('/')}/{remote.name}"


def fetch(remote: RemoteFile, target: Path) -> Path:
    """``target`` if it exists, else ``remote`` downloaded, verified and renamed to it."""
    if target.is_file():
        return target
    url = source_url(remote)
    if offline():
        raise FxpruneError(f"{remote.name} is not in the cache ({target}) and FXPRUNE_OFFLINE is "
                           f"set, so {url} was not downloaded; {remote.instead}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                          suffix=".part", delete=False)
    try:
        with partial:
            digest = _download(url, partial, remote, target)
        if not digest.startswith(remote.sha256):
            raise FxpruneError(f"{url} downloaded with sha256 {digest}, expected "
                               f"{remote.sha256}: not cached (a corrupted or changed file); "
                               f"retry, or {remote.instead}")
        os.replace(partial.name, target)
    finally:
        Path(partial.name).unlink(missing_ok=True)
    return target


def _download(url: str, sink, remote: RemoteFile, target: Path) -> str:
    """Streams ``url`` into ``sink``; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, desc=f"downloading {remote.name}", unit="B", unit_scale=True,
                      file=sys.stderr, leave=False, disable=None) as bar:
                while chunk := response.read(_CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except OSError as exc:  # URLError, HTTPError, timeouts, a missing file:// path
        reason = getattr(exc, "reason", None) or exc
        raise FxpruneError(f"could not download {url} ({reason}); without internet, "
                           f"{remote.instead}, or put {remote.name} in {target.parent}") from exc
    return digest.hexdigest()


def _extract(archive: Path, folder: Path, member: str) -> None:
    """Extracts ``member`` of ``archive`` into ``folder`` all at once: into a temporary folder
    beside it, then renamed, so an interrupted extraction is never taken for a complete one."""
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{member}."))
    try:
        try:
            with tarfile.open(archive) as tar:
                # The archive's hash was checked; the 'data' filter (Python >= 3.11.4) also
                # refuses absolute paths, links out of the folder and devices.
                tar.extractall(staging, **_DATA_FILTER)
        except (tarfile.TarError, OSError) as exc:
            raise FxpruneError(f"cannot extract {archive}: {exc}; delete it and retry") from exc
        if not (staging / member).is_dir():
            raise FxpruneError(f"{archive} holds no {member}/ folder")
        os.replace(staging / member, folder / member)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
