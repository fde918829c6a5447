"""Image pools: where tiny recovery sets and evaluation images come from, opened by a spec.

Array-backed sources (CIFAR-10, the JPEG test set, ImageNet 32x32, noise) are held as one uint8
NCHW tensor; image folders are held as a tuple of file paths, checked to be decodable when
the pool is opened and decoded (resized straight to the model's input size) only when turned
into model inputs, so that a folder of large photographs costs no memory until used.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fxprune.data import data_dir
from fxprune.datasets.images import check_image, parallel_map
from fxprune.download import cifar10_folder
from fxprune.errors import FxpruneError, FxpruneWarning

ACCEPTED_SPECS = (
    "accepted forms: 'cifar10[:DIR]' (DIR holds cifar10_lossless_prefix.npz or cifar-10-batches-py; "
    "without DIR, the data folder's or torchvision's, downloaded once), "
    "'cifar10-jpeg[:FILE_OR_DIR]' (cifar10_test_jpeg_q75.npz), "
    "'imagenet32[:FILE_OR_DIR]' (imagenet_sample_32x32.npz, unlabelled), "
    "'imagenet-sample[:DIR]' (images/ + class_index.tsv, labelled), "
    "'folder:DIR' (class sub-folders = labelled, or a flat folder = unlabelled), "
    "'noise:N[:SIZE or HxW]' (Gaussian noise, unlabelled)"
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_LOSSLESS, _JPEG = "cifar10_lossless_prefix.npz", "cifar10_test_jpeg_q75.npz"
_IMAGENET32 = "imagenet_sample_32x32.npz"
_NOISE_MEAN, _NOISE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePool:
    """Images with optional labels. ``images`` is a uint8 NCHW RGB tensor (all one size) or a
    tuple of image file paths (any sizes, decoded on use); ``labels`` is int64 or None."""

    images: torch.Tensor | tuple[Path, ...] = field(repr=False)
    labels: torch.Tensor | None = field(repr=False)
    name: str
    class_names: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"pool {self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        if isinstance(self.images, torch.Tensor):
            kind = "x".join(map(str, self.images.shape[1:])) + " uint8"
        else:
            kind = "image files"
        labels = "unlabelled" if self.labels is None else "labelled"
        return f"ImagePool({self.name!r}, {len(self)} {kind}, {labels})"

    def subset(self, indices: Iterable[int] | torch.Tensor, name: str | None = None) -> ImagePool:
        """The images at ``indices`` (in that order), with their labels."""
        index = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices,
                                dtype=torch.long)
        if isinstance(self.images, torch.Tensor):
            images: torch.Tensor | tuple[Path, ...] = self.images[index]
        else:
            images = tuple(self.images[i] for i in index.tolist())
        labels = self.labels[index] if self.labels is not None else None
        return ImagePool(images, labels, name or self.name, self.class_names)


def open_pool(spec: str, split: str | None = None) -> ImagePool:
    """Open the pool named by ``spec`` (see ``ACCEPTED_SPECS``). ``split`` ('train' or 'test')
    picks a CIFAR-10 split (default 'train'); ``cifar10-jpeg`` is only 'test'; the other
    sources are a single unsplit collection and ignore it (use ``split_pool`` to hold out)."""
    scheme, _, arg = spec.partition(":")
    readers = {"cifar10": _cifar10, "cifar10-jpeg": _cifar10_jpeg, "imagenet32": _imagenet32,
               "imagenet-sample": _imagenet_sample, "folder": _folder, "noise": _noise}
    if scheme not in readers or (scheme in ("folder", "noise") and not arg):
        raise FxpruneError(f"image pool spec {spec!r} not understood; {ACCEPTED_SPECS}")
    return readers[scheme](arg, split)


def _default(relative: str, spec: str) -> Path:
    root = data_dir()
    if root is None:
        raise FxpruneError(f"image pool spec {spec!r} needs the shared data folder (set $FXPRUNE_DATA) "
                           f"or an explicit path; {ACCEPTED_SPECS}")
    return root / relative


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise FxpruneError(f"{what} {path} not found; {ACCEPTED_SPECS}")
    return path


def _npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise FxpruneError(f"{path} has no array {missing[0]!r} (it has: {', '.join(archive.files)})")
            return {k: archive[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise FxpruneError(f"cannot read {path} as an .npz archive: {exc}") from exc


def _split(split: str | None, allowed: tuple[str, ...], where: object) -> str:
    split = allowed[0] if split is None else split
    if split not in allowed:
        raise FxpruneError(f"{where} has no split {split!r}; it has: {', '.join(allowed)}")
    return split


def _nhwc(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _cifar10(arg: str, split: str | None) -> ImagePool:
    # Without an explicit folder: the data folder's, else torchvision's, downloaded once.
    path = _existing(Path(arg) if arg else cifar10_folder(), "CIFAR-10 folder")
    npz = path if path.is_file() else path / _LOSSLESS
    if npz.is_file():
        split = _split(split, ("train", "test"), npz)
        arrays = _npz(npz, (f"{split}_x", f"{split}_y", "label_names"))
        return ImagePool(_nhwc(arrays[f"{split}_x"]), torch.from_numpy(arrays[f"{split}_y"]).long(),
                         f"cifar10/{split}", tuple(str(n) for n in arrays["label_names"]))
    for folder in (path, path / "cifar-10-batches-py"):
        if (folder / "data_batch_1").exists() or (folder / "test_batch").exists():
            return _cifar10_pickles(folder, _split(split, ("train", "test"), folder))
    raise FxpruneError(f"CIFAR-10 folder {path} holds neither {_LOSSLESS} nor the pickled batches "
                       "(data_batch_1..5, test_batch) of cifar-10-batches-py, directly or in a "
                       f"cifar-10-batches-py sub-folder; {ACCEPTED_SPECS}")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: numpy arrays, never arbitrary callables."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, object]:
    try:
        with open(_existing(path, "CIFAR-10 batch file"), "rb") as handle:
            raw = _BatchUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise FxpruneError(f"cannot read CIFAR-10 batch file {path} "
                           f"(truncated or not a CIFAR pickle?): {exc}") from exc
    if not isinstance(raw, dict):
        raise FxpruneError(f"CIFAR-10 batch file {path} does not hold a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar10_pickles(folder: Path, split: str) -> ImagePool:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        batch = _read_batch(folder / name)
        data = np.asarray(batch.get("data"))
        label_key = "labels" if "labels" in batch else "fine_labels"
        if data.ndim != 2 or data.shape[1] != 3072 or label_key not in batch:
            raise FxpruneError(f"CIFAR-10 batch file {folder / name}: expected 'data' of shape (N, 3072) "
                               f"and 'labels', found keys {sorted(batch)}")
        if len(batch[label_key]) != len(data):
            raise FxpruneError(f"CIFAR-10 batch file {folder / name}: {len(data)} images but "
                               f"{len(batch[label_key])} labels")
        images.append(torch.from_numpy(data.astype(np.uint8).reshape(-1, 3, 32, 32)))
        labels.append(torch.as_tensor(np.asarray(batch[label_key]), dtype=torch.long))
    class_names = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        meta = _read_batch(folder / "batches.meta")
        class_names = tuple(str(n) for n in meta.get("label_names", class_names))
    return ImagePool(torch.cat(images), torch.cat(labels), f"cifar10/{split}", class_names)


def _cifar10_jpeg(arg: str, split: str | None) -> ImagePool:
    path = _existing(Path(arg) if arg else _default("cifar10", "cifar10-jpeg"),
                     "CIFAR-10 JPEG file or folder")
    path = path / _JPEG if path.is_dir() else path
    _split(split, ("test",), _existing(path, "CIFAR-10 JPEG file"))
    arrays = _npz(path, ("jpeg_bytes", "offsets", "labels"))
    data, offsets = arrays["jpeg_bytes"], arrays["offsets"]

    def decode(i: int) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())) as image:
                return np.asarray(image.convert("RGB"))
        except Exception as exc:  # PIL raises many kinds
            raise FxpruneError(f"{path}: image {i} does not decode: {exc}") from exc

    decoded = parallel_map(decode, range(len(offsets) - 1), "decoding CIFAR-10 JPEGs")
    return ImagePool(_nhwc(np.stack(decoded)), torch.from_numpy(arrays["labels"]).long(),
                     "cifar10-jpeg/test", CIFAR10_CLASSES)


def _imagenet32(arg: str, split: str | None) -> ImagePool:
    path = _existing(Path(arg) if arg else _default("imagenet-sample-images", "imagenet32"),
                     "ImageNet 32x32 file or folder")
    path = _existing(path / _IMAGENET32 if path.is_dir() else path, "ImageNet 32x32 file")
    # Out-of-domain data for CIFAR models: its ImageNet labels ('y') are deliberately dropped.
    return ImagePool(_nhwc(_npz(path, ("x",))["x"]), None, "imagenet32")


def _checked(paths: list[Path], where: Path) -> list[int]:
    """Indices of the decodable files; warns about the others."""
    errors = parallel_map(check_image, paths, f"checking {where}")
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {where}; first: "
                      f"{paths[bad[0]]} ({errors[bad[0]]})", FxpruneWarning, stacklevel=4)
    if len(bad) == len(paths):
        raise FxpruneError(f"no readable image in {where} ({len(paths)} file(s) failed to decode)")
    return [i for i, e in enumerate(errors) if e is None]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _folder(arg: str, split: str | None) -> ImagePool:
    folder = _existing(Path(arg), "image folder")
    if not folder.is_dir():
        raise FxpruneError(f"image folder {folder} is not a folder; {ACCEPTED_SPECS}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:  # ImageFolder layout: one sub-folder per class, classes in sorted order
        paths, labels = [], []
        for index, name in enumerate(classes):
            found = sorted(p for p in (folder / name).rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            paths += found
            labels += [index] * len(found)
        empty = [c for c in classes if c not in {p.relative_to(folder).parts[0] for p in paths}]
        if empty and len(empty) < len(classes):
            warnings.warn(f"class folder(s) without images in {folder}: {', '.join(empty)}",
                          FxpruneWarning, stacklevel=3)
    else:
        paths, labels = _images_in(folder), None
    if not paths:
        where = ", in its class sub-folders" if classes else ""
        raise FxpruneError(f"image folder {folder} holds no images (looked for "
                           f"{' '.join(IMAGE_EXTENSIONS)}, any case{where})")
    keep = _checked(paths, folder)
    label_t = torch.tensor([labels[i] for i in keep], dtype=torch.long) if labels is not None else None
    return ImagePool(tuple(paths[i] for i in keep), label_t, f"folder:{folder}",
                     tuple(classes) if classes else None)


def _imagenet_sample(arg: str, split: str | None) -> ImagePool:
    root = _existing(Path(arg) if arg else _default("imagenet-sample-images", "imagenet-sample"),
                     "ImageNet sample folder")
    index_file = _existing(root / "class_index.tsv", "ImageNet class index")
    rows = [line.split("\t") for line in index_file.read_text(encoding="utf-8").splitlines()[1:] if line]
    if any(len(row) != 4 for row in rows):
        raise FxpruneError(f"{index_file}: expected 4 tab-separated columns (index, wnid, name, file)")
    paths = [root / row[3] for row in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FxpruneError(f"{len(missing)} image file(s) listed in {index_file} are missing; "
                           f"first: {missing[0]}")
    keep = _checked(paths, root)
    class_names = [""] * (max(int(row[0]) for row in rows) + 1)
    for row in rows:
        class_names[int(row[0])] = row[2]
    return ImagePool(tuple(paths[i] for i in keep), torch.tensor([int(rows[i][0]) for i in keep]),
                     "imagenet-sample", tuple(class_names))


def _noise(arg: str, split: str | None) -> ImagePool:
    count, _, size = arg.partition(":")
    try:
        height, _, width = (size or "32").lower().partition("x")
        n, h, w = int(count), int(height), int(width or height)
    except ValueError:
        n = h = w = 0
    if n <= 0 or h <= 0 or w <= 0:
        raise FxpruneError(f"image pool spec 'noise:{arg}': expected a positive count and size; "
                           f"{ACCEPTED_SPECS}")
    # Per-channel ImageNet statistics in pixel space: after the usual normalisation the noise
    # is close to N(0, 1) (clipped to the pixel range). A fixed seed makes the pool reproducible.
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n, 3, h, w, generator=generator)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (_NOISE_MEAN, _NOISE_STD))
    return ImagePool((mean + std * z).round().clamp(0, 255).to(torch.uint8), None, f"noise:{arg}")
