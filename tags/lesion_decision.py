"""Lesion decision: which connected components of a tumor probability map are reported.

Each 26-connected component of ``probability >= 0.5`` gets a score, its highest probability,
and its volume. :class:`tags.config.LesionDecision` (in the model folder's config.json, chosen on
validation cases by :func:`training.calibrate.choose_lesion_decision`) keeps the components that
reach both thresholds; the predictor removes the others before any output is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
from scipy import ndimage

from .config import LesionDecision
from .lesions import CONNECTIVITY

VOXEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class Component:
    """One candidate lesion: highest and mean probability, volume, and its label in the map."""

    label: int
    max_probability: float
    mean_probability: float
    volume_ml: float


def components(probability: np.ndarray, voxel_ml: float) -> tuple[np.ndarray, List[Component]]:
    """(label map, components) of ``probability >= 0.5``."""
    labels, n = ndimage.label(probability >= VOXEL_THRESHOLD, structure=CONNECTIVITY)
    if n == 0:
        return labels, []
    index = np.arange(1, n + 1)
    peak = ndimage.maximum(probability, labels, index)
    mean = ndimage.mean(probability, labels, index)
    size = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    comps = [Component(int(i), float(p), float(m), float(s) * voxel_ml) for i, p, m, s in zip(index, peak, mean, size)]
    return labels, comps


def keeps(c: Component, decision: LesionDecision) -> bool:
    return c.max_probability >= decision.min_max_probability and c.volume_ml >= decision.min_volume_ml


def apply_decision(probability: np.ndarray, decision: LesionDecision, voxel_ml: float) -> int:
    """Zero the components ``decision`` rejects, in place; returns how many were removed."""
    if decision.min_max_probability <= VOXEL_THRESHOLD and decision.min_volume_ml <= 0:
        return 0
    labels, comps = components(probability, voxel_ml)
    rejected = [c.label for c in comps if not keeps(c, decision)]
    if rejected:
        probability[np.isin(labels, rejected)] = 0.0
    return len(rejected)
