"""Organ boundary refinement: the coarse organ pass's mask grown to the organ's edge on the CT grid.

The organ pass runs on a coarse grid (4 x 3 x 3 mm by default) and its probabilities are resampled
to the CT's grid, so its mask can place the organ's surface only to within about a coarse voxel:
on a healthy portal-venous liver (0.98 x 0.98 x 2 mm CT) the voxels it missed formed a shell
1-5 mm inside the true surface (median depth 2.2 mm), several times the voxels it added outside.
:func:`refine_boundary` adds the voxels within ``band_mm`` of the mask (per axis, a box
neighbourhood) whose HU lies within ``hu_sigmas`` robust standard deviations of the organ's own
HU (median and scaled MAD of the mask's interior, measured on this CT, so any contrast phase):
the missed shell is parenchyma, the fat, air, bone and contrast-filled vessels around it are
not. Only voxels connected to the mask through such voxels are added, so the organ stays one
piece. It only adds: a hypodense tumor inside the mask stays inside it. Settings live in the model
folder (:class:`tags.config.OrganBoundary`); how they were chosen is in docs/accuracy.md.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

MAD_TO_SIGMA = 1.4826
"""Scale from the median absolute deviation to the standard deviation of a normal distribution."""
MAX_SAMPLES = 1_000_000
"""The interior's HU statistics are taken from at most this many voxels (an even sample)."""


def refine_boundary(mask: np.ndarray, hu: np.ndarray, spacing: Sequence[float], *, band_mm: float,
                    hu_sigmas: float, hu_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """``mask`` (D, H, W) bool, plus the voxels within ``band_mm`` of it whose HU is organ-like.

    Args:
        mask: the organ pass's mask on the CT grid (any orientation; ``spacing`` follows its axes).
        hu: the CT in HU on the same grid.
        spacing: voxel size (d, h, w) in mm.
        band_mm: how far outside the mask voxels may be added (rounded to whole voxels per axis;
            an axis whose voxels are larger than ``band_mm`` gets none).
        hu_sigmas: the HU range accepted, in robust standard deviations around the interior's
            median HU.
        hu_range: the organ's plausible median HU (e.g. ``ORGAN_BOUNDS``' "hu"): a mask whose
            interior lies outside it is not the organ (a vessel's contrast-filled blood called
            "liver") and is not grown.

    Returns a new bool array; ``mask`` is returned unchanged when it is empty, has no interior
    or its interior's median HU lies outside ``hu_range``.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    radius = tuple(int(band_mm // float(s)) for s in spacing)
    box = _grown_box(mask, radius)
    m, h = mask[box], hu[box]
    centre, sigma = _interior_hu(m, h)
    if centre is None or (hu_range is not None and not hu_range[0] <= centre <= hu_range[1]):
        return mask
    near = m
    for axis, r in enumerate(radius):
        if r:
            near = ndimage.maximum_filter1d(near, size=2 * r + 1, axis=axis, mode="constant")
    grown = m | (near & (np.abs(h.astype(np.float32) - centre) <= hu_sigmas * sigma))
    out = mask.copy()
    out[box] |= _attached(grown, m)
    return out


def _attached(grown: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 26-connected components of ``grown`` that hold a voxel of ``seed``: organ-like voxels
    cut off from the mask (fat between two lobes' edges, a neighbour organ's rim) are not added."""
    labels, _ = ndimage.label(grown, structure=np.ones((3, 3, 3), dtype=bool))
    keep = np.unique(labels[seed])
    return np.isin(labels, keep[keep > 0])


def _grown_box(mask: np.ndarray, radius: Sequence[int]) -> Tuple[slice, ...]:
    """The mask's bounding box grown by ``radius`` voxels per axis, clipped to the array."""
    box = []
    for axis, r in enumerate(radius):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - r, 0), min(int(idx[-1]) + r + 1, mask.shape[axis])))
    return tuple(box)


def _interior_hu(mask: np.ndarray, hu: np.ndarray) -> Tuple[float | None, float]:
    """(median, robust sigma) of the HU inside the mask one voxel away from its surface (the whole
    mask if it has no such interior); (None, 0) for an empty mask. A sigma of zero (a constant
    image) is raised to 1 HU."""
    interior = ndimage.binary_erosion(mask)
    if not interior.any():
        interior = mask
    values = hu[interior]
    if values.size == 0:
        return None, 0.0
    if values.size > MAX_SAMPLES:
        values = values[:: values.size // MAX_SAMPLES + 1]
    values = values.astype(np.float32)
    centre = float(np.median(values))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - centre)))
    return centre, max(sigma, 1.0)
