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
  off the centre line; the spleen 19-32 % to the left). When the body touches the image's left
  or right edge (a reconstruction field that cuts off the arms or the body's sides) the body box
  has no reliable centre: the centre line and width are then those of the lungs in the mask's
  slices (:func:`lung_centre_line`: the rib cage is symmetric about the centre line and lies
  inside such a field), and the test is skipped only when those slices hold no lungs either.
  On the aorta-report CT's thorax, whose body fills the image's width, the lungs' centre line
  lies on the spine, and the left ventricle's wall that an organ pass called "liver" lies to its
  left (tests/test_plausibility.py).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

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
LUNG_HU = -400.0
"""Lung: air below this HU inside the body (not connected to the air around the body)."""
MIN_LUNG_SHARE = 0.15
"""A slice counts for the lungs' centre line when lung fills at least this share of the body's
cross-section (lung bases and bowel gas stay below it)."""
MIN_SECOND_LUNG = 0.25
"""The smaller of a slice's two lungs must be at least this share of the larger for the slice to
count (the left lung beside the heart is smaller than the right)."""


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
        body_box: canonical box of the body (default: the whole volume, which touches the
            image's edges, so the side test measures from the lungs' centre line).
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
    if side is None:
        return None
    line = centre_line(mask, hu, body_box)
    if line is None:
        return None
    mid, width, source = line
    # Canonical columns run towards +x (LPS: patient left).
    offset = (float(np.nonzero(mask)[2].mean()) - mid) / width  # > 0: patient left of the centre line
    if (side == "right" and offset > -SIDE_MARGIN) or (side == "left" and offset < SIDE_MARGIN):
        where = "on the centre line" if abs(offset) < SIDE_MARGIN else f"on the patient's {'left' if offset > 0 else 'right'}"
        return (f"{name} mask lies {where} ({offset:+.0%} of the {source} width from the {source} centre line, "
                f"expected at least {SIDE_MARGIN:.0%} to the {side})")
    return None


def centre_line(mask: np.ndarray, hu: np.ndarray, body_box: Optional[Sequence[slice]] = None):
    """(column of the centre line, width in columns, "body's" or "lungs'") for the side test of
    the canonical ``mask``, or None when neither the body nor the lungs give one.

    The body box's centre when the body lies inside the image's width; otherwise the lungs'
    (:func:`lung_centre_line`) in the mask's slices."""
    box = tuple(body_box) if body_box is not None else tuple(slice(0, n) for n in mask.shape)
    w = box[2]
    if w.start > 0 and w.stop < mask.shape[2]:
        return (w.start + w.stop - 1) / 2.0, float(max(1, w.stop - w.start)), "body's"
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    if zs.size == 0:
        return None
    lungs = lung_centre_line(hu[zs[0]:zs[-1] + 1])
    return None if lungs is None else (*lungs, "lungs'")


def lung_centre_line(hu: np.ndarray) -> Optional[Tuple[float, float]]:
    """(column of the centre line, width in columns) of the lungs in the canonical (D, H, W)
    ``hu``, or None when no slice shows both lungs.

    Per slice, lung is air (< :data:`LUNG_HU`) not connected to the slice's border (the air
    around the body, and a lung the field of view cuts). A slice counts when lung fills at least
    :data:`MIN_LUNG_SHARE` of the body's cross-section (everything but that outer air) and its two
    largest lung regions are a left and a right lung: side by side without sharing a column, the
    smaller at least :data:`MIN_SECOND_LUNG` of the larger (one lung alone, after a resection, or
    one lung base ending before the other, would put the line inside that lung). Its centre line
    is the midpoint of the two lungs' outer columns; the medians over the counted slices are
    returned.
    """
    mids, widths = [], []
    for plane in hu:  # one slice at a time: a label image of the whole range would cost 4 bytes a voxel
        labels, sizes, body = slice_lungs(plane)
        if np.count_nonzero(sizes) < 2 or sizes.sum() < MIN_LUNG_SHARE * body:
            continue
        second, first = np.argsort(sizes)[-2:]
        if sizes[second] < MIN_SECOND_LUNG * sizes[first]:
            continue
        left, right = sorted((np.nonzero((labels == k).any(axis=0))[0] for k in (first, second)),
                             key=lambda cols: cols.mean())
        if left[-1] >= right[0]:
            continue  # overlapping columns: not a left and a right lung
        mids.append((left[0] + right[-1]) / 2.0)
        widths.append(right[-1] - left[0] + 1)
    if not mids:
        return None
    return float(np.median(mids)), float(np.median(widths))


def slice_lungs(plane: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """(labels, pixels per label, body pixels) of one (H, W) slice in HU: lung regions are air
    (< :data:`LUNG_HU`) not connected to the slice's border, each label's size with the border's
    labels and the background set to 0; the body is everything but the air connected to the
    border."""
    from scipy import ndimage

    labels, n = ndimage.label(plane < LUNG_HU)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outer_air = int(sizes[border[border > 0]].sum())
    sizes[border] = 0  # background and the air outside the body
    sizes[0] = 0
    return labels, sizes, max(plane.size - outer_air, 1)


def lung_base(hu: np.ndarray) -> Optional[int]:
    """The lowest slice (index along the canonical ``d``, which runs towards superior) of the
    (D, H, W) ``hu`` whose lungs fill at least :data:`MIN_LUNG_SHARE` of the body's cross-section
    (:func:`slice_lungs`), or None when no slice does (a series below the diaphragm). Lung bases
    and bowel gas stay below that share, so this lies a little above the lowest lung tissue."""
    for z, plane in enumerate(hu):
        _, sizes, body = slice_lungs(plane)
        if sizes.sum() >= MIN_LUNG_SHARE * body:
            return z
    return None
