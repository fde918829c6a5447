"""The default thread count follows the load: all cores when idle, the free ones beside other
work, never fewer than one; the previous setting comes back."""

from __future__ import annotations

import os

import pytest
import torch

from fxprune.threads import free_cores, torch_threads


@pytest.mark.parametrize("load,expected", [(0.1, 4), (1.2, 3), (1.5, 2), (2.6, 1), (9.0, 1)])
def test_free_cores_follow_the_load_average(monkeypatch, load, expected):
    monkeypatch.setattr("fxprune.threads.usable_cores", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert free_cores() == expected


def test_without_a_load_average_all_cores(monkeypatch):
    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr("fxprune.threads.usable_cores", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert free_cores() == 2


def test_thread_count_is_restored(monkeypatch):
    before = torch.get_num_threads()
    with torch_threads(before + 1) as used:
        assert used == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr("fxprune.threads.free_cores", lambda: before + 2)
    with pytest.raises(RuntimeError), torch_threads(None) as used:
        assert used == torch.get_num_threads() == before + 2
        raise RuntimeError("the body fails")
    assert torch.get_num_threads() == before
