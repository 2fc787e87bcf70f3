"""Choose the organ boundary refinement (:class:`tags.config.OrganBoundary`) on labelled non-test cases.

The organ pass runs once per case; every setting of :data:`BAND_GRID_MM` x :data:`SIGMA_GRID`
then grows its mask (:func:`tags.organ_boundary.refine_boundary`) and is scored by the organ's
Dice against the label. The setting with the best mean Dice over the cases is kept, the
narrowest band and range on a tie; none is kept when no setting beats the mask as it is.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.metrics import compute_dice

from tags.config import OrganBoundary
from tags.geometry import spacing_from_affine
from tags.inference import TagsPredictor
from tags.organ_boundary import refine_boundary
from tags.preprocessing import prepare_ct

from .calibrate import ValidationCase, find_case
from .data import target_masks
from .evaluate import canonical_case

BAND_GRID_MM = (2.0, 3.0, 4.0, 5.0)
"""Bands tried: up to a little more than the default organ grid's largest voxel side (4 mm), the
distance within which the coarse mask cannot place the surface."""
SIGMA_GRID = (2.0, 2.5, 3.0)
MIN_GAIN = 1e-4
"""A setting must beat the previous best mean Dice by this much to replace it."""


def _dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """MONAI's Dice of two (D, H, W) bool masks (``truth`` is never empty here)."""
    as_tensor = lambda m: torch.from_numpy(m)[None, None].float()  # noqa: E731
    return float(compute_dice(as_tensor(mask), as_tensor(truth), include_background=True)[0, 0])


def organ_masks(predictor: TagsPredictor, organ: str, cases: Sequence[ValidationCase]) -> List[Dict]:
    """Per case: {"case", "mask" (the organ pass's mask, unrefined), "truth", "hu", "spacing"},
    canonical grid. Every case must have a label for ``organ``."""
    out = []
    for vc in cases:
        ds, case = find_case(vc)
        img, aff, lab = canonical_case(case, vc.z_from, vc.z_to)
        truth = target_masks(lab, ds.targets).get(organ)
        if truth is None or not truth.any():
            raise ValueError(f"case {vc.name!r} of {ds.root} has no {organ} label to choose the organ boundary on")
        result = predictor.segment_organs(img, aff, [organ], region=prepare_ct(img, aff).body_box)[organ]
        out.append({"case": vc.name + (f" slices {vc.z_from:g}-{vc.z_to:g}" if vc.z_from is not None else ""),
                    "mask": result.mask(0.5), "truth": truth, "hu": img, "spacing": spacing_from_affine(aff)})
    return out


def choose_organ_boundary(predicted: Sequence[Dict], description: str) -> Tuple[Optional[OrganBoundary], Dict]:
    """(the chosen setting or None, a report with every setting's Dice per case) for the cases
    :func:`organ_masks` predicted; ``description`` names them for ``chosen_on``."""
    def dices(band: Optional[float], sigmas: Optional[float]) -> List[float]:
        return [_dice(refine_boundary(p["mask"], p["hu"], p["spacing"], band_mm=band, hu_sigmas=sigmas)
                      if band else p["mask"], p["truth"]) for p in predicted]

    rows = [{"band_mm": None, "hu_sigmas": None, "dice": dices(None, None)}]
    for band in BAND_GRID_MM:
        for sigmas in SIGMA_GRID:
            rows.append({"band_mm": band, "hu_sigmas": sigmas, "dice": dices(band, sigmas)})
    for row in rows:
        row["mean_dice"] = float(np.mean(row["dice"]))
    best = rows[0]
    for row in rows[1:]:
        if row["mean_dice"] > best["mean_dice"] + MIN_GAIN:
            best = row
    how = (f"best mean organ Dice over {description} on a grid of bands {list(BAND_GRID_MM)} mm and HU ranges "
           f"{list(SIGMA_GRID)} robust SD (narrowest on a tie)")
    chosen = (OrganBoundary(band_mm=best["band_mm"], hu_sigmas=best["hu_sigmas"], chosen_on=how)
              if best["band_mm"] is not None else None)
    report = {"chosen": {k: best[k] for k in ("band_mm", "hu_sigmas", "mean_dice")}, "unrefined_mean_dice":
              rows[0]["mean_dice"], "how": how, "cases": [p["case"] for p in predicted], "grid": rows}
    return chosen, report
