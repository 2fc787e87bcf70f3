"""SAM's two-way mask-decoder transformer for CPU inference: the image tokens' projections in one
matrix product, and the softmax along the long axis when few keys meet many queries.

Per block, ``segment_anything``'s ``TwoWayAttentionBlock`` adds the position encoding to the
image tokens twice (``keys + key_pe``, a (B, N, C) pass each: 32 x 1024 x 256 values per demo
window) and projects the image tokens three times (token-to-image keys and values, image-to-token
queries), each projection reading (and under autocast casting) all of them; the final attention
adds and projects twice more. :class:`InferenceTwoWayTransformer` projects them once per block
with the three weight matrices side by side, and adds the position encoding's projection (one
(1, N, C') product per block) and the biases to that product's output in place:
``W (keys + pe) + b = W keys + (W pe + b)``.

In the image-to-token attention every image token (1024 per 128-pixel slice) attends to the few
prompt tokens (TAGS: 14 per slice); upstream's (B, heads, queries, keys) scores put rows of 14
values under the softmax, where torch's CPU softmax is slow: for a demo window 41.5 ms in fp32 and
22.0 ms in bf16 on a 2-core Xeon with AVX-512 (6.2 ms in fp32 held to AVX2), against 2.2-3.8 ms
along the second-to-last axis of the transposed scores. :func:`attend` computes the scores
transposed (keys x queries) when the keys are fewer than the queries and than :data:`FEW_KEYS`.

The same values as upstream to float rounding (``tests/test_inference_blocks.py``). Used for
inference on the CPU; training and other devices run the upstream forward.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn

from .surgery import kept_derived, swap_to_subclass

FEW_KEYS = 64
"""Key counts below this (and below the query count) take the transposed scores."""


def attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``segment_anything`` ``Attention`` on projected inputs: q (B, Nq, C'), k and v (B, Nk, C')
    (the outputs of its q/k/v projections, views allowed) -> (B, Nq, C) after its output
    projection. Few keys: transposed scores, softmax along the queries' long axis."""
    heads = attn.num_heads
    q, k, v = (attn._separate_heads(t, heads) for t in (q, k, v))  # (B, heads, N, c)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if k.shape[2] < min(q.shape[2], FEW_KEYS):
        weights = torch.softmax((k @ q.transpose(-2, -1)) * scale, dim=-2).transpose(-2, -1)
    else:
        weights = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    return attn.out_proj(attn._recombine_heads(weights @ v))


def image_projections(keys: torch.Tensor, pe: torch.Tensor, projections: Sequence[Tuple[nn.Linear, bool]],
                      owner: nn.Module) -> Tuple[torch.Tensor, ...]:
    """Several linear projections of the image tokens ``keys`` (B, N, C), each of ``keys + pe``
    (``pe`` (1, N, C) or (B, N, C)) where its flag is True, else of ``keys``: one product with the weights
    side by side (kept on ``owner``: :func:`tags.inference.surgery.kept_derived`), the position
    encoding's projection (outside autocast: one (N, C) product) and the biases added in place.
    Returns views of the (B, N, sum C') output."""
    w, w_pe, b = kept_derived(
        owner, "_image_projections", [t for p, _ in projections for t in (p.weight, p.bias)],
        lambda: (torch.cat([p.weight for p, _ in projections]),
                 torch.cat([p.weight if with_pe else torch.zeros_like(p.weight) for p, with_pe in projections]),
                 torch.cat([p.bias for p, _ in projections])),
        extra=tuple(with_pe for _, with_pe in projections))
    out = torch.matmul(keys, w.t())
    with torch.autocast(keys.device.type, enabled=False):  # small: in the weights' precision
        pe_out = torch.matmul(pe.to(w_pe.dtype), w_pe.t())
        pe_out += b
    out += pe_out.to(out.dtype)  # in the output's dtype: a mixed in-place add makes and copies a temporary
    return out.split([p.out_features for p, _ in projections], dim=-1)


class InferenceTwoWayTransformer(nn.Module):
    """Marker base for the swapped-in class; see :func:`use_inference_two_way_transformer`."""


def _make_class(base: type) -> type:
    class _Inference(base, InferenceTwoWayTransformer):
        """TwoWayTransformer with the image tokens projected once per block (CPU inference)."""

        def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                    point_embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            if self.training or image_embedding.device.type != "cpu":
                return super().forward(image_embedding, image_pe, point_embedding)
            keys = image_embedding.flatten(2).permute(0, 2, 1)  # (B, N, C)
            pe = image_pe.flatten(2).permute(0, 2, 1)  # (1, N, C)
            queries = point_embedding
            for layer in self.layers:
                queries, keys = self._block(layer, queries, keys, point_embedding, pe)
            final = self.final_attn_token_to_image
            k, v = image_projections(keys, pe, ((final.k_proj, True), (final.v_proj, False)), final)
            attn_out = attend(final, final.q_proj(queries + point_embedding), k, v)
            return self.norm_final_attn(queries + attn_out), keys

        @staticmethod
        def _block(layer: nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                   key_pe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            """``TwoWayAttentionBlock.forward`` with the image tokens projected once."""
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            k, v, q_image = image_projections(keys, key_pe, ((t2i.k_proj, True), (t2i.v_proj, False),
                                                             (i2t.q_proj, True)), layer)
            queries = layer.norm2(queries + attend(t2i, t2i.q_proj(queries + query_pe), k, v))
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + query_pe
            keys = layer.norm4(keys + attend(i2t, q_image, i2t.k_proj(q), i2t.v_proj(queries)))
            return queries, keys

    return _Inference


def use_inference_two_way_transformer(module: nn.Module) -> int:
    """Swap every ``segment_anything`` ``TwoWayTransformer`` inside ``module`` (eval mode) to its
    inference subclass, in place (:func:`tags.inference.surgery.swap_to_subclass`). Returns how
    many were swapped; already swapped ones are left as they are."""
    return swap_to_subclass(module, "TwoWayTransformer", InferenceTwoWayTransformer, _make_class)
