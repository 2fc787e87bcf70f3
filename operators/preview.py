"""A PNG a person can check at a glance: the axial slice through the largest lesion.

Organ contours green, tumor contours red, a scale bar, the HU window of the model, square
pixels, radiological display (patient's left on the image's right, anterior up). No patient
identifiers are drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .lesion_report import TargetLesions
from .types import Segmentation

MIN_WIDTH = 512


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def choose_slice(result: Segmentation, measured: List[TargetLesions]) -> tuple:
    """(canonical d, caption): the largest lesion's measurement slice, else the organ's largest slice."""
    lesions = [(les, tl.name) for tl in measured for les in tl.lesions]
    if lesions:
        les, name = max(lesions, key=lambda t: t[0].voxels)
        return les.axial_slice, (f"{name} lesion {les.number}: {les.volume_ml:.1f} ml, "
                                 f"{les.long_axis_mm:.0f} x {les.short_axis_mm:.0f} mm")
    for o in result.organs:
        if o.mask.any():
            return int(np.argmax(o.mask.sum(axis=(1, 2)))), f"no lesion found; {o.target.name} shown"
    return result.ct.prepared.hu.shape[0] // 2, "no lesion found"


def render_preview(result: Segmentation, measured: List[TargetLesions], path: str | Path) -> Path:
    p = result.ct.prepared
    d, caption = choose_slice(result, measured)
    lo, hi = (float(v) for v in result.hu_window)  # the model's (ModelConfig.preprocessing.hu_window)
    gray = ((np.clip(p.hu[d], lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for o in list(result.organs) + list(result.tumors):  # tumors drawn last, over the organ
        rgb[_contour(o.mask[d])] = o.display_rgb
    sy, sx = p.spacing[1], p.spacing[2]
    h, w = gray.shape
    scale = max(1.0, MIN_WIDTH / (w * sx / min(sx, sy)))
    size = (int(round(w * sx / min(sx, sy) * scale)), int(round(h * sy / min(sx, sy) * scale)))
    img = Image.fromarray(rgb).resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(img)
    mm_per_px = w * sx / size[0]
    bar_mm = 50 if size[0] * mm_per_px > 120 else 20
    bar_px = bar_mm / mm_per_px
    y = size[1] - 20
    draw.line([(15, y), (15 + bar_px, y)], fill=(255, 255, 0), width=3)
    draw.text((15, y - 14), f"{bar_mm} mm", fill=(255, 255, 0))
    draw.text((8, 6), caption, fill=(255, 255, 255))
    draw.text((8, 20), "TAGS - research use only, not for clinical use", fill=(255, 200, 0))
    draw.text((size[0] - 16, size[1] // 2), "L", fill=(255, 255, 255))
    draw.text((6, size[1] // 2), "R", fill=(255, 255, 255))
    path = Path(path)
    img.save(path)
    return path
