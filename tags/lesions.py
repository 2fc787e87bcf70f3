"""Lesion measurements from a tumor mask: what a tumor board reads (RECIST-style).

All inputs are canonical-orientation arrays (see :mod:`tags.geometry`), so the axial plane is
``(h, w)`` and slices run along ``d``. Lesions are 26-connected components. Diameters are
measured edge to edge in the axial slice where the lesion is longest: the longest distance
between two pixel centres (on the convex hull) plus one pixel step along that direction, and
the lesion's width perpendicular to it measured the same way (within a pixel of the true
axes of smooth shapes, tested on ellipsoids).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
"""26-connectivity, as in the lesion-wise evaluation (training/evaluate.py)."""


@dataclass
class Lesion:
    """One connected component of a tumor mask.

    Attributes:
        number: 1-based, by decreasing volume.
        voxels, volume_ml: size.
        long_axis_mm: longest axial diameter; short_axis_mm: longest width perpendicular to it,
            in the same slice (``axial_slice``, canonical d index).
        mean_hu, max_hu: CT values inside the lesion.
        organ: the organ mask holding most of the lesion ("none" if it lies outside all);
            organ_fraction: the part of its volume inside that organ.
        slices: (first, last) canonical d index the lesion spans.
        centroid_lps: centre of mass in patient coordinates (mm).
    """

    number: int
    voxels: int
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    axial_slice: int
    mean_hu: float
    max_hu: float
    organ: str
    organ_fraction: float
    slices: Tuple[int, int]
    centroid_lps: Tuple[float, float, float]

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 3)
        d["slices"] = list(self.slices)
        d["centroid_lps"] = [round(v, 2) for v in self.centroid_lps]
        return d


def _extent(direction: np.ndarray, pixel: Sequence[float]) -> float:
    """One pixel step along a unit direction (y, x): added to a centre-to-centre distance it
    gives the edge-to-edge length of a smooth shape to within a pixel in any direction."""
    return float(np.hypot(direction[0] * pixel[0], direction[1] * pixel[1]))


def axial_axes(slice_mask: np.ndarray, pixel: Sequence[float]) -> Tuple[float, float]:
    """(long axis, perpendicular width) in mm of the pixels of one (H, W) slice."""
    pts = np.argwhere(slice_mask).astype(np.float64) * np.asarray(pixel, dtype=np.float64)
    if len(pts) == 1:
        return float(max(pixel)), float(min(pixel))
    try:
        hull = pts[ConvexHull(pts).vertices] if len(pts) >= 3 else pts
    except QhullError:  # collinear pixels
        hull = pts
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.linalg.norm(diff, axis=-1)
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    if dist[i, j] == 0:
        return float(max(pixel)), float(min(pixel))
    u = diff[i, j] / dist[i, j]
    v = np.array([-u[1], u[0]])
    proj = hull @ v
    long_axis = float(dist[i, j]) + _extent(u, pixel)
    short_axis = float(proj.max() - proj.min()) + _extent(v, pixel)
    return long_axis, short_axis


def measure_lesions(
    mask: np.ndarray,
    hu: np.ndarray,
    affine: np.ndarray,
    organs: Optional[Mapping[str, np.ndarray]] = None,
    min_volume_ml: float = 0.0,
) -> List[Lesion]:
    """Lesions of a canonical (D, H, W) mask, largest first; smaller than ``min_volume_ml`` dropped.

    Args:
        hu: CT values on the same grid.
        affine: canonical (d, h, w, 1) -> LPS.
        organs: {name: mask} on the same grid, to say which organ each lesion lies in.
    """
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = ndimage.label(mask, structure=CONNECTIVITY)
    if n == 0:
        return []
    boxes = ndimage.find_objects(labels)
    lesions = []
    for k, box in enumerate(boxes, start=1):
        sub = labels[box] == k
        voxels = int(sub.sum())
        if voxels * voxel_ml < min_volume_ml:
            continue
        values = hu[box][sub]
        best = (-1.0, 0.0, 0)
        for z in range(sub.shape[0]):
            if sub[z].any():
                la, sa = axial_axes(sub[z], spacing[1:])
                if la > best[0]:
                    best = (la, sa, box[0].start + z)
        organ, fraction = "none", 0.0
        for name, m in (organs or {}).items():
            f = float(np.asarray(m)[box][sub].sum()) / voxels
            if f > fraction:
                organ, fraction = name, f
        com = np.array(ndimage.center_of_mass(sub)) + [s.start for s in box]
        centroid = tuple(float(v) for v in (np.asarray(affine) @ np.append(com, 1.0))[:3])
        lesions.append(Lesion(
            number=0, voxels=voxels, volume_ml=voxels * voxel_ml, long_axis_mm=best[0], short_axis_mm=best[1],
            axial_slice=best[2], mean_hu=float(values.mean()), max_hu=float(values.max()), organ=organ,
            organ_fraction=fraction, slices=(box[0].start, box[0].stop - 1), centroid_lps=centroid,
        ))
    lesions.sort(key=lambda les: -les.voxels)
    for i, les in enumerate(lesions, start=1):
        les.number = i
    return lesions
