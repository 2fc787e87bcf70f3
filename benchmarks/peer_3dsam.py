"""A 3DSAM-adapter-style network, for benchmarking TAGS against it (random weights only).

Written from the published description of 3DSAM-adapter (Gong et al., Medical Image Analysis
2024; see ../shared/notes/peers.md), not from its code, to measure what that design costs on
the same machine and region of interest. It is never trained or used for a result.

Structure, for a (B, 1, R, R, R) crop (R = 128 in the paper, 1 mm voxels):
  1. the crop is upsampled 4x to (4R)^3 and its 4R slices go through SAM ViT-B's 16x16 patch
     embedding (segment_anything's ``PatchEmbed``): (B*4R, R/4, R/4, 768);
  2. a depth-wise Conv3d (kernel and stride 16 along depth) makes an (R/4)^3 token grid;
     SAM's 2D position embedding (32 x 32) plus a learned depth embedding are added;
  3. 12 ViT-B blocks (segment_anything's ``MLPBlock``), each with an adapter before attention
     (Linear 768->384, depth-wise 3x3x3 Conv3d, Linear 384->768, residual) and 8^3 window
     attention, shifted by 4 on every other block, with decomposed relative positions along
     depth, rows and columns (segment_anything's ``get_rel_pos``);
  4. four 3D necks (768->256) after blocks 3, 6, 9, 12; four Conv3d heads at (R/4)^3,
     upsampled 4x, concatenated with the image, 1x1x1 Conv3d to 2-class logits at R^3.
Left out (small next to the encoder): the click-prompt branch (point features sampled from
the embedding, two blocks with 10 global queries).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import PatchEmbed, get_rel_pos
from torch import nn


class DepthAdapter(nn.Module):
    """Linear down -> depth-wise 3x3x3 Conv3d -> Linear up, residual. x: (B, D, H, W, C)."""

    def __init__(self, *, dim: int = 768, hidden: int = 384) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.up = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.down(x)).permute(0, 4, 1, 2, 3)
        y = F.gelu(self.conv(y)).permute(0, 2, 3, 4, 1)
        return x + self.up(y)


class WindowAttention3D(nn.Module):
    """Multi-head attention inside w^3 windows with decomposed (d, h, w) relative positions.

    x: (B, D, H, W, C) with D, H, W multiples of w.
    """

    def __init__(self, *, dim: int = 768, num_heads: int = 12, window: int = 8, shift: int = 0) -> None:
        super().__init__()
        self.num_heads, self.window, self.shift = num_heads, window, shift
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos = nn.ParameterList([nn.Parameter(torch.zeros(2 * window - 1, self.head_dim)) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        s, k = self.shift, self.window
        if s:
            x = torch.roll(x, shifts=(-s, -s, -s), dims=(1, 2, 3))
        win = x.reshape(b, d // k, k, h // k, k, w // k, k, c).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, k**3, c)
        n = win.shape[0]
        qkv = self.qkv(win).reshape(n, k**3, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, kk, v = qkv[0], qkv[1], qkv[2]  # (n, heads, k^3, hd)
        bias = self._rel_bias(q)  # (n, heads, k^3, k^3)
        out = F.scaled_dot_product_attention(q, kk, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(n, k**3, c))
        out = out.reshape(b, d // k, h // k, w // k, k, k, k, c).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)
        if s:
            out = torch.roll(out, shifts=(s, s, s), dims=(1, 2, 3))
        return out

    def _rel_bias(self, q: torch.Tensor) -> torch.Tensor:
        n, heads, t, hd = q.shape
        k = self.window
        rq = q.reshape(n, heads, k, k, k, hd)
        rd, rh, rw = (get_rel_pos(k, k, p) for p in self.rel_pos)  # (k, k, hd) each
        bd = torch.einsum("nmdhwc,dkc->nmdhwk", rq, rd)
        bh = torch.einsum("nmdhwc,hkc->nmdhwk", rq, rh)
        bw = torch.einsum("nmdhwc,wkc->nmdhwk", rq, rw)
        bias = bd[..., :, None, None] + bh[..., None, :, None] + bw[..., None, None, :]
        return bias.reshape(n, heads, t, t).to(q.dtype)


class Block3D(nn.Module):
    def __init__(self, *, dim: int = 768, num_heads: int = 12, window: int = 8, shift: int = 0) -> None:
        super().__init__()
        self.adapter = DepthAdapter(dim=dim, hidden=dim // 2)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention3D(dim=dim, num_heads=num_heads, window=window, shift=shift)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter(x)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Neck3D(nn.Module):
    def __init__(self, *, dim: int = 768, out: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(dim, out, 1, bias=False), nn.GroupNorm(1, out),
            nn.Conv3d(out, out, 3, padding=1, bias=False), nn.GroupNorm(1, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SAM3DAdapterStyle(nn.Module):
    """See the module docstring. Input (B, 1, R, R, R) in [0, 1]; output (B, 2, R, R, R) logits.

    Args:
        roi: R, a multiple of 32 (the 4x-upsampled slices give R/4 tokens per side, in 8^3 windows).
        slice_chunk: slices per patch-embedding call (bounds the memory of step 1).
    """

    def __init__(self, *, roi: int = 128, dim: int = 768, depth: int = 12, num_heads: int = 12,
                 window: int = 8, slice_chunk: int = 64) -> None:
        super().__init__()
        if roi % 32:
            raise ValueError(f"roi must be a multiple of 32, not {roi}")
        self.roi, self.slice_chunk = roi, slice_chunk
        self.grid = roi // 4
        self.patch_embed = PatchEmbed(kernel_size=(16, 16), stride=(16, 16), in_chans=3, embed_dim=dim)
        self.depth_embed_conv = nn.Conv3d(dim, dim, kernel_size=(16, 1, 1), stride=(16, 1, 1), groups=dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.grid, self.grid, dim))
        self.depth_embed = nn.Parameter(torch.zeros(1, self.grid, 1, 1, dim))
        self.blocks = nn.ModuleList(
            Block3D(dim=dim, num_heads=num_heads, window=window, shift=(window // 2 if i % 2 else 0))
            for i in range(depth)
        )
        self.neck_after = (depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1)
        self.necks = nn.ModuleList(Neck3D(dim=dim) for _ in self.neck_after)
        self.heads = nn.ModuleList(nn.Conv3d(256, 32, 3, padding=1) for _ in self.neck_after)
        self.out = nn.Conv3d(4 * 32 + 1, 2, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, _, r, _, _ = image.shape
        big = 4 * r
        slices = []
        for i in range(b):
            for j in range(0, big, self.slice_chunk):
                # Upsample only the slices being embedded (chunk edges interpolate within the
                # chunk: the cost is the point here, not the exact values): (chunk, 3, 4R, 4R).
                lo = j // 4
                part = image[i : i + 1, :, lo : lo + self.slice_chunk // 4 + 1]
                up = F.interpolate(part, scale_factor=4, mode="trilinear", align_corners=False)
                up = up[0, 0, : self.slice_chunk][:, None].expand(-1, 3, -1, -1)
                slices.append(self.patch_embed(up))  # (chunk, R, R, C) tokens of 16x16 patches
        tok = torch.cat(slices).reshape(b, big, self.grid, self.grid, -1)  # (B, 4R, g, g, C)
        tok = self.depth_embed_conv(tok.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)  # (B, g, g, g, C)
        x = tok + self.pos_embed + self.depth_embed
        feats = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.neck_after:
                feats.append(x.permute(0, 4, 1, 2, 3))
        heads = [head(neck(f)) for f, neck, head in zip(feats, self.necks, self.heads)]
        up = F.interpolate(torch.cat(heads, 1), size=(r, r, r), mode="trilinear", align_corners=False)
        return self.out(torch.cat([up, image], 1))
