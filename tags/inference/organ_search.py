"""Organ search: the organ pass's window rows along the slices, run outward from where the organ
is expected until the organ's extent lies inside the rows run.

An organ pass over a chest-abdomen CT spends most of its windows on slices without the organ.
The search tiles the ROI with rows of windows along the slices (each row is MONAI's in-plane sliding
window over a slab of the ROI), and the rows are run one at a time:

1. first the row nearest the slice where the organ is expected (:func:`expected_slice`);
2. while the organ found so far (the largest component of the blended rows, >= 0.5) reaches into
   the slices a neighbouring row shares with the rows run, that row;
3. while no organ of at least ``min_voxels`` is found, the neighbouring row nearer the expected
   slice, until every row has run.

The rows are blended along the slices with the Gaussian weights MONAI's
``sliding_window_inference`` gives them: with every row run the result equals that function's
over the whole ROI, but near the windows' corners, where MONAI floors its 3D weights at 1e-3 of
the peak and a product of per-axis weights does not (tests/test_organ_search.py). Rows never run
stay at logit :data:`NOT_RUN_LOGIT` (probability 0).

Where a search that stops early differs from a pass over every row:
- in the slices a run row shares with a row not run, the run row's logits stand alone; the row
  not run could have added organ to them, next to an organ that does not reach them;
- a first organ found complete in rows that do not hold the true organ (a false organ of at least
  ``min_voxels``) ends the search where a pass over every row would have kept the larger true
  organ. Which rows run, and so this, depends on where the search starts.

Shapes are (d, h, w) on the organ grid, ``d`` towards superior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices

from ..config import ModelConfig
from ..plausibility import lung_base, organ_bounds
from ..preprocessing import largest_component

NOT_RUN_LOGIT = -30.0
"""Logit of the slices no row ran on (sigmoid: 1e-13)."""
BELOW_LUNG_BASE_MM = 40.0
"""Upper-abdominal organs are looked for first this far below the lungs' base
(:func:`tags.plausibility.lung_base`): the liver's and spleen's bulk lies under the diaphragm,
whose dome reaches up to about that base."""
MIN_ORGAN_ML = 5.0
"""The smallest organ that ends the search for an organ without plausibility bounds (a speck of
a few voxels is not an organ)."""
LUNG_SCAN_STEP_MM = 4.0
"""In-plane and slice step of the lung scan of :func:`expected_slice` (enough for a structure
that fills 15 % of the body's cross-section)."""


def expected_slice(hu: np.ndarray, spacing: Sequence[float]) -> int:
    """Index along ``d`` of the canonical (D, H, W) ``hu`` (spacing in mm, axis order z, y, x)
    where an upper-abdominal organ is looked for first: :data:`BELOW_LUNG_BASE_MM` below the
    lungs' base, or the top slice when no slice shows lungs (a series below the diaphragm, whose
    upper abdomen is at its top). Read from every voxel about :data:`LUNG_SCAN_STEP_MM` apart."""
    step = [max(1, int(round(LUNG_SCAN_STEP_MM / s))) for s in spacing]
    base = lung_base(np.asarray(hu[::step[0], ::step[1], ::step[2]]))
    if base is None:
        return int(hu.shape[0]) - 1
    return int(np.clip(round((base * step[0] * spacing[0] - BELOW_LUNG_BASE_MM) / spacing[0]), 0, hu.shape[0] - 1))


@dataclass(frozen=True)
class OrganSearch:
    """Where an organ pass's search starts: the expected slice (:func:`expected_slice`) of an ROI
    ``depth`` slices deep on the canonical grid, and the smallest organ that counts as found (the
    organ's smallest plausible volume, :data:`tags.plausibility.ORGAN_BOUNDS`;
    :data:`MIN_ORGAN_ML` for an organ without bounds)."""

    expected: int
    depth: int
    min_ml: float

    @classmethod
    def of(cls, config: ModelConfig, name: str, roi_hu: np.ndarray, spacing: Sequence[float]) -> "OrganSearch":
        """The search for organ ``name`` of a model of ``config`` in the canonical (D, H, W) ROI
        ``roi_hu`` (spacing in mm, axis order z, y, x)."""
        bounds = organ_bounds(name, config.organ_bounds)
        return cls(expected_slice(roi_hu, spacing), int(roi_hu.shape[0]),
                   float(bounds["ml"][0]) if bounds else MIN_ORGAN_ML)

    def grid_slice(self, grid_depth: int) -> int:
        """The expected slice on a grid of ``grid_depth`` slices over the same ROI."""
        return int(min(grid_depth - 1, (self.expected + 0.5) * grid_depth // self.depth))

    def min_voxels(self, grid_spacing: Sequence[float]) -> int:
        """The smallest organ that counts as found, in voxels of ``grid_spacing`` mm."""
        return int(self.min_ml * 1000.0 / float(np.prod(grid_spacing)))


def window_rows(depth: int, window_depth: int, overlap: float) -> List[slice]:
    """The rows (slice ranges along ``d``) MONAI's ``sliding_window_inference`` places windows of
    ``window_depth`` slices at, overlapping by the fraction ``overlap``, on an ROI ``depth``
    slices deep (MONAI's scan interval: ``int(window_depth * (1 - overlap))``, at least 1)."""
    if window_depth >= depth:
        return [slice(0, depth)]
    interval = max(int(window_depth * (1 - overlap)), 1)
    return [s[0] for s in dense_patch_slices((depth,), (window_depth,), (interval,))]


def search_rows(
    rows: Sequence[slice],
    run_row: Callable[[slice], torch.Tensor],
    *,
    shape: Tuple[int, int, int],
    expected: int,
    min_voxels: int,
) -> Tuple[torch.Tensor, int]:
    """(blended logits (d, h, w) float32, the number of rows run).

    Args:
        rows: the rows along ``d`` (:func:`window_rows`), all of one depth, in order.
        run_row: a row's slice range -> its logits (row depth, h, w), blended in plane.
        shape: (d, h, w) of the ROI.
        expected: the slice the search starts from (:func:`expected_slice` on the organ grid).
        min_voxels: the smallest organ (voxels >= 0.5 in its largest component) that counts
            as found.

    After each row the next one is chosen again from the blend so far: below, while the organ
    reaches into the slices the row below shares with the rows run; above, the same; while no
    organ is found, the neighbour nearer ``expected``.
    """
    depth = rows[0].stop - rows[0].start
    weight = compute_importance_map((depth,), mode="gaussian").float().cpu()
    total = torch.zeros(shape, dtype=torch.float32)
    weights = torch.zeros(shape[0], dtype=torch.float32)
    centres = [(r.start + r.stop - 1) / 2.0 for r in rows]
    lo = hi = int(np.argmin([abs(c - expected) for c in centres]))  # rows lo..hi run
    i: Optional[int] = lo
    while i is not None:
        r = rows[i]
        total[r] += weight[:, None, None] * run_row(r).float().cpu()
        weights[r] += weight
        lo, hi = min(lo, i), max(hi, i)
        below = lo - 1 if lo > 0 else None
        above = hi + 1 if hi < len(rows) - 1 else None
        organ = _largest_component_extent(total, weights)
        if organ is None or organ[2] < min_voxels:
            # not found yet: the neighbour nearer the expected slice
            options = [j for j in (below, above) if j is not None]
            i = min(options, key=lambda j: abs(centres[j] - expected)) if options else None
        else:
            z0, z1, _ = organ  # inclusive extent
            if below is not None and z0 < rows[below].stop:
                i = below
            elif above is not None and z1 >= rows[above].start:
                i = above
            else:
                i = None
    return _blended(total, weights), hi - lo + 1


def _blended(total: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    ran = weights > 0
    out = torch.full_like(total, NOT_RUN_LOGIT)
    out[ran] = total[ran] / weights[ran][:, None, None]
    return out


def _largest_component_extent(total: torch.Tensor, weights: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """(first slice, last slice, voxels) of the largest 6-connected component of logits >= 0
    (probability >= 0.5) of the rows blended so far, or None."""
    labels, n, k = largest_component((_blended(total, weights) >= 0).numpy())
    if n == 0:
        return None
    organ = labels == k
    zs = np.nonzero(organ.any(axis=(1, 2)))[0]
    return int(zs[0]), int(zs[-1]), int(np.count_nonzero(organ))
