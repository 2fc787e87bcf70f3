"""Is an organ mask plausible before a tumor search runs inside it?

An organ pass that fires on the wrong structure (the aorta, a vertebra or the heart called
"liver" on a chest CT) would send the tumor pass to the wrong place. Each organ has stated
bounds; a mask outside them is treated as the organ being absent, with the reason.

Bounds (:data:`ORGAN_BOUNDS`), per organ:
- ``ml``: smallest and largest volume of the mask (a liver dome cut by the scan's edge is small,
  but under 20 ml it is not worth a search; over 5 l is not a liver);
- ``hu``: range of the mask's median HU (liver parenchyma: about -40 HU fatty to 160 HU in late
  arterial phase; contrast-filled vessels and bone lie above 200 HU);
- ``side``: "right"/"left": the mask's centre of mass must lie at least
  :data:`SIDE_MARGIN` of the body's left-right width on that side of the body's centre line
  (measured: livers 13-17 % to the right on three patients; the aorta 1-6 % and a vertebra 2 %
  off the centre line; the spleen 19-32 % to the left). Skipped when the body touches the
  image's left or right edge (no reliable centre line in a truncated field of view).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

ORGAN_BOUNDS: Dict[str, Dict] = {
    "liver": {"ml": (20.0, 5000.0), "hu": (-60.0, 200.0), "side": "right"},
    "spleen": {"ml": (10.0, 2000.0), "hu": (-40.0, 200.0), "side": "left"},
    "kidney": {"ml": (10.0, 1500.0), "hu": (-40.0, 300.0), "side": None},
    "pancreas": {"ml": (5.0, 500.0), "hu": (-60.0, 200.0), "side": None},
}
SIDE_MARGIN = 0.05
"""Fraction of the body's left-right width by which a sided organ's centre of mass must lie on
its side of the centre line."""


def organ_bounds(name: str, bounds_table: Optional[Dict[str, Dict]] = None) -> Optional[Dict]:
    """The bounds of organ ``name`` in ``bounds_table`` (default :data:`ORGAN_BOUNDS`; {} has
    none), or None."""
    return (ORGAN_BOUNDS if bounds_table is None else bounds_table).get(name)


def implausible_organ(
    name: str, mask: np.ndarray, hu: np.ndarray, affine: np.ndarray, body_box: Optional[Sequence[slice]] = None,
    bounds_table: Optional[Dict[str, Dict]] = None,
) -> Optional[str]:
    """Why the canonical (D, H, W) ``mask`` of organ ``name`` is not plausible, or None.

    Args:
        hu: the CT in HU on the same canonical grid; affine: canonical (d, h, w) -> LPS.
        body_box: canonical box of the body (default: the whole volume).
        bounds_table: bounds per organ (default :data:`ORGAN_BOUNDS`; a model folder may carry
            its own, ``ModelConfig.organ_bounds``).

    Organs without bounds only need a non-empty mask.
    """
    if not mask.any():
        return "the organ mask is empty"
    bounds = organ_bounds(name, bounds_table)
    if bounds is None:
        return None
    voxel_ml = float(np.prod(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))) / 1000.0
    ml = float(mask.sum()) * voxel_ml
    lo, hi = bounds["ml"]
    if not lo <= ml <= hi:
        return f"{name} mask of {ml:.1f} ml is outside {lo:g}-{hi:g} ml"
    median = float(np.median(hu[mask]))
    lo, hi = bounds["hu"]
    if not lo <= median <= hi:
        return f"{name} mask has a median of {median:.0f} HU, outside {lo:g}..{hi:g} HU (vessel, bone or air?)"
    side = bounds.get("side")
    box = tuple(body_box) if body_box is not None else tuple(slice(0, n) for n in mask.shape)
    w = box[2]
    # The body's centre line is only known when the body lies inside the field of view: a body
    # box touching the image's left or right edge (a small or shifted reconstruction field) has
    # no reliable centre, and the side test is skipped.
    if side is not None and w.start > 0 and w.stop < mask.shape[2]:
        # Canonical columns run towards +x (LPS: patient left).
        centre_w = float(np.nonzero(mask)[2].mean())
        mid, width = (w.start + w.stop - 1) / 2.0, max(1, w.stop - w.start)
        offset = (centre_w - mid) / width  # > 0: patient left of the centre line
        if (side == "right" and offset > -SIDE_MARGIN) or (side == "left" and offset < SIDE_MARGIN):
            where = "on the centre line" if abs(offset) < SIDE_MARGIN else f"on the patient's {'left' if offset > 0 else 'right'}"
            return (f"{name} mask lies {where} ({offset:+.0%} of the body width from the centre line, "
                    f"expected at least {SIDE_MARGIN:.0%} to the {side})")
    return None
