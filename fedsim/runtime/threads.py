"""Worker threads for clients run side by side in this process: one pool per size, each
worker's torch ops on one thread meanwhile (as Ray gives each ClientApp its own core)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

import torch


@lru_cache(maxsize=4)
def pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="fedsim-client")


@contextmanager
def single_threaded_ops() -> Iterator[None]:
    """Each worker's ops on one thread while the workers run (torch's setting is global)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
