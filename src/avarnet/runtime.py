"""Process-wide CPU settings for heavy inference (denormals, threads, allocator)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

import torch

logger = logging.getLogger("avarnet")

# glibc mallopt() parameters (malloc.h).
M_TRIM_THRESHOLD = -1  # free memory above this at the heap top is returned to the OS
M_MMAP_THRESHOLD = -3  # allocations at least this large get their own mmap()
TRIM_THRESHOLD_BYTES = 1 << 30  # 1 GiB: in practice never hand freed heap memory back
MMAP_THRESHOLD_BYTES = 32 << 20  # 32 MiB: glibc's maximum on 64-bit (4 MiB * sizeof(long))


def configure_cpu(num_threads: int = 0) -> None:
    """Prepare this process for heavy CPU inference; safe to call more than once.

    Flushes denormal floats to zero, sets the number of torch threads when
    ``num_threads > 0``, and on glibc keeps freed memory inside the process
    (raised trim and mmap thresholds) so activation buffers are reused between
    batches instead of being unmapped and page-faulted in again.
    """
    torch.set_flush_denormal(True)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    _keep_freed_memory()


def _keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds; False where that is not possible."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    except (OSError, AttributeError) as err:
        logger.debug("mallopt unavailable: %s", err)
        return False
    return trim_ok and mmap_ok
