"""SAM's position embedding for an inference window of another size than the trained one."""

from __future__ import annotations

from typing import Tuple

import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom


class FramedPositionEmbedding(PositionEmbeddingRandom):
    """SAM's random-Fourier position embedding for a square window of ``side`` encoder pixels
    placed at the centre of the ``frame``-pixel window the model was trained at.

    SAM normalises every position by the window size (the dense image PE by the embedding grid,
    point and box corners by the input size), so the same anatomy at the same scale encodes at
    other positions when the window grows or shrinks. Here a pixel at x (row or column) of this
    window encodes as pixel ``x + (frame - side) / 2`` of the trained window: a narrower window
    encodes exactly like the centre of a trained window padded around it (what sliding-window
    inference does to a small ROI), a wider one like a trained window extended on every side.
    ``side == frame`` is SAM's embedding exactly.

    The Gaussian frequency matrix is a buffer of the same name as in SAM, so a state dict loads
    into it (and :func:`tags.network.resized` shares it with the trained network).
    """

    def __init__(self, *, num_pos_feats: int, frame: int, side: int) -> None:
        super().__init__(num_pos_feats)
        self.frame = frame
        self.side = side

    def _to_frame(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) pixel positions of this window (x, y) -> [0, 1] positions of the trained frame."""
        return (coords + (self.frame - self.side) / 2.0) / self.frame

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Dense embedding (C, h, w) of the cell centres of an h x w grid over the window."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (self.side / h)
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (self.side / w)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self._pe_encoding(self._to_frame(grid)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) of this window (``image_size`` is (side, side))."""
        if tuple(image_size) != (self.side, self.side):
            raise ValueError(f"this embedding is for a {self.side}x{self.side} window, not {tuple(image_size)}")
        return self._pe_encoding(self._to_frame(coords_input.float()))
