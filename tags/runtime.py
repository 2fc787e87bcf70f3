"""Process-wide settings for running TAGS inference, applied by the inference processes' entry
points (``python app``, ``benchmarks.bench``), never at import time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the top of the heap that malloc keeps rather than returns (bytes, 2 GB): an
88 x 128 x 128 fp32 window (the benchmark cube) frees about that much between forwards (at 1 GB the
cube took 5.5 s instead of 4.3 s)."""

_applied = False
"""Whether :func:`keep_freed_memory` took effect in this process."""

KEEP_FREED_MEMORY_ENV = "TAGS_KEEP_FREED_MEMORY"
"""Set to 0 to leave glibc's malloc at its defaults (see :func:`keep_freed_memory`)."""


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and unmaps it on ``free``. A TAGS window allocates and frees activations of a
    hundred MB and more, so on a CPU every forward page-faults all of them in again: on the
    2-core benchmark machine the kernel time was larger than the model's own (51 s system
    time in a 68 s benchmark, docs/performance.md). This turns mmap off, keeps up to
    :data:`TRIM_THRESHOLD` of free memory at the top of the heap, and lets every thread share
    the one main heap (one malloc arena): the application's operators run in a Holoscan
    scheduler thread, whose own arena grew and shrank in 64 MB heaps and page-faulted a
    quarter of its activations in again (tumor pass of the 512 x 512 x 200 benchmark CT: 22 s
    -> 12 s). The cost is that the process keeps its freed blocks; the application hands them
    back after each pass (:func:`release_freed_memory`), and peak RSS is measured in the same
    benchmarks. PyTorch's CPU performance guide reaches the same end with jemalloc or tcmalloc
    preloaded; this needs no extra library and no environment set before the process starts.

    For a process that runs inference and ends (one study per ``python app``). Not applied to
    training: with it the two-process DDP test's workers peaked at 8.6 GB each instead of 6.5.

    A no-op (returns False) on other C libraries, or when $TAGS_KEEP_FREED_MEMORY is 0.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = _libc()
        ok = all(libc.mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, 1)))
    except (OSError, AttributeError):
        return False
    global _applied
    _applied = ok
    if not ok:
        log.warning("mallopt refused a TAGS allocator setting; freed memory may be unmapped as by default")
    return ok


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim``) when
    :func:`keep_freed_memory` is in effect in this process; otherwise a no-op.

    For the end of a pass (the application calls it after the organ and the tumor pass): the
    next stage faults in what it needs once, and the process's peak memory no longer carries one
    pass's freed blocks into the next (512 x 512 x 1000 CT: 7.3 GB -> 5.9 GB peak RSS).
    """
    if not _applied:
        return
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass
