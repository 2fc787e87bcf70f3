"""SAM's mask-decoder output upscaling for CPU inference: each transposed convolution that a
GELU follows runs with the GELU inside (a oneDNN post-op).

``MaskDecoder.output_upscaling`` is ConvTranspose2d -> LayerNorm2d -> GELU -> ConvTranspose2d ->
GELU. Its last GELU runs on the decoder's widest activations (N x 32 x 4e x 4e: 32 x 32 x 128 x
128 floats, 67 MB, per demo window), one more pass over memory. :func:`use_fused_upscaling`
gives that convolution a forward with the GELU inside (``torch.ops.mkldnn.
_convolution_transpose_pointwise``, the kernel torch.compile's CPU backend emits for the
pattern) and puts an ``nn.Identity`` where the GELU was. A convolution followed by something else
(the first one, by its LayerNorm2d) is left alone. On a 2-core Xeon held to AVX2, fp32: 59-64 ->
41-43 ms for the 32 x 64 x 64 x 64 input of a demo window.

The fused kernel runs for CPU inference in fp32 without autocast or in bf16 under CPU autocast
(:func:`tags.inference.onednn.fused_dtype`); otherwise the swapped convolution runs its upstream
forward and then the GELU, so the module computes the same as the pair it replaces. Equal to
upstream to float rounding in fp32, to bf16 rounding under autocast
(``tests/test_inference_blocks.py``). The state dict keeps its keys
(neither a GELU nor an Identity has parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from .surgery import swap_to_subclass


class InferenceConvTransposeGELU(nn.Module):
    """Marker base for the swapped-in class; see :func:`use_fused_upscaling`."""


def _make_class(base: type) -> type:
    class _Inference(base, InferenceConvTransposeGELU):
        """ConvTranspose2d followed by an exact GELU, one oneDNN kernel for CPU inference."""

        def forward(self, x):  # x (N, C_in, H, W) -> (N, C_out, H', W')
            if self.training or not onednn.applies(x):
                return F.gelu(super().forward(x))
            return onednn.conv_transpose(self, x, "gelu")

    return _Inference


def use_fused_upscaling(upscaling: nn.Sequential) -> int:
    """In ``upscaling`` (a ``MaskDecoder.output_upscaling`` in eval mode), swap every plain
    ``ConvTranspose2d`` that an exact GELU follows to a subclass with the GELU inside, in place,
    and replace that GELU by ``nn.Identity``. Returns how many were swapped; none when torch has
    no oneDNN or they are swapped already."""
    if not torch.backends.mkldnn.is_available():
        return 0
    swapped = 0
    for i in range(len(upscaling) - 1):
        conv, act = upscaling[i], upscaling[i + 1]
        if type(conv) is nn.ConvTranspose2d and onednn.exact_gelu(act):
            swapped += swap_to_subclass(conv, "ConvTranspose2d", InferenceConvTransposeGELU, _make_class)
            upscaling[i + 1] = nn.Identity()
    return swapped
