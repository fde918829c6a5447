"""Session-wide test settings, the ``shared_path`` fixture (which marks its users
``realdata``) and the small models and images most tests share."""

from pathlib import Path

import pytest
import torch

from fxprune.data import data_dir
from fxprune.models import cifar_resnet
from fxprune.tracing import example_input, trace
from tests.helpers import SMALL_SIZE, calibrate_and_randomize


@pytest.fixture(autouse=True, scope="session")
def no_downloads(tmp_path_factory):
    """No test reaches the internet: downloads are forbidden (a ``cifar:`` spec without the
    data folder builds random weights, as before downloads existed), the base URL is a local
    folder that holds nothing, and the cache is empty. Set in ``os.environ`` so that the CLI
    subprocesses of the tests inherit it; tests of downloads lift it with ``monkeypatch``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FXPRUNE_OFFLINE", "1")
        patch.setenv("FXPRUNE_DOWNLOAD_BASE", tmp_path_factory.mktemp("no-remote").as_uri())
        patch.setenv("FXPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread: the unit tests use tiny tensors, where a second OpenMP thread only
    adds synchronisation, and torch's OpenMP threads stall badly when another process holds a
    core of this 2-core machine. No result depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    """Every test that reaches the data folder does so through the ``shared_path`` fixture,
    directly or through another fixture; marking those ``realdata`` here keeps the marker true
    by construction (``-m "not realdata"`` runs what a fresh clone can)."""
    for item in items:
        if "shared_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


def _shared_path(relative: str) -> Path:
    root = data_dir()
    if root is None:
        pytest.skip(f"needs the data folder (FXPRUNE_DATA, else ../shared/data) for {relative}")
    if not (root / relative).exists():
        pytest.skip(f"{relative} is not in the data folder {root}")
    return root / relative


@pytest.fixture(scope="session")
def shared_path():
    """``shared_path(relative)``: ``relative`` in the data folder, or skip the calling test
    saying what is missing. Only through this fixture, so that its users are marked."""
    return _shared_path


def _small_resnet():
    torch.manual_seed(0)
    gm = trace(cifar_resnet(20).eval(), SMALL_SIZE)
    calibrate_and_randomize(gm, example_input(SMALL_SIZE, batch=16, seed=3))
    return gm


@pytest.fixture
def small_resnet():
    """A traced CIFAR ResNet-20 for 16x16 inputs with calibrated, then perturbed, BN
    statistics: small enough for unit tests, real enough that folds and fits are not trivial.
    A fresh copy per test, so tests may rewrite it."""
    return _small_resnet()


@pytest.fixture(scope="module")
def teacher():
    """``small_resnet`` built once per module, for recovery tests: they read it and train
    traced copies of it (``helpers.student_with_adapters``)."""
    return _small_resnet()


@pytest.fixture(scope="session")
def images():
    """24 random images of ``SMALL_SIZE`` to recover from (modules may override)."""
    return example_input(SMALL_SIZE, batch=24, seed=1)
