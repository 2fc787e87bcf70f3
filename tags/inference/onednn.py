"""oneDNN's fused convolutions for CPU inference: a convolution with its activation or residual
add inside (post-ops).

``torch.ops.mkldnn._convolution_pointwise`` is the kernel torch.compile's CPU backend emits for
these patterns; calling it directly saves a pass over memory per fused activation or add without
compiling. It applies only to CPU tensors without gradients, in a torch built with oneDNN
(:func:`fused_dtype`), in one of two precisions:

- fp32 without autocast: the modules' parameters are used as they are (no copies), so the
  upstream forward and the fused one share them;
- bf16 under CPU autocast to bf16, on a CPU where oneDNN runs bf16: the input is cast to bf16 and
  each module's weights are cast once and kept beside it (:func:`params`; cast again if the
  parameters change), where autocast casts every weight on every call. The activation runs on
  the fp32 accumulator before the result is rounded to bf16 (upstream rounds the convolution's
  output, then applies the activation to the rounded value).

Every caller keeps the unfused forward for everything else (fp16, CUDA, training).

``torch.utils.flop_counter`` knows no formula for these kernels and counts them as zero;
:func:`flop_formulas` gives it theirs (``FlopCounterMode(custom_mapping=flop_formulas())``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .surgery import kept_derived


def fused_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The precision the fused kernels run in for input ``x``, or None where they do not apply:
    float32 for an fp32 CPU tensor without autocast; bfloat16 under CPU autocast to bf16 (``x``
    fp32 or bf16) when oneDNN runs bf16 on this CPU; None with gradients on, on another device,
    for another dtype, or in a torch without oneDNN."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or not torch.backends.mkldnn.is_available():
        return None
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32 if x.dtype == torch.float32 else None
    if (torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return torch.bfloat16
    return None


def applies(x: torch.Tensor) -> bool:
    """True when the fused kernels may run on input ``x`` (:func:`fused_dtype`)."""
    return fused_dtype(x) is not None


def params(module: nn.Module, dtype: torch.dtype) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``module``'s weight and bias in ``dtype``: the parameters themselves in their own dtype,
    else copies made once and kept on the module (made again when a parameter is replaced or
    changed in place; :func:`tags.inference.surgery.kept_derived`)."""
    w, b = module.weight, module.bias
    if w.dtype == dtype:
        return w, b
    return kept_derived(module, "_onednn_params", [t for t in (w, b) if t is not None],
                        lambda: (w.to(dtype), None if b is None else b.to(dtype)), extra=dtype)


def exact_gelu(act: nn.Module) -> bool:
    """``act`` is ``nn.GELU`` with the exact (erf) formula, the one oneDNN's "gelu" post-op uses."""
    return type(act) is nn.GELU and act.approximate == "none"


def conv(conv: nn.Conv2d, x: torch.Tensor, attr: str = "none") -> torch.Tensor:
    """``conv(x)`` followed by the post-op ``attr`` ("gelu", "relu", "none"), one kernel, in
    :func:`fused_dtype` of ``x`` (which must not be None)."""
    dtype = fused_dtype(x)
    w, b = params(conv, dtype)
    return torch.ops.mkldnn._convolution_pointwise(
        x.to(dtype), w, b, conv.padding, conv.stride, conv.dilation, conv.groups, attr, [], "none")


def conv_add(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``conv(x) + other``, one kernel, in :func:`fused_dtype` of ``x``."""
    dtype = fused_dtype(x)
    w, b = params(conv, dtype)
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x.to(dtype), other.to(dtype), w, b, conv.padding, conv.stride, conv.dilation, conv.groups,
        "add", 1.0, None, [], None)


def conv_transpose(conv: nn.ConvTranspose2d, x: torch.Tensor, attr: str = "none") -> torch.Tensor:
    """``conv(x)`` of a transposed convolution followed by the post-op ``attr``, one kernel, in
    :func:`fused_dtype` of ``x``."""
    dtype = fused_dtype(x)
    w, b = params(conv, dtype)
    return torch.ops.mkldnn._convolution_transpose_pointwise(
        x.to(dtype), w, b, conv.padding, conv.output_padding, conv.stride, conv.dilation, conv.groups,
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
