"""oneDNN's fused convolutions for fp32 CPU inference: a convolution with its activation or
residual add inside (post-ops).

``torch.ops.mkldnn._convolution_pointwise`` is the kernel torch.compile's CPU backend emits for
these patterns; calling it directly saves a pass over memory per fused activation or add without
compiling. It applies only to fp32 CPU tensors without gradients or autocast, in a torch built with
oneDNN (:func:`applies`); every caller keeps the unfused forward for everything else. The modules'
parameters are used as they are (no copies), so the upstream forward and the fused one share them.

``torch.utils.flop_counter`` knows no formula for these kernels and counts them as zero;
:func:`flop_formulas` gives it theirs (``FlopCounterMode(custom_mapping=flop_formulas())``).
"""

from __future__ import annotations

import torch
from torch import nn


def applies(x: torch.Tensor) -> bool:
    """True when the fused kernels may run on input ``x``: fp32 on the CPU, gradients off, CPU
    autocast off, torch built with oneDNN."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available())


def exact_gelu(act: nn.Module) -> bool:
    """``act`` is ``nn.GELU`` with the exact (erf) formula, the one oneDNN's "gelu" post-op uses."""
    return type(act) is nn.GELU and act.approximate == "none"


def conv(conv: nn.Conv2d, x: torch.Tensor, attr: str = "none") -> torch.Tensor:
    """``conv(x)`` followed by the post-op ``attr`` ("gelu", "relu", "none"), one kernel."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, attr, [], "none")


def conv_add(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``conv(x) + other``, one kernel."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
        "add", 1.0, None, [], None)


def conv_transpose(conv: nn.ConvTranspose2d, x: torch.Tensor, attr: str = "none") -> torch.Tensor:
    """``conv(x)`` of a transposed convolution followed by the post-op ``attr``, one kernel."""
    return torch.ops.mkldnn._convolution_transpose_pointwise(
        x, conv.weight, conv.bias, conv.padding, conv.output_padding, conv.stride, conv.dilation, conv.groups,
        attr, [], "none")


def _conv_flop(x_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one ``_convolution_pointwise`` call (either overload), as torch counts a
    convolution: the unary overload's weight is its second argument, the binary one's (after
    the tensor it adds) its third; the post-op itself is not counted, as for unfused layers."""
    from torch.utils.flop_counter import conv_flop_count

    binary = args[1] is not None and len(args[1]) == len(x_shape)
    w_shape = args[1] if binary else args[0]
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape))


def _conv_transpose_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one ``_convolution_transpose_pointwise`` call, as torch counts a transposed
    convolution (the post-op not counted)."""
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=True)


def flop_formulas() -> dict:
    """FLOP formulas of the fused kernels, for ``FlopCounterMode(custom_mapping=...)``; empty in a
    torch without oneDNN (where they never run)."""
    if not torch.backends.mkldnn.is_available():
        return {}
    return {torch.ops.mkldnn._convolution_pointwise: _conv_flop,
            torch.ops.mkldnn._convolution_transpose_pointwise: _conv_transpose_flop}
