"""Process-wide settings for running TAGS inference, applied by the inference processes' entry
points (``python app``, ``tags.bench``), never at import time.
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

KEEP_FREED_MEMORY_ENV = "TAGS_KEEP_FREED_MEMORY"
"""Set to 0 to leave glibc's malloc at its defaults (see :func:`keep_freed_memory`)."""


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and unmaps it on ``free``. A TAGS window allocates and frees activations of a
    hundred MB and more, so on a CPU every forward page-faults all of them in again: on the
    2-core benchmark machine the kernel time was larger than the model's own (51 s system
    time in a 68 s benchmark, docs/performance.md). With mmap off and trimming only above
    2 GB of free heap, freed blocks are reused; the cost is that the process keeps its peak
    heap (peak RSS is measured in the same benchmarks). PyTorch's CPU performance guide reaches
    the same end with jemalloc or tcmalloc preloaded; this needs no extra library and no
    environment set before the process starts.

    For a process that runs inference and ends (one study per ``python app``). Not applied to
    training: with it the two-process DDP test's workers peaked at 8.6 GB each instead of 6.5.

    A no-op (returns False) on other C libraries, or when $TAGS_KEEP_FREED_MEMORY is 0.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    if not ok:
        log.warning("mallopt refused a TAGS allocator setting; freed memory may be unmapped as by default")
    return ok
