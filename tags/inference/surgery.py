"""In-place network surgery for inference: BatchNorm folding, channels-last weights and
swapping upstream blocks for inference-only subclasses (used by :mod:`tags.inference.optimize`), and
tensors derived from parameters kept for inference kernels (:func:`kept_derived`)."""

from __future__ import annotations

from typing import Callable, Dict, Hashable, Sequence, Tuple

import torch
from torch import nn


def fuse_conv_bn(module: nn.Module) -> int:
    """Fold every TinyViT ``Conv2d_BN`` (convolution + BatchNorm) inside ``module`` into one
    convolution, with TinyViT's own ``Conv2d_BN.fuse()``. For inference with frozen BatchNorm
    statistics only (the fused module has different parameter names and cannot be trained).
    Outputs equal the unfused ones to float32 rounding. Returns how many were folded.
    """
    folded = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Conv2d_BN" and hasattr(child, "fuse"):
                if child.training:
                    raise RuntimeError("fuse_conv_bn needs modules in eval mode")
                setattr(parent, name, child.fuse())
                folded += 1
    return folded


def channels_last_convs(module: nn.Module, *, frozen_only: bool = False) -> int:
    """Store the weights of every 2D convolution inside ``module`` channels-last (NHWC), in place.

    oneDNN (CPU) and cuDNN run NHWC convolutions without converting the layout on every call,
    and the activations that leave such a convolution stay NHWC for the next one. Same values,
    different memory layout. ``frozen_only``: only convolutions without a trainable parameter
    (for training: the weights a checkpoint saves keep their layout). Returns how many
    convolutions were converted.
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)
             and not (frozen_only and any(p.requires_grad for p in m.parameters()))]
    for conv in convs:
        conv.to(memory_format=torch.channels_last)
    return len(convs)


_SUBCLASSES: Dict[Tuple[Callable, type], type] = {}


def swap_to_subclass(module: nn.Module, base_name: str, marker: type, make_subclass: Callable[[type], type],
                     accept: Callable[[nn.Module], bool] = lambda m: True) -> int:
    """Turn every submodule of ``module`` whose class is named ``base_name`` (and that
    ``accept`` takes) into an instance of ``make_subclass(its class)``, in place: the same
    parameters, buffers, hooks and children, another ``forward``. For inference-only forwards
    of upstream blocks (:mod:`tags.inference.window_attention`, :mod:`tags.inference.mbconv`); the subclass
    derives from ``marker`` too, so swapped modules are recognised and left alone, and is
    named ``Inference<base>``. Modules must be in eval mode. Returns how many were swapped."""
    swapped = 0
    for m in module.modules():
        base = type(m)
        if base.__name__ != base_name or isinstance(m, marker) or not accept(m):
            continue
        if m.training:
            raise RuntimeError(f"swapping {base_name} for inference needs modules in eval mode")
        key = (make_subclass, base)
        if key not in _SUBCLASSES:
            sub = make_subclass(base)
            sub.__name__ = sub.__qualname__ = f"Inference{base.__name__}"
            _SUBCLASSES[key] = sub
        m.__class__ = _SUBCLASSES[key]
        swapped += 1
    return swapped


def kept_derived(owner: nn.Module, slot: str, sources: Sequence[torch.Tensor], make: Callable[[], object],
                 extra: Hashable = None) -> object:
    """``make()`` (tensors derived from ``sources``, e.g. weights cast or concatenated for an
    inference kernel), made once and kept on ``owner`` under ``slot``; made again when a source
    tensor is replaced or changed in place, or ``extra`` differs. Runs ``make`` without
    gradients."""
    key = (tuple((t.data_ptr(), t._version) for t in sources), extra)
    kept = owner.__dict__.get(slot)
    if kept is None or kept[0] != key:
        with torch.no_grad():
            kept = (key, make())
        owner.__dict__[slot] = kept
    return kept[1]
