"""SAM's position embedding for an inference window of another size than the trained one."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

from .backbones import input_hw


class FramedPositionEmbedding(PositionEmbeddingRandom):
    """SAM's random-Fourier position embedding for a window of ``side`` encoder pixels, placed
    at the centre of the ``frame``-pixel square window the model was trained at along every
    axis shorter than the frame.

    SAM normalises every position by the window size (the dense image PE by the embedding grid,
    point and box corners by the input size), so the same anatomy at the same scale encodes at
    other positions when the window grows or shrinks. Here, along an axis shorter than the
    frame, a pixel at x of this window encodes as pixel ``x + (frame - side) / 2`` of the
    trained window: exactly like the centre of a trained window padded around it (what
    sliding-window inference does to a small ROI). An axis as long as the frame or longer is
    normalised by its own length, as SAM does (and as :func:`tags.network.resized` does for a
    wider square window). ``side == frame`` is SAM's embedding exactly.

    Args:
        num_pos_feats: half the embedding width (SAM's argument).
        frame: side of the square window the model was trained at (encoder pixels).
        side: this window's side, or (H, W) for a rectangular window.

    The Gaussian frequency matrix is a buffer of the same name as in SAM, so a state dict loads
    into it (and :func:`tags.network.resized` shares it with the trained network).
    """

    def __init__(self, *, num_pos_feats: int, frame: int, side: int | Sequence[int]) -> None:
        super().__init__(num_pos_feats)
        self.frame = frame
        self.size: Tuple[int, int] = input_hw(side)
        # (x, y) order, as the coordinates: the frame each axis is normalised by, and the offset.
        self._frames = torch.tensor([float(max(frame, s)) for s in self.size[::-1]])
        self._offsets = torch.tensor([max(frame - s, 0) / 2.0 for s in self.size[::-1]])

    def _to_frame(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) pixel positions of this window (x, y) -> [0, 1] positions of the frame."""
        offsets = self._offsets.to(coords.device, coords.dtype)
        return (coords + offsets) / self._frames.to(coords.device, coords.dtype)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Dense embedding (C, h, w) of the cell centres of an h x w grid over the window."""
        h, w = size
        side_h, side_w = self.size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (side_h / h)
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (side_w / w)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self._pe_encoding(self._to_frame(grid)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) of this window (``image_size`` is its (H, W))."""
        if tuple(image_size) != self.size:
            raise ValueError(f"this embedding is for a {self.size[0]}x{self.size[1]} window, not {tuple(image_size)}")
        return self._pe_encoding(self._to_frame(coords_input.float()))
