"""Lesion decision: which connected components of a tumor probability map are reported.

Each 26-connected component of ``probability >= 0.5`` gets a score, its highest probability,
its volume, its contrast to the organ's parenchyma (HU) and its depth inside the organ mask (mm). :class:`tags.config.LesionDecision`
(in the model folder's config.json, chosen on validation cases by
:func:`training.calibrate.choose_lesion_decision`) keeps the components that reach its
thresholds; the predictor removes the others before any output is written. Whatever the
thresholds, a component without a voxel in the organ mask is not a lesion of that organ (the
tumor pass's window reaches past the organ: a gallbladder or a bowel loop beside the liver can
look like a hypodense tumor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from scipy import ndimage

from .config import LesionDecision
from .lesions import CONNECTIVITY

VOXEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class Component:
    """One candidate lesion: highest and mean probability, volume, contrast to the organ (HU,
    positive: darker than the parenchyma; None without HU and organ), its label in the map,
    whether any of its voxels lies in the organ mask (None without an organ mask) and its depth:
    the distance (mm) from its deepest voxel to the nearest voxel outside the organ mask (None
    unless asked for with the spacing; 0 outside the organ)."""

    label: int
    max_probability: float
    mean_probability: float
    volume_ml: float
    contrast_hu: Optional[float] = None
    in_organ: Optional[bool] = None
    depth_mm: Optional[float] = None


def components(
    probability: np.ndarray, voxel_ml: float, hu: Optional[np.ndarray] = None, organ: Optional[np.ndarray] = None,
    spacing: Optional[Sequence[float]] = None, depth_up_to_mm: Optional[float] = None,
) -> tuple[np.ndarray, List[Component]]:
    """(label map, components) of ``probability >= 0.5``; with ``hu`` and ``organ`` (same grid)
    each component's contrast: the organ's median HU outside every candidate minus the
    component's median HU; with ``organ`` and ``spacing`` (mm, same axis order) its depth in the
    organ. ``depth_up_to_mm``: depths are exact up to this value and may be larger than the truth
    beyond it (they are measured within the candidates' box grown by that distance: a fraction
    of a CT-sized grid), enough to compare them with a threshold of at most that value."""
    candidate = probability >= VOXEL_THRESHOLD
    labels, n = ndimage.label(candidate, structure=CONNECTIVITY)
    if n == 0:
        return labels, []
    index = np.arange(1, n + 1)
    # per-component statistics over the candidate voxels only (scipy.ndimage's maximum and
    # median walk the whole grid: 2 s of a 512 x 512 x 200 CT's tumor ROI); the same values
    lab = labels[candidate]
    prob = probability[candidate]
    size = np.bincount(lab, minlength=n + 1)[1:]
    peak = _sorted_by_component(prob, lab)[np.cumsum(size) - 1]
    mean = np.bincount(lab, weights=prob, minlength=n + 1)[1:] / size
    contrast, inside = [None] * n, [None] * n
    if organ is not None:
        inside = [bool(v) for v in np.bincount(labels[organ], minlength=n + 1)[1:] > 0]
    if hu is not None and organ is not None:
        parenchyma = organ & ~candidate
        if parenchyma.any():
            ref = float(np.median(hu[parenchyma]))
            contrast = [ref - float(v) for v in _component_medians(hu[candidate], lab, size)]
    depth: List[Optional[float]] = [None] * n
    if organ is not None and spacing is not None:
        depth = [float(v) for v in _depths(labels, n, organ, spacing, depth_up_to_mm)]
    comps = [Component(int(i), float(p), float(m), float(s) * voxel_ml, c, o, d)
             for i, p, m, s, c, o, d in zip(index, peak, mean, size, contrast, inside, depth)]
    return labels, comps


def _depths(labels: np.ndarray, n: int, organ: np.ndarray, spacing: Sequence[float],
            up_to_mm: Optional[float]) -> np.ndarray:
    """Deepest organ depth (mm) of components 1..n of ``labels`` (see :func:`components`)."""
    region = tuple(slice(0, s) for s in labels.shape)
    if up_to_mm is not None:
        # a voxel less than up_to_mm deep has its nearest outside voxel within the grown box
        grow = [int(np.ceil(up_to_mm / s)) + 1 for s in spacing]
        where = np.nonzero(labels)
        region = tuple(slice(max(0, int(w.min()) - g), min(dim, int(w.max()) + g + 1))
                       for w, g, dim in zip(where, grow, labels.shape))
    inside = organ[region]
    if inside.all():
        return np.full(n, np.inf)  # no voxel outside the organ in reach
    distance = ndimage.distance_transform_edt(inside, sampling=tuple(float(s) for s in spacing))
    return np.asarray(ndimage.maximum(distance, labels[region], np.arange(1, n + 1)), dtype=float)


def _sorted_by_component(values: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """``values`` ordered by component label, ascending within each component."""
    return values[np.lexsort((values, lab))]


def _component_medians(values: np.ndarray, lab: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Median of ``values`` per component 1..n (``lab`` its label per value, ``size`` the
    counts): the mean of the two middle values of an even count, as ``ndimage.median``."""
    ordered = _sorted_by_component(values, lab)
    start = np.cumsum(size) - size
    return (ordered[start + (size - 1) // 2] + ordered[start + size // 2]) / 2.0


def keeps(c: Component, decision: LesionDecision) -> bool:
    """Whether ``decision`` keeps ``c``; never a component outside the organ mask."""
    if c.in_organ is False:
        return False
    if c.max_probability < decision.min_max_probability or c.volume_ml < decision.min_volume_ml:
        return False
    if decision.min_depth_mm is not None and c.depth_mm is not None and c.depth_mm < decision.min_depth_mm:
        return False
    if decision.min_contrast_hu is not None and c.contrast_hu is not None:
        return c.contrast_hu >= decision.min_contrast_hu
    return True


def apply_decision(
    probability: np.ndarray, decision: LesionDecision, voxel_ml: float,
    hu: Optional[np.ndarray] = None, organ: Optional[np.ndarray] = None, spacing: Optional[Sequence[float]] = None,
) -> int:
    """Zero the components ``decision`` rejects, in place; returns how many were removed.
    ``hu`` and ``organ`` (same grid) are needed for the contrast criterion, ``organ`` and
    ``spacing`` (mm) for the depth criterion; with ``organ`` the components outside it are
    removed too. The default decision keeps everything."""
    if (decision.min_max_probability <= VOXEL_THRESHOLD and decision.min_volume_ml <= 0
            and decision.min_contrast_hu is None and decision.min_depth_mm is None):
        return 0
    depth_spacing = spacing if decision.min_depth_mm is not None else None
    labels, comps = components(probability, voxel_ml, hu, organ, depth_spacing, decision.min_depth_mm)
    rejected = [c.label for c in comps if not keeps(c, decision)]
    if rejected:
        probability[np.isin(labels, rejected)] = 0.0
    return len(rejected)
