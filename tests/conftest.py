"""Session-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread: the unit tests use tiny tensors, where a second OpenMP thread only
    adds synchronisation, and torch's OpenMP threads stall badly when another process holds a
    core of this 2-core machine. No result depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
