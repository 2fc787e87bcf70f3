"""Preprocessing defined once, for training and inference alike: HU window, ROI crop, resampling.

All functions take canonical-orientation arrays (see :mod:`tags.geometry`) indexed (D, H, W)
with spacing (z, y, x) in mm.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

Box = Tuple[slice, slice, slice]


def normalize_hu(volume_hu: np.ndarray | torch.Tensor, window: Sequence[float]):
    """Clip to the HU window and map it linearly to [0, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    if isinstance(volume_hu, torch.Tensor):
        return ((volume_hu.float().clamp(lo, hi) - lo) / (hi - lo))
    return ((np.clip(volume_hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def bounding_box(mask: np.ndarray, margin_mm: float, spacing: Sequence[float]) -> Optional[Box]:
    """Bounding box of a mask grown by ``margin_mm`` on every side, clipped to the array.

    Returns None for an empty mask.
    """
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        m = int(np.ceil(margin_mm / spacing[axis]))
        box.append(slice(max(0, idx[0] - m), min(mask.shape[axis], idx[-1] + 1 + m)))
    return tuple(box)


def grid_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Tuple[int, int, int]:
    """Shape of the same field of view sampled at ``target`` spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(array: torch.Tensor, shape: Sequence[int], *, mode: str) -> torch.Tensor:
    """Resample a (D, H, W) or (C, D, H, W) tensor to ``shape`` over the same field of view.

    ``mode``: "linear" (trilinear, voxel centres kept, ``align_corners=False``) or "nearest".
    Same shape in, same tensor out (no copy, no interpolation error).
    """
    if tuple(array.shape[-3:]) == tuple(shape):
        return array
    squeeze = array.dim() == 3
    x = array[None, None] if squeeze else array[None]
    if mode == "linear":
        y = F.interpolate(x.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    elif mode == "nearest":
        y = F.interpolate(x.float(), size=tuple(shape), mode="nearest-exact")
    else:
        raise ValueError(f"unknown resampling mode {mode!r}")
    return y[0, 0] if squeeze else y[0]
