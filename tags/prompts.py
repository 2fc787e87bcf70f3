"""Anatomy prompts derived from an organ mask, per axial slice, with no clicks.

For each slice of the model window: the organ's bounding box, points inside the organ
(positive) and in a ring just outside it (negative), and the organ mask itself as a dense
prompt. Coordinates are in encoder-input pixels (x in 0..W-1, y in 0..H-1), SAM's convention.
The derivation is deterministic for a given seed. User points and boxes can be added through
the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .backbones import input_hw
from .config import PromptConfig


@dataclass
class SlicePrompts:
    """Prompts for N slices (N = B * D, slice-major within each volume).

    Attributes:
        boxes: (N, 4) float, x0 y0 x1 y1 in encoder pixels.
        box_valid: (N,) bool, False where the slice has no box.
        points: (N, P, 2) float, x y in encoder pixels.
        point_labels: (N, P) long, 1 positive, 0 negative, -1 padding (SAM's convention).
        dense: (N, 1, M_h, M_w) mask logits at the prompt encoder's mask input size, or None.
    """

    boxes: torch.Tensor
    box_valid: torch.Tensor
    points: torch.Tensor
    point_labels: torch.Tensor
    dense: Optional[torch.Tensor]

    def to(self, device) -> "SlicePrompts":
        return SlicePrompts(
            boxes=self.boxes.to(device),
            box_valid=self.box_valid.to(device),
            points=self.points.to(device),
            point_labels=self.point_labels.to(device),
            dense=None if self.dense is None else self.dense.to(device),
        )

    @staticmethod
    def cat(items: Sequence["SlicePrompts"]) -> "SlicePrompts":
        dense = [p.dense for p in items]
        p_max = max(p.points.shape[1] for p in items)
        pts, lbl = [], []
        for p in items:
            pad = p_max - p.points.shape[1]
            pts.append(F.pad(p.points, (0, 0, 0, pad)))
            lbl.append(F.pad(p.point_labels, (0, pad), value=-1))
        return SlicePrompts(
            boxes=torch.cat([p.boxes for p in items]),
            box_valid=torch.cat([p.box_valid for p in items]),
            points=torch.cat(pts),
            point_labels=torch.cat(lbl),
            dense=None if any(d is None for d in dense) else torch.cat(dense),
        )


def _to_encoder(coord: np.ndarray, size: int, enc_size: int) -> np.ndarray:
    """Pixel index on an axis of length ``size`` -> pixel coordinate on the encoder's axis of
    length ``enc_size``."""
    return (coord + 0.5) * (enc_size / size) - 0.5


def derive_prompts(
    organ: np.ndarray,
    spacing: Sequence[float],
    *,
    img_size: int | Sequence[int],
    mask_size: int | Sequence[int],
    config: PromptConfig,
    seed: int = 0,
) -> SlicePrompts:
    """Anatomy prompts for every slice of an organ mask: :class:`SlicePrompts` with N = D.

    Args:
        organ: (D, H, W) bool organ mask on the model grid.
        spacing: (z, y, x) spacing of that grid in mm (sets the ring width in pixels).
        img_size: encoder input side S, or (S_h, S_w); prompt coordinates are scaled from
            (H, W) to it.
        mask_size: side, or (M_h, M_w), of the dense prompt (the prompt encoder's mask input
            size).
        config: numbers of points, ring width, dense-prompt logit magnitude.
        seed: seed of the point sampling (same seed, same points).
    """
    organ = np.asarray(organ, dtype=bool)
    d, h, w = organ.shape
    enc_h, enc_w = input_hw(img_size)
    mask_hw = input_hw(mask_size)
    rng = np.random.default_rng(seed)
    boxes = np.zeros((d, 4), np.float32)
    box_valid = np.zeros(d, bool)
    p = config.num_positive + config.num_negative
    points = np.zeros((d, p, 2), np.float32)
    labels = np.full((d, p), -1, np.int64)

    # In-plane distance to the organ; a huge z sampling keeps the distance within each slice.
    dist = ndimage.distance_transform_edt(~organ, sampling=(1e9, spacing[1], spacing[2])) if organ.any() else None
    for z in np.flatnonzero(organ.reshape(d, -1).any(axis=1)):
        ys, xs = np.nonzero(organ[z])
        boxes[z] = [
            _to_encoder(xs.min(), w, enc_w),
            _to_encoder(ys.min(), h, enc_h),
            _to_encoder(xs.max(), w, enc_w),
            _to_encoder(ys.max(), h, enc_h),
        ]
        box_valid[z] = True
        pick = rng.integers(0, len(ys), config.num_positive)
        points[z, : config.num_positive] = _encoder_xy(xs[pick], ys[pick], (h, w), (enc_h, enc_w))
        labels[z, : config.num_positive] = 1
        ring_y, ring_x = np.nonzero((dist[z] > 0) & (dist[z] <= config.ring_mm))
        if len(ring_y):
            pick = rng.integers(0, len(ring_y), config.num_negative)
            points[z, config.num_positive:] = _encoder_xy(ring_x[pick], ring_y[pick], (h, w), (enc_h, enc_w))
            labels[z, config.num_positive:] = 0

    return SlicePrompts(
        boxes=torch.from_numpy(boxes),
        box_valid=torch.from_numpy(box_valid),
        points=torch.from_numpy(points),
        point_labels=torch.from_numpy(labels),
        dense=_dense_prompt(organ, mask_hw, config.mask_logit),
    )


def _encoder_xy(xs: np.ndarray, ys: np.ndarray, shape: Sequence[int], enc: Sequence[int]) -> np.ndarray:
    """(N, 2) encoder (x, y) coordinates of pixels (ys, xs) of an (H, W) slice."""
    return np.stack([_to_encoder(xs, shape[1], enc[1]), _to_encoder(ys, shape[0], enc[0])], axis=-1)


def _dense_prompt(organ: np.ndarray, mask_hw: Sequence[int], logit: float) -> torch.Tensor:
    """(D, 1, M_h, M_w) dense prompt: +logit inside the organ, -logit outside (nearest resize)."""
    dense = F.interpolate(torch.from_numpy(organ.astype(np.float32))[:, None], size=tuple(mask_hw), mode="nearest")
    return (dense * 2.0 - 1.0) * logit


def text_only_prompts(n: int) -> SlicePrompts:
    """No anatomy prompt for n slices (organ targets: the text prompt alone)."""
    return SlicePrompts(
        boxes=torch.zeros(n, 4),
        box_valid=torch.zeros(n, dtype=torch.bool),
        points=torch.zeros(n, 1, 2),
        point_labels=torch.full((n, 1), -1, dtype=torch.long),
        dense=None,
    )
