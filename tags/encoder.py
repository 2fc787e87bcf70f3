"""The 3D-adapted image encoder: slices -> slabs -> frozen 2D SAM encoder with 3D adapters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import SliceContext, insert_adapters
from .backbones import Backbone
from .config import AdapterConfig


class SlabEmbedding(nn.Module):
    """Turns a slab of k neighbouring slices into one 3-channel encoder image.

    The image is the slab's centre slice on all three channels (exactly what the pretrained
    2D encoder expects) plus a zero-initialised 3x3 convolution of all k slices, which training
    can use to bring in the neighbours.
    """

    def __init__(self, *, slab_size: int) -> None:
        super().__init__()
        self.slab_size = slab_size
        self.mix = nn.Conv2d(slab_size, 3, kernel_size=3, padding=1)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, slabs: torch.Tensor) -> torch.Tensor:
        """slabs: (N, k, H, W) in [0, 1] -> (N, 3, H, W)."""
        centre = slabs[:, self.slab_size // 2 : self.slab_size // 2 + 1]
        return centre.expand(-1, 3, -1, -1) + self.mix(slabs)


class AdaptedImageEncoder(nn.Module):
    """Frozen SAM image encoder with 3D adapters, applied to a stack of slices.

    Input: (B, 1, D, H, W) image in [0, 1], (H, W) = backbone input size, D a multiple of
    slab_size.
    Output: (B, D, 256, e_h, e_w) per-slice embeddings (e = H/4, W/4 for TinyViT, /16 for ViT),
    linearly interpolated along depth from the per-slab embeddings.
    """

    def __init__(self, backbone: Backbone, adapter: AdapterConfig) -> None:
        super().__init__()
        self.encoder = backbone.image_encoder
        self.slab_size = adapter.slab_size
        self.context = SliceContext()
        self.slab = SlabEmbedding(slab_size=adapter.slab_size)
        self.adapters = insert_adapters(
            self.encoder,
            backbone.block_kind,
            bottleneck=adapter.bottleneck,
            kernel_depth=adapter.kernel_depth,
            context=self.context,
        )
        if backbone.pixel_mean is not None:
            self.register_buffer("pixel_mean", torch.tensor(backbone.pixel_mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(backbone.pixel_std).view(1, 3, 1, 1), persistent=False)
        else:
            self.pixel_mean = None

    def encode_slabs(self, image: torch.Tensor, adapt: bool = True) -> torch.Tensor:
        """(B, 1, D, H, W) -> per-slab embeddings (B, D/k, 256, e_h, e_w); ``adapt`` False runs
        the encoder without its adapters (the pretrained features of the slab image)."""
        b, _, d, h, w = image.shape
        k = self.slab_size
        if d % k:
            raise ValueError(f"depth {d} is not a multiple of slab_size {k}")
        slabs = image.reshape(b * (d // k), k, h, w)
        x = self.slab(slabs)
        if self.pixel_mean is not None:
            x = (x * 255.0 - self.pixel_mean) / self.pixel_std
        self.context.depth = d // k
        self.context.active = adapt
        emb = self.encoder(x)
        return emb.reshape(b, d // k, *emb.shape[1:])

    def forward(self, image: torch.Tensor, adapt: bool = True) -> torch.Tensor:
        b, _, d, _, _ = image.shape
        emb = self.encode_slabs(image, adapt)  # (B, Ns, C, e_h, e_w)
        if self.slab_size == 1:
            return emb
        vol = emb.permute(0, 2, 1, 3, 4)  # (B, C, Ns, e_h, e_w)
        vol = F.interpolate(vol, size=(d, *emb.shape[3:]), mode="trilinear", align_corners=False)
        return vol.permute(0, 2, 1, 3, 4)
