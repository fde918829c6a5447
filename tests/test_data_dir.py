"""Where the data folder is (``fxprune.data.data_dir``): unset, set, ``none`` and a missing
path; and an installed copy has no default, whatever the current folder."""

from __future__ import annotations

import pytest

from fxprune import data
from fxprune.errors import FxpruneError


def test_set_to_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FXPRUNE_DATA", str(tmp_path))
    assert data.data_dir() == tmp_path.resolve()


@pytest.mark.parametrize("value", ["none", "None", " NONE "])
def test_none_means_no_folder_even_when_the_default_exists(tmp_path, monkeypatch, value):
    checkout = _checkout(tmp_path, monkeypatch, with_data=True)
    monkeypatch.delenv("FXPRUNE_DATA", raising=False)
    assert data.data_dir() == (checkout.parent / "shared" / "data").resolve()
    monkeypatch.setenv("FXPRUNE_DATA", value)
    assert data.data_dir() is None


def test_missing_path_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FXPRUNE_DATA", str(tmp_path / "typo"))
    with pytest.raises(FxpruneError, match=r"FXPRUNE_DATA=.*typo is not a folder.*'none'"):
        data.data_dir()


@pytest.mark.parametrize("value", [None, ""])
def test_unset_checkout_uses_shared_data_beside_it(tmp_path, monkeypatch, value):
    checkout = _checkout(tmp_path, monkeypatch, with_data=True)
    _set(monkeypatch, value)
    monkeypatch.chdir(tmp_path)  # the current folder plays no part
    assert data.data_dir() == (checkout.parent / "shared" / "data").resolve()


def test_unset_checkout_without_shared_data(tmp_path, monkeypatch):
    _checkout(tmp_path, monkeypatch, with_data=False)
    monkeypatch.delenv("FXPRUNE_DATA", raising=False)
    assert data.data_dir() is None


def test_unset_installed_copy_has_no_default(tmp_path, monkeypatch):
    """In site-packages there is no setup.cfg beside the package: ``../shared/data`` there, or
    beside the current folder, is not looked at."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(data, "_REPO_ROOT", site)
    monkeypatch.delenv("FXPRUNE_DATA", raising=False)
    monkeypatch.chdir(site)
    assert data.data_dir() is None


def _checkout(tmp_path, monkeypatch, with_data: bool):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "setup.cfg").write_text("[metadata]\n")
    if with_data:
        (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(data, "_REPO_ROOT", checkout)
    return checkout


def _set(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("FXPRUNE_DATA", raising=False)
    else:
        monkeypatch.setenv("FXPRUNE_DATA", value)
