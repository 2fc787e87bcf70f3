"""SAM's mask-decoder attention for CPU inference when few keys meet many queries: the softmax
along the long axis.

In the decoder's image-to-token attention every image token (1024 per 128-pixel slice) attends
to the few prompt tokens (TAGS: 14 per slice). ``segment_anything``'s ``Attention`` computes
(B, heads, queries, keys) scores and a softmax over their last axis, rows of 14 values, where
torch's CPU softmax is slow: for the 32 x 8 x 1024 x 14 scores of a demo window 41.5 ms in fp32
and 22.0 ms in bf16 on a 2-core Xeon with AVX-512 (6.2 ms in fp32 held to AVX2), against 2.2-3.8 ms
for the same softmax along the second-to-last axis of the transposed scores.
:class:`InferenceAttention` computes the scores transposed (keys x queries), normalises along the
keys axis and multiplies the values with the transposed view: the same values to float rounding
(``tests/test_inference_blocks.py``).

Used only where it applies: inference on the CPU, fewer keys than queries and fewer than
:data:`FEW_KEYS`; otherwise the upstream forward runs (the token-to-image and self attentions,
training, CUDA).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .surgery import swap_to_subclass

FEW_KEYS = 64
"""Key counts below this (and below the query count) take the transposed scores."""


class InferenceAttention(nn.Module):
    """Marker base for the swapped-in class; see :func:`use_inference_decoder_attention`."""


def _make_class(base: type) -> type:
    class _Inference(base, InferenceAttention):
        """SAM decoder Attention with the softmax along the queries' long axis when keys are few."""

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # (B, N, C) each
            n_q, n_k = q.shape[1], k.shape[1]
            if self.training or q.device.type != "cpu" or not n_k < min(n_q, FEW_KEYS):
                return super().forward(q, k, v)
            q = self._separate_heads(self.q_proj(q), self.num_heads)  # (B, heads, Nq, c)
            k = self._separate_heads(self.k_proj(k), self.num_heads)  # (B, heads, Nk, c)
            v = self._separate_heads(self.v_proj(v), self.num_heads)
            scores = (k @ q.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, Nk, Nq)
            attn = torch.softmax(scores, dim=-2)
            out = attn.transpose(-2, -1) @ v  # (B, heads, Nq, c)
            return self.out_proj(self._recombine_heads(out))

    return _Inference


def _is_sam_attention(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "out_proj", "_separate_heads", "_recombine_heads"))


def use_inference_decoder_attention(transformer: nn.Module) -> int:
    """Swap every ``segment_anything`` ``Attention`` inside ``transformer`` (a mask decoder's
    ``TwoWayTransformer`` in eval mode) to its inference subclass, in place
    (:func:`tags.inference.surgery.swap_to_subclass`). Returns how many were swapped; already
    swapped ones are left as they are."""
    return swap_to_subclass(transformer, "Attention", InferenceAttention, _make_class, accept=_is_sam_attention)
