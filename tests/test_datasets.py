"""Image pools, sampling, preprocessing and augmentation (fxprune.datasets)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fxprune.datasets import (CIFAR10_CLASSES, ImagePool, augment, iter_batches, open_pool, sample,
                              split_pool, to_tensor)
from fxprune.errors import FxpruneError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pool(n: int = 40, classes: int = 4, size: int = 8, seed: int = 0) -> ImagePool:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImagePool(images, labels, "synthetic", tuple(f"c{i}" for i in range(classes)))


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


# --- real data ---------------------------------------------------------------------------


def test_real_cifar10_npz_sizes_and_label_counts(shared_path):
    folder = shared_path("cifar10/cifar10_lossless_prefix.npz").parent
    train, test = open_pool(f"cifar10:{folder}", "train"), open_pool(f"cifar10:{folder}", "test")
    assert open_pool("cifar10").name == "cifar10/train" and len(open_pool("cifar10")) == 5085
    assert train.images.shape == (5085, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (1017, 3, 32, 32) and test.class_names == CIFAR10_CLASSES
    counts = torch.bincount(test.labels, minlength=10).tolist()
    assert sum(counts) == 1017
    assert counts == [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]
    assert torch.bincount(train.labels)[:3].tolist() == [517, 524, 490]
    assert test.labels[:5].tolist() == [3, 8, 8, 0, 6]  # cat, ship, ship, airplane, frog


def test_real_cifar10_per_class_sampling(shared_path):
    shared_path("cifar10/cifar10_lossless_prefix.npz")
    pool = open_pool("cifar10", "train")
    a, b, c = (sample(pool, per_class=10, seed=s) for s in (0, 0, 1))
    assert torch.bincount(a.labels, minlength=10).tolist() == [10] * 10
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


@pytest.mark.slow
def test_real_jpeg_npz_is_close_to_lossless_pixels(shared_path):
    folder = shared_path("cifar10/cifar10_test_jpeg_q75.npz").parent
    shared_path("cifar10/cifar10_lossless_prefix.npz")
    jpeg, lossless = open_pool(f"cifar10-jpeg:{folder}"), open_pool("cifar10", "test")
    assert len(jpeg) == 10000 and jpeg.name == "cifar10-jpeg/test"
    assert torch.equal(jpeg.labels[:1017], lossless.labels)
    error = (jpeg.images[:5].float() - lossless.images[:5].float()).abs().mean() / 255
    assert error < 12 / 255
    with pytest.raises(FxpruneError, match="no split 'train'"):
        open_pool(f"cifar10-jpeg:{folder / 'cifar10_test_jpeg_q75.npz'}", "train")


def test_real_imagenet32_is_unlabelled(shared_path):
    path = shared_path("imagenet-sample-images/imagenet_sample_32x32.npz")
    pool = open_pool(f"imagenet32:{path}")
    assert pool.labels is None and pool.class_names is None
    assert pool.images.shape == (1000, 3, 32, 32)
    with pytest.raises(FxpruneError, match="unlabelled"):
        sample(pool, per_class=1)


@pytest.mark.slow
def test_real_imagenet_sample_is_labelled_by_class_index(shared_path):
    shared_path("imagenet-sample-images/class_index.tsv")
    pool = open_pool("imagenet-sample")
    assert len(pool) == 1000 and pool.labels.tolist() == list(range(1000))
    assert pool.images[0].name == "n01440764_tench.JPEG" and pool.class_names[0] == "tench"
    x = to_tensor(pool.subset([0, 1]), (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32


# --- CIFAR-10 pickles --------------------------------------------------------------------


def _write_batches(folder: Path, per_batch: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {"batch_label": f"{name} of 5", "labels": labels, "data": data,
                 "filenames": [f"img_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, handle, protocol=2)
    return written


def test_cifar10_pickle_folder_round_trips(tmp_path):
    written = _write_batches(tmp_path / "cifar-10-batches-py")
    for spec in (f"cifar10:{tmp_path}", f"cifar10:{tmp_path / 'cifar-10-batches-py'}"):
        train, test = open_pool(spec, "train"), open_pool(spec, "test")
        expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
        assert torch.equal(train.images, torch.from_numpy(expected.reshape(-1, 3, 32, 32)))
        assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
        assert torch.equal(test.images.reshape(len(test), -1), torch.from_numpy(written["test_batch"][0]))
        assert test.labels.tolist() == written["test_batch"][1] and test.class_names == CIFAR10_CLASSES
        # channel-major rows: the first 1024 values are the red plane
        assert torch.equal(test.images[0, 0].flatten(), torch.from_numpy(written["test_batch"][0][0, :1024]))


def test_cifar10_errors_name_the_file(tmp_path):
    _write_batches(tmp_path / "b")
    raw = (tmp_path / "b" / "data_batch_3").read_bytes()
    (tmp_path / "b" / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FxpruneError, match="data_batch_3"):
        open_pool(f"cifar10:{tmp_path / 'b'}", "train")
    (tmp_path / "b" / "data_batch_5").unlink()
    with pytest.raises(FxpruneError, match="no split 'val'"):
        open_pool(f"cifar10:{tmp_path / 'b'}", "val")
    with pytest.raises(FxpruneError, match="data_batch_5"):
        (tmp_path / "b" / "data_batch_3").write_bytes(raw)
        open_pool(f"cifar10:{tmp_path / 'b'}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FxpruneError, match="empty.*cifar10_lossless_prefix.npz"):
        open_pool(f"cifar10:{tmp_path / 'empty'}")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "test_batch").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(FxpruneError, match="test_batch"):
        open_pool(f"cifar10:{evil}", "test")


# --- image folders -----------------------------------------------------------------------


def test_image_folder_is_labelled_and_skips_corrupt_files(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "dog" / "b.png", (0, 0, 255))
    _png(root / "cat" / "a.png", (255, 0, 0))
    _png(root / "cat" / "sub" / "c.PNG", (0, 255, 0), size=(40, 30))
    Image.new("RGB", (9, 9), (7, 7, 7)).save(root / "dog" / "d.JPEG")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / "broken.png").write_bytes(b"garbage")
    full = (root / "cat" / "a.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(full[: len(full) // 2])
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable.*broken\.png"):
        pool = open_pool(f"folder:{root}")
    assert pool.class_names == ("cat", "dog")
    assert [p.name for p in pool.images] == ["a.png", "c.PNG", "b.png", "d.JPEG"]
    assert pool.labels.tolist() == [0, 0, 1, 1]
    x = to_tensor(pool, (3, 8, 8), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert x.shape == (4, 3, 8, 8)
    assert torch.allclose(x[0, :, 3, 3], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(x[2, :, 3, 3], torch.tensor([0.0, 0.0, 1.0]))
    batches = list(iter_batches(pool, (3, 8, 8), (0.0,), (1.0,), batch_size=3))
    assert [len(b) for b, _ in batches] == [3, 1] and batches[1][1].tolist() == [1]


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _png(tmp_path / f"img{i}.jpg", (10 * i, 0, 0))
    pool = open_pool(f"folder:{tmp_path}")
    assert len(pool) == 3 and pool.labels is None and pool.class_names is None
    with pytest.raises(FxpruneError, match="unlabelled"):
        sample(pool, per_class=1)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FxpruneError, match="holds no images.*") as info:
        open_pool(f"folder:{tmp_path}")
    assert str(tmp_path) in str(info.value)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FxpruneError, match="holds no images"):
        open_pool(f"folder:{tmp_path}")
    (tmp_path / "bad.png").write_bytes(b"x")
    with pytest.warns(UserWarning), pytest.raises(FxpruneError, match="no readable image"):
        open_pool(f"folder:{tmp_path}")
    with pytest.raises(FxpruneError, match="not found.*accepted forms") as info:
        open_pool(f"folder:{tmp_path / 'missing'}")
    assert "missing" in str(info.value)


def test_unknown_or_incomplete_spec_lists_accepted_forms():
    for spec in ("mnist:/x", "folder", "noise", "noise:abc", "noise:0"):
        with pytest.raises(FxpruneError, match="accepted forms: 'cifar10"):
            open_pool(spec)


# --- sampling ------------------------------------------------------------------------------


def test_per_class_is_exact_deterministic_and_seed_dependent():
    pool = _pool(n=40, classes=4)
    torch.manual_seed(123)
    a = sample(pool, per_class=3, seed=5)
    torch.manual_seed(999)  # global RNG state must not matter
    b = sample(pool, per_class=3, seed=5)
    c = sample(pool, per_class=3, seed=6)
    assert torch.bincount(a.labels).tolist() == [3, 3, 3, 3]
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    bigger = sample(pool, per_class=5, seed=5)  # nested draws
    as_rows = lambda p: {tuple(img.flatten().tolist()) for img in p.images}  # noqa: E731
    assert as_rows(a) <= as_rows(bigger)


def test_split_pool_returns_the_complement():
    pool = _pool(n=30)
    chosen, rest = split_pool(pool, n=12, seed=3)
    assert len(chosen) == 12 and len(rest) == 18
    rows = lambda p: [tuple(img.flatten().tolist()) for img in p.images]  # noqa: E731
    assert sorted(rows(chosen) + rows(rest)) == sorted(rows(pool))
    assert not set(rows(chosen)) & set(rows(rest))
    assert torch.equal(sample(pool, n=12, seed=3).images, chosen.images)
    assert set(rows(chosen)) <= set(rows(sample(pool, n=20, seed=3)))


def test_sampling_errors():
    pool = _pool(n=10, classes=4)  # classes 0, 1 have 3 images; 2, 3 have 2
    with pytest.raises(FxpruneError, match=r"n=11.*only 10"):
        sample(pool, n=11)
    with pytest.raises(FxpruneError, match=r"class 2 \(c2\) has only 2"):
        sample(pool, per_class=3)
    with pytest.raises(FxpruneError, match="exactly one"):
        sample(pool, n=2, per_class=1)
    with pytest.raises(FxpruneError, match="exactly one"):
        sample(pool)
    assert len(sample(pool, n=10)) == 10 and len(sample(pool, n=0)) == 0


def test_noise_pool_is_deterministic_and_sized():
    a, b = open_pool("noise:6"), open_pool("noise:6")
    assert a.labels is None and a.images.shape == (6, 3, 32, 32) and torch.equal(a.images, b.images)
    assert open_pool("noise:2:224").images.shape == (2, 3, 224, 224)
    assert open_pool("noise:2:20x24").images.shape == (2, 3, 20, 24)
    x = to_tensor(open_pool("noise:64"), (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD)
    assert abs(x.mean().item()) < 0.05 and 0.85 < x.std().item() < 1.1


# --- preprocessing and augmentation --------------------------------------------------------


def test_to_tensor_normalisation_is_exact():
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[0, :, 5, 7] = torch.tensor([128, 0, 255], dtype=torch.uint8)
    x = to_tensor(ImagePool(images, None, "t"), (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    expected = [(128 / 255 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert abs(x[0, channel, 5, 7].item() - value) < 1e-6
    assert abs(x[1, 0, 0, 0].item() - (-0.485 / 0.229)) < 1e-6
    gray = to_tensor(ImagePool(torch.full((1, 3, 4, 4), 200, dtype=torch.uint8), None, "g"),
                     (1, 4, 4), (0.5,), (0.25,))
    assert gray.shape == (1, 1, 4, 4) and abs(gray[0, 0, 0, 0].item() - (200 / 255 - 0.5) / 0.25) < 1e-6


def test_to_tensor_resize_rule():
    pool = _pool(n=2, size=32)
    assert to_tensor(pool, (3, 64, 64), (0.0,), (1.0,)).shape == (2, 3, 64, 64)
    big = to_tensor(pool, (3, 224, 224), (0.0,), (1.0,))
    assert big.shape == (2, 3, 224, 224)
    flat = ImagePool(torch.full((1, 3, 16, 16), 90, dtype=torch.uint8), None, "flat")
    assert torch.allclose(to_tensor(flat, (3, 224, 224), (0.0,), (1.0,)), torch.tensor(90 / 255))
    with pytest.raises(FxpruneError, match="channel"):
        to_tensor(pool, (4, 32, 32), (0.0,), (1.0,))


def test_augment_is_deterministic_shape_preserving_and_random():
    x = torch.randn(64, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert augment(torch.randn(2, 3, 224, 224), torch.Generator()).shape == (2, 3, 224, 224)

    flips = augment(x, torch.Generator().manual_seed(2), pad=0)
    same = [torch.equal(f, o) for f, o in zip(flips, x)]
    flipped = [torch.equal(f, o.flip(-1)) for f, o in zip(flips, x)]
    assert all(s or f for s, f in zip(same, flipped)) and 10 < sum(flipped) < 54

    crops = augment(x, torch.Generator().manual_seed(3), flip=False)
    zero_rows = (crops == 0).all(dim=(1, 3)).any(dim=1) | (crops == 0).all(dim=(1, 2)).any(dim=1)
    assert zero_rows.sum() > 40  # almost every image is shifted, exposing zero padding
    for crop, original in zip(crops, x):  # each crop is a shifted window of its image
        found = any(torch.equal(crop[:, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)],
                                original[:, max(0, dy):32 + min(0, dy), max(0, dx):32 + min(0, dx)])
                    for dy in range(-4, 5) for dx in range(-4, 5))
        assert found
