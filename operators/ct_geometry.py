"""Geometry of a CT series from its DICOM attributes: the (d, h, w) -> LPS affine, checked.

The SDK's DICOMSeriesToVolumeOperator sorts the slices along the slice normal and stacks them
into a (D, H, W) array; its own affine multiplies the row direction by PixelSpacing[0], which
is wrong for non-square pixels. The affine used everywhere in this project is computed here
from ImagePositionPatient, ImageOrientationPatient and PixelSpacing of the sorted slices,
and every assumption the model grid needs is checked on the way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tags.preprocessing import CTInputError

SPACING_TOLERANCE = 0.01
"""Largest relative deviation of one slice step from the mean step (1 %)."""

TILT_TOLERANCE_DEG = 0.5
"""Largest angle between the slice step and the slice normal (gantry tilt / shear)."""

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between ImageOrientationPatient values of two slices of one series."""


def _floats(ds, keyword: str, n: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise CTInputError(f"{where} has no valid {keyword}")
    try:
        return np.array([float(v) for v in value])
    except (TypeError, ValueError):
        raise CTInputError(f"{where} has a non-numeric {keyword}") from None


def series_affine(datasets: Sequence) -> np.ndarray:
    """Affine (d, h, w, 1) -> LPS mm of slices already sorted along their normal.

    Args:
        datasets: pydicom datasets of the slices in array order (index d).

    Raises:
        CTInputError: missing geometry, mixed orientations, duplicate positions, gaps or
            uneven steps, or a step not along the slice normal (gantry tilt).
    """
    n = len(datasets)
    if n < 2:
        raise CTInputError(f"the series has {n} slice(s) with a position; a volume needs at least 2")
    iops = np.stack([_floats(d, "ImageOrientationPatient", 6, f"slice {i + 1}") for i, d in enumerate(datasets)])
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOLERANCE:
        raise CTInputError("the series mixes slice orientations (ImageOrientationPatient differs between slices)")
    pos = np.stack([_floats(d, "ImagePositionPatient", 3, f"slice {i + 1}") for i, d in enumerate(datasets)])
    ps = _floats(datasets[0], "PixelSpacing", 2, "the first slice")
    if (ps <= 0).any():
        raise CTInputError(f"PixelSpacing {ps.tolist()} is not positive")
    row, col = iops[0, :3], iops[0, 3:]  # direction of increasing column index, of increasing row index
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    steps = np.diff(pos, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    if lengths.min() < 1e-3:
        raise CTInputError("two slices share one position (duplicate slices in the series)")
    mean = float(lengths.mean())
    worst = float(np.abs(lengths - mean).max() / mean)
    if worst > SPACING_TOLERANCE:
        raise CTInputError(
            f"slice positions are not evenly spaced (steps {lengths.min():.3f}..{lengths.max():.3f} mm): "
            "missing slices or a variable-spacing series"
        )
    direction = (pos[-1] - pos[0]) / (n - 1)
    cos = abs(float(np.dot(direction, normal))) / np.linalg.norm(direction)
    angle = float(np.degrees(np.arccos(min(1.0, cos))))
    if angle > TILT_TOLERANCE_DEG:
        raise CTInputError(
            f"the slice step is {angle:.1f} degrees off the slice normal (gantry tilt); tilted series are not supported"
        )
    a = np.eye(4)
    a[:3, 0] = direction
    a[:3, 1] = col * ps[0]  # rows are ps[0] apart along the column direction
    a[:3, 2] = row * ps[1]  # columns are ps[1] apart along the row direction
    a[:3, 3] = pos[0]
    return a
