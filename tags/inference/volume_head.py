"""The 3D head (:class:`tags.head.VolumeHead`) for CPU inference in channels-last layout.

The head runs two 3x3x3 convolutions of 16 channels over the whole window (32 x 128 x 128 voxels
in the demo model), each followed by an instance norm. oneDNN runs a ``Conv3d`` on an NCDHW
tensor by converting it to its blocked layout and back on every call; on an NDHWC
(``torch.channels_last_3d``) tensor it runs directly. Measured on a 2-core Xeon held to AVX2, fp32:
the 16-channel convolution 75 -> 42 ms, the 8-channel one 41 -> 24 ms, the last 1x1 one 12 -> 1 ms.
``nn.InstanceNorm3d`` does not keep that layout (it reshapes to one batch of B x C channels, which
copies a channels-last tensor twice); a single window's instance norm is the batch norm of that
window with batch statistics, which torch's CPU kernel computes on channels-last tensors as they
are. :class:`InferenceVolumeHead` therefore assembles its input channels-last, runs the same
modules on it and normalises with ``F.batch_norm(training=True)``: the same values to float
rounding (``tests/test_inference_blocks.py``).

Used for CPU inference without gradients, one window at a time (the predictor's sliding window
runs one), in fp32 or under bf16 autocast where oneDNN runs bf16
(:func:`tags.inference.onednn.applies`); the convolutions then run in bf16 as upstream's do.
Otherwise (fp16, CUDA, training, several windows) the upstream forward runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from .surgery import swap_to_subclass


class InferenceVolumeHead(nn.Module):
    """Marker base for the swapped-in class; see :func:`use_channels_last_head`."""


def _instance_norm(x: torch.Tensor, norm: nn.InstanceNorm3d) -> torch.Tensor:
    """``norm(x)`` for one sample (1, C, D, H, W), keeping ``x``'s memory layout."""
    return F.batch_norm(x, None, None, norm.weight, norm.bias, training=True, momentum=0.0, eps=norm.eps)


def _supported(head: nn.Module) -> bool:
    layers = list(head.net)
    kinds = [nn.Conv3d, nn.InstanceNorm3d, nn.LeakyReLU, nn.Conv3d, nn.InstanceNorm3d, nn.LeakyReLU, nn.Conv3d]
    return (len(layers) == len(kinds) and all(type(m) is k for m, k in zip(layers, kinds))
            and all(m.affine and not m.track_running_stats for m in (layers[1], layers[4])))


def _make_class(base: type) -> type:
    class _Inference(base, InferenceVolumeHead):
        """VolumeHead in channels-last layout (CPU inference, one window)."""

        def forward(self, slice_logits: torch.Tensor, image: torch.Tensor, organ: torch.Tensor) -> torch.Tensor:
            """All (B, 1, D, H, W) -> logits (B, 1, D, H, W)."""
            if self.training or not onednn.applies(slice_logits) or slice_logits.shape[0] != 1:
                return super().forward(slice_logits, image, organ)
            conv0, norm0, act0, conv1, norm1, act1, conv2 = self.net
            b, _, d, h, w = slice_logits.shape
            dtype = torch.promote_types(torch.promote_types(slice_logits.dtype, image.dtype), organ.dtype)
            x = slice_logits.new_zeros((b, d, h, w, conv0.in_channels), dtype=dtype)  # extra channels: zeros
            for c, t in enumerate((slice_logits, image, organ)):
                x[..., c] = t[:, 0]
            x = x.permute(0, 4, 1, 2, 3)  # (B, C, D, H, W), channels-last in memory
            y = act0(_instance_norm(conv0(x), norm0))
            y = act1(_instance_norm(conv1(y), norm1))
            return slice_logits + conv2(y)

    return _Inference


def use_channels_last_head(module: nn.Module) -> int:
    """Swap every :class:`tags.head.VolumeHead` inside ``module`` (eval mode) of the standard
    structure to its channels-last inference subclass, in place. Returns how many were swapped."""
    return swap_to_subclass(module, "VolumeHead", InferenceVolumeHead, _make_class, accept=_supported)
