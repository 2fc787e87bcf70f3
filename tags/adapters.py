"""3D adapters for a frozen 2D SAM image encoder.

Each adapter sits after one encoder block and mixes information across neighbouring slabs
(bottleneck -> depth-wise Conv3d -> projection, residual), as 3DSAM-adapter does. The
projection is zero-initialised, so an untrained adapter is the identity and the adapted encoder
reproduces the pretrained 2D features exactly.

Adapters are attached to the existing blocks as a child module ``adapter`` plus a forward hook,
so the pretrained parameter names (``image_encoder.layers.1.blocks.0.*``) stay those of the
base checkpoint and the model folder can store only what differs from it.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn


class SliceContext:
    """Shared state telling every adapter how many slabs make one volume in the batch, and
    whether the adapters run at all in this forward pass (off: the pretrained block outputs)."""

    def __init__(self) -> None:
        self.depth: int = 1
        self.active: bool = True


class SliceAdapter3D(nn.Module):
    """Residual bottleneck adapter with a depth-wise Conv3d across slabs.

    Args:
        dim: token width C of the block it follows.
        bottleneck: hidden width.
        kernel_depth: kernel size along the slab axis (odd); in-plane kernel is 3x3.
    """

    def __init__(self, *, dim: int, bottleneck: int, kernel_depth: int = 3) -> None:
        super().__init__()
        if kernel_depth % 2 != 1:
            raise ValueError("kernel_depth must be odd")
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.conv = nn.Conv3d(
            bottleneck,
            bottleneck,
            kernel_size=(kernel_depth, 3, 3),
            padding=(kernel_depth // 2, 1, 1),
            groups=bottleneck,
        )
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, depth: int, hw: Tuple[int, int]) -> torch.Tensor:
        """x: (B*depth, H*W, C) or (B*depth, H, W, C) tokens, slab-major within each volume."""
        shape = x.shape
        n, c = shape[0], shape[-1]
        h, w = hw
        b = n // depth
        y = self.act(self.down(x.reshape(n, h, w, c)))  # (B*D, H, W, r)
        r = y.shape[-1]
        y = y.reshape(b, depth, h, w, r).permute(0, 4, 1, 2, 3)  # (B, r, D, H, W)
        y = self.act(self.conv(y))
        y = y.permute(0, 2, 3, 4, 1).reshape(n, h, w, r)
        return x + self.up(y).reshape(shape)


def encoder_blocks(encoder: nn.Module, block_kind: str) -> List[Tuple[nn.Module, int]]:
    """(block, token width) of every attention block that gets an adapter."""
    if block_kind == "tinyvit":
        # Stage 0 is a convolutional stage at full resolution; adapters go in the attention stages.
        return [(blk, layer.dim) for layer in list(encoder.layers)[1:] for blk in layer.blocks]
    if block_kind == "vit":
        return [(blk, blk.norm1.normalized_shape[0]) for blk in encoder.blocks]
    raise ValueError(f"unknown block kind {block_kind!r}")


def insert_adapters(
    encoder: nn.Module, block_kind: str, *, bottleneck: int, kernel_depth: int, context: SliceContext
) -> List[SliceAdapter3D]:
    """Attach a :class:`SliceAdapter3D` to every attention block of ``encoder`` (in place)."""
    def hook(module, inputs, output):
        # The context is read through the module, not a closure: a deep copy of the network
        # (validation during training) then follows its own copied context.
        ctx = module.adapter.context
        if not ctx.active:
            return output
        hw = module.input_resolution if block_kind == "tinyvit" else (output.shape[1], output.shape[2])
        return module.adapter(output, ctx.depth, hw)

    adapters = []
    for block, dim in encoder_blocks(encoder, block_kind):
        adapter = SliceAdapter3D(dim=dim, bottleneck=bottleneck, kernel_depth=kernel_depth)
        adapter.context = context
        block.adapter = adapter
        block.register_forward_hook(hook)
        adapters.append(adapter)
    return adapters
