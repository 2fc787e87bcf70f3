"""How a pass tiles its region of interest with model windows.

A :class:`WindowPolicy` says how one pass (organ or tumor) places its windows; :func:`plan_windows`
turns it into the window size and overlaps that ``monai.inferers.sliding_window_inference``
then uses. Shapes are on the model grid, axis order (D, H, W) = (slice, row, column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ..config import ModelConfig

SIDE_MULTIPLE = 32
"""Encoder input sides are multiples of this (TinyViT's input side); fitted window sides step so
that the encoder side stays one (:func:`side_step`)."""

DEFAULT_MAX_WINDOW_DEPTH = 96
"""Deepest inference window along the slices (model-grid voxels), see :func:`fit_windows`."""

TUMOR_SIDE_RANGE = (0.5, 2.0)
"""Smallest and largest in-plane window side of the tumor pass by default, as multiples of the
side it was trained at (64 and 256 model-grid voxels for the demo model's 128)."""

ORGAN_SIDE_RANGE = (1.0, 2.0)
"""The same for the organ pass: never narrower than trained (narrower organ windows cost
held-out Dice on the demo model, docs/performance.md)."""

ORGAN_MAX_DEPTH = 1.5
"""Deepest organ window along the slices, as a multiple of the trained depth (48 slices for the
demo model's 32): rows shallow enough for the organ search to stop at the organ's extent (a
512 x 512 x 200 chest-abdomen CT: one row of 40 slices instead of one window of 72), deep
enough that an abdominal series needs few rows (docs/performance.md, "Organ search")."""


@dataclass(frozen=True)
class WindowPolicy:
    """How one pass places its sliding windows.

    Args:
        overlap: overlap of neighbouring windows, as a fraction of the trained window.
        max_depth: deepest window along the slices (model-grid voxels; None: the trained depth,
            as in training). Deeper windows mean fewer window edges and fewer overlapping slices
            computed twice; memory grows with the depth. For an in-plane side larger than the
            trained one the limit shrinks so that a window never holds more voxels than
            ``max_depth`` trained sides do.
        min_depth: shallowest window along the slices (model-grid voxels; None: the trained
            depth). An ROI shallower than the trained window (a thin study) gets one window just
            deep enough to hold it, rounded up to the slab and not shallower than this, instead
            of a trained-depth window mostly made of padding.
        sides: (smallest, largest) in-plane window side (model-grid voxels; None: the trained
            side). Each in-plane axis is fitted to the ROI like the depth (:func:`fit_windows`):
            an ROI narrower than the trained window gets one window just wide enough (not less
            than the smallest side), a wider one the fewest windows up to the largest side.
            Sides are rounded to the step that keeps the encoder at the trained scale
            (:func:`side_step`). Only encoders that can change their input size use it.
        square: one in-plane side for rows and columns (the larger of the two fitted ones).
        search: run the rows of windows along the slices outward from the organ's expected
            slice and stop at its extent (:mod:`tags.inference.organ_search`; the organ pass).
    """

    overlap: float = 0.25
    max_depth: Optional[int] = DEFAULT_MAX_WINDOW_DEPTH
    min_depth: Optional[int] = None
    sides: Optional[Tuple[int, int]] = None
    square: bool = False
    search: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"window overlap must be in [0, 1), not {self.overlap}")
        if self.sides is not None:
            sides = tuple(self.sides)
            if len(sides) != 2 or any(int(v) != v or v <= 0 for v in sides) or sides[0] > sides[1]:
                raise ValueError(f"window sides must be (smallest, largest) positive voxel counts, not {self.sides}")
            object.__setattr__(self, "sides", (int(sides[0]), int(sides[1])))
        if self.min_depth is not None and (int(self.min_depth) != self.min_depth or self.min_depth <= 0):
            raise ValueError(f"window min_depth must be a positive voxel count, not {self.min_depth}")

    @classmethod
    def tumor(cls, config: ModelConfig) -> "WindowPolicy":
        """The tumor pass by default: :data:`TUMOR_SIDE_RANGE` times the trained side, rows and
        columns fitted apart (the same held-out Dice on the demo model as square windows, with a
        third fewer pixels computed on a 512 x 512 x 200 CT, docs/performance.md)."""
        return cls(sides=_scaled(config.roi_size[1], TUMOR_SIDE_RANGE))

    @classmethod
    def organ(cls, config: ModelConfig) -> "WindowPolicy":
        """The organ pass by default: :data:`ORGAN_SIDE_RANGE` times its trained side, square
        windows (rows and columns apart cost held-out liver Dice on the one case where they
        differed, 0.9542 -> 0.9489, docs/performance.md); a thin series gets a window as shallow
        as one slab allows (the 20-slice TotalSegmentator DICOM series: 12 organ-grid slices
        instead of 32, organ pass 6.8 -> 2.1 s in fp32, liver Dice 0.963 -> 0.960); windows at
        most :data:`ORGAN_MAX_DEPTH` times the trained depth, whose rows along the slices the
        organ search runs (:mod:`tags.inference.organ_search`)."""
        max_depth = int(config.organ_roi_size[0] * ORGAN_MAX_DEPTH) // config.adapter.slab_size * config.adapter.slab_size
        return cls(sides=_scaled(config.organ_roi_size[1], ORGAN_SIDE_RANGE), square=True,
                   min_depth=config.adapter.slab_size, max_depth=max_depth, search=True)


def _scaled(trained_side: int, side_range: Tuple[float, float]) -> Tuple[int, int]:
    return (int(round(trained_side * side_range[0])), int(round(trained_side * side_range[1])))


def fit_windows(
    extent: int,
    window: int,
    overlap: float,
    *,
    multiple: int = 1,
    max_window: Optional[int] = None,
    min_window: Optional[int] = None,
) -> tuple[int, float]:
    """Window length and overlap fraction along one axis, fitted to an ROI ``extent`` voxels long.

    Rather than tiling ``extent`` with trained-size windows overlapping by ``overlap`` (86
    slices: 4 windows of 32, 128 slices computed), this returns the fewest windows of at most
    ``max_window`` that cover ``extent`` with the same overlap in voxels, each as short as that
    allows (86 slices, max 96: one window of 88). A window is a multiple of ``multiple`` and never
    shorter than ``min_window`` (default ``window``): an ROI shorter than ``window`` gets one
    window just long enough to hold it when ``min_window < window``.

    Returns (window length, overlap fraction) for ``monai.inferers.sliding_window_inference``,
    which then places exactly that many windows.
    """
    max_window = max(window, max_window or window)
    min_window = min(window, min_window or window)
    ceil_to = lambda n: -(-n // multiple) * multiple  # noqa: E731
    o = int(round(window * overlap))
    if extent <= window:
        return (min(window, max(min_window, ceil_to(extent))), 0.0) if min_window < window else (window, overlap)
    if max_window == window:
        return window, overlap
    n = 1 if extent <= max_window else -(-(extent - o) // (max_window - o))
    w = max(window, ceil_to(-(-(extent + (n - 1) * o) // n)))
    # MONAI steps by int(w * (1 - overlap)); half a voxel keeps float rounding off w - o - 1.
    return w, max(o - 0.5, 0.0) / w if n > 1 else 0.0


def side_step(trained_side: int, encoder_side: int) -> int:
    """Step of fitted in-plane window sides: the smallest whose encoder side
    (``encoder_side * side / trained_side``) is a whole multiple of :data:`SIDE_MULTIPLE`, so a
    fitted window is encoded at exactly the trained scale (32 when the encoder runs at the
    trained side, 16 for a 128-voxel window encoded at 256)."""
    step = SIDE_MULTIPLE * trained_side
    return step // math.gcd(encoder_side, step)


def encoder_input_size(window: Sequence[int], trained: Sequence[int], encoder_side: int) -> Tuple[int, int]:
    """(H, W) encoder input for a (d, h, w) window of a pass trained at ``trained`` (d, h, w)
    windows encoded at ``encoder_side``: the trained scale along each axis."""
    return (encoder_side * window[1] // trained[1], encoder_side * window[2] // trained[2])


def plan_windows(
    shape: Sequence[int],
    trained: Sequence[int],
    policy: WindowPolicy,
    *,
    slab_size: int,
    encoder_side: Optional[int],
) -> tuple[tuple, tuple]:
    """Window size (d, h, w) and per-axis overlap fractions for an ROI of ``shape`` voxels.

    Args:
        trained: the pass's trained window (d, h, w).
        slab_size: window depths are multiples of it (the encoder's token slab).
        encoder_side: the encoder's trained input side; None: an encoder of fixed size, whose
            windows keep the trained in-plane size whatever ``policy.sides`` says.
    """
    d, h, w = trained
    overlap = (policy.overlap, policy.overlap)
    if policy.sides is not None and encoder_side is not None and h == w:
        m = side_step(h, encoder_side)
        lo, hi = (-(-policy.sides[0] // m) * m, max(h, policy.sides[1] // m * m))
        fitted = [fit_windows(e, h, policy.overlap, multiple=m, max_window=hi, min_window=lo) for e in shape[1:]]
        if not policy.square:
            (h, overlap_h), (w, overlap_w) = fitted
            overlap = (overlap_h, overlap_w)
        else:
            side = max(s for s, _ in fitted)
            if side != h:
                o = int(round(h * policy.overlap))
                h = w = side
                overlap = (max(o - 0.5, 0.0) / side,) * 2
    max_depth = policy.max_depth
    if max_depth is not None and h * w > trained[1] * trained[2]:
        max_depth = max(d, max_depth * trained[1] * trained[2] // (h * w) // slab_size * slab_size)
    depth, depth_overlap = fit_windows(shape[0], d, policy.overlap, multiple=slab_size, max_window=max_depth,
                                       min_window=policy.min_depth)
    return (depth, h, w), (depth_overlap, *overlap)
