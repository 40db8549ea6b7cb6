"""Process-wide settings that make the CPU path fast. Called by the command line and benchmarks."""
from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep freed activation buffers in the process instead of returning them to the OS.

    glibc serves large blocks with mmap and unmaps them on free, so every
    training step faults hundreds of MB of fresh zeroed pages back in (on the
    2-core CI machine, evaluation at batch 500 ran at 103 img/s before and 237
    img/s after this). Raising the mmap and trim thresholds keeps them. A
    no-op off glibc; returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op CPU threads (None: unchanged), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
