"""Voxel geometry: the one place that maps array indices to patient coordinates.

Convention used throughout tags/: a volume is a numpy array indexed ``[d, h, w]`` (slice, row,
column) and its ``affine`` is a 4x4 matrix mapping ``(d, h, w, 1)`` to DICOM patient
coordinates (LPS, mm). Spacing is the column norms of the affine, in array axis order
``(z, y, x)``.

The canonical orientation is the usual axial display: ``d`` towards superior (+z), ``h``
towards posterior (+y), ``w`` towards the patient's left (+x). Reorienting is a permutation
and flips of array axes (no resampling); an oblique acquisition is mapped to its nearest axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np


def spacing_from_affine(affine: np.ndarray) -> Tuple[float, float, float]:
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


def affine_from_spacing(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """A canonical-orientation affine (d->+z, h->+y, w->+x) with the given (z, y, x) spacing."""
    a = np.zeros((4, 4))
    a[3, 3] = 1.0
    a[2, 0], a[1, 1], a[0, 2] = spacing[0], spacing[1], spacing[2]
    a[:3, 3] = origin
    return a


@dataclass(frozen=True)
class Reorientation:
    """A permutation + flips taking an array to canonical orientation, and back.

    ``perm[i]`` is the source axis that becomes canonical axis ``i``; ``flip[i]`` whether
    canonical axis ``i`` is reversed after the permutation. ``shape`` is the source shape.
    """

    perm: Tuple[int, int, int]
    flip: Tuple[bool, bool, bool]
    shape: Tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Source-oriented (D, H, W) -> canonical. Returns a view where possible."""
        out = np.transpose(array, self.perm)
        for axis, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=axis)
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Canonical -> source orientation (exact inverse of :meth:`apply`)."""
        out = array
        for axis, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=axis)
        return np.transpose(out, np.argsort(self.perm))

    def apply_affine(self, affine: np.ndarray) -> np.ndarray:
        a = np.asarray(affine, dtype=np.float64)[:, list(self.perm) + [3]].copy()
        canon_shape = [self.shape[p] for p in self.perm]
        for axis, f in enumerate(self.flip):
            if f:
                a[:3, 3] += a[:3, axis] * (canon_shape[axis] - 1)
                a[:3, axis] *= -1
        return a


def reorientation(affine: np.ndarray, shape: Sequence[int]) -> Reorientation:
    """The permutation/flips that bring an array with this affine to canonical orientation."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    directions = a / np.linalg.norm(a, axis=0, keepdims=True)
    # Canonical axis 0 follows patient z (index 2), axis 1 patient y (1), axis 2 patient x (0).
    patient_axis = (2, 1, 0)
    perm = [-1, -1, -1]
    free = [0, 1, 2]
    # Assign the most clearly aligned axes first, so oblique directions do not steal an axis.
    pairs = sorted(
        ((abs(directions[patient_axis[c], s]), c, s) for c in range(3) for s in range(3)), reverse=True
    )
    for _, c, s in pairs:
        if perm[c] == -1 and s in free:
            perm[c] = s
            free.remove(s)
    flip = tuple(bool(directions[patient_axis[c], perm[c]] < 0) for c in range(3))
    return Reorientation(perm=tuple(perm), flip=flip, shape=tuple(int(s) for s in shape))


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, Reorientation]:
    """Returns (canonical volume view, its affine, the reorientation to undo it)."""
    r = reorientation(affine, volume.shape)
    return r.apply(volume), r.apply_affine(affine), r
