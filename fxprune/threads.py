"""How many intra-op threads torch uses for a compress job.

Recovery runs thousands of small convolutions (32×32 CIFAR maps): each is a parallel region
where every OpenMP thread must arrive before the next starts. When another process keeps a core
busy, a thread waiting for its core stalls every region, and two threads on one free core run
2–3× slower than one (ResNet-20, 50 images, beside one CPU-bound process: 54 s with two
threads, 24 s with one; quiet: 15.6 s and 23.0 s). So the default is the cores the load
average leaves free: all of them on an idle machine, fewer beside other work, at least one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def usable_cores() -> int:
    """The cores this process may run on (a container's or ``taskset``'s, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def free_cores() -> int:
    """Usable cores not kept busy by other processes (1-minute load average, rounded half
    up), at least 1."""
    cores = usable_cores()
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, min(cores, cores - busy))


@contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """Run the body with ``count`` intra-op threads (``free_cores()`` when None); the previous
    setting comes back afterwards. Yields the count used."""
    previous = torch.get_num_threads()
    count = count or free_cores()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
