"""Where and in which precision TAGS runs: the device, the CPU's native-bf16 probe, autocast.

One definition for inference (:class:`tags.inference.TagsPredictor`), training and the
benchmarks. The library reads no environment variables: the application's settings do
(``app/app.py``) and pass their values in.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Dict, Optional

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
"""Inference and training precisions: fp32, or bf16 / fp16 autocast."""


def select_device(requested: Optional[str | torch.device] = None) -> torch.device:
    """``requested``, else CUDA when available, else the CPU."""
    if requested is not None:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch without the probes: assume not
        return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True when this GPU multiplies bf16 in hardware: compute capability 8.0 and newer (A100,
    RTX 30xx, L4, H100, ...); V100 and T4 emulate it, slowly."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def default_precision(device: torch.device) -> str:
    """bf16 where the device multiplies bf16 in hardware (GPUs from compute capability 8.0, CPUs
    with AMX or AVX512-BF16; the model is trained under bf16 autocast), fp16 on older GPUs, fp32
    on other CPUs (emulated bf16 is slower than fp32). On the demo model, bf16 instead of fp32
    moves held-out tumor Dice by less than 0.01 and liver Dice by up to 0.016 (docs/performance.md)."""
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def checked_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; a ValueError naming it otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (fp32: autocast off)."""
    if checked_precision(precision) == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def machine_info() -> Dict:
    """CPU model, the vector and matrix units torch uses, threads, torch version: measurements
    name the machine they ran on (an AMX Xeon multiplies bf16 several times faster than fp32, an
    AVX2 CPU emulates bf16)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
