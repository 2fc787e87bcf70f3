"""3D head: per-slice decoder logits -> a few Conv3d layers across slices -> 3D logits."""

from __future__ import annotations

import torch
from torch import nn


class VolumeHead(nn.Module):
    """Refines stacked per-slice logits with 3D context.

    Input channels: slice logits, image, organ mask (zeros for organ targets). The last
    convolution is zero-initialised, so an untrained head returns the slice logits unchanged.
    """

    def __init__(self, *, channels: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(3, channels, kernel_size=3, padding=1),
            nn.InstanceNorm3d(channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(channels, channels, kernel_size=3, padding=1),
            nn.InstanceNorm3d(channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(channels, 1, kernel_size=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, slice_logits: torch.Tensor, image: torch.Tensor, organ: torch.Tensor) -> torch.Tensor:
        """All (B, 1, D, H, W) -> logits (B, 1, D, H, W)."""
        return slice_logits + self.net(torch.cat([slice_logits, image, organ], dim=1))
