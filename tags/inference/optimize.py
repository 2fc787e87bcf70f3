"""A trained TAGS network made ready for inference, and the same network at another input size.

:func:`prepare_for_inference` is the one place where a network is rewritten for inference;
:func:`resized` builds the same weights at another encoder input size and prepares it the same
way. Both give outputs equal to the trained network's to float rounding.
"""

from __future__ import annotations

from typing import Sequence

from ..backbones import RESIZABLE_BLOCK_KINDS, input_hw
from ..network import TagsNet, build_tags
from ..position import FramedPositionEmbedding
from .mbconv import use_fused_mbconv
from .surgery import channels_last_convs, fuse_conv_bn
from .two_way_transformer import use_inference_two_way_transformer
from .upscaling import use_fused_upscaling
from .volume_head import use_channels_last_head
from .window_attention import use_inference_attention

PREPARED = "prepared_for_inference"
"""Attribute :func:`prepare_for_inference` sets on a network it has rewritten."""


def prepare_for_inference(net: TagsNet) -> TagsNet:
    """Rewrite ``net`` in place for inference and return it.

    Eval mode; frozen BatchNorm layers folded into their convolutions
    (:func:`tags.inference.surgery.fuse_conv_bn`); channels-last 2D convolutions; the head's
    first convolution padded to 8 input channels (:meth:`tags.head.VolumeHead.pad_input_channels`).
    Then the blocks with an inference forward swapped to it:
    - TinyViT blocks that skip padded window queries
      (:func:`tags.inference.window_attention.use_inference_attention`);
    - TinyViT's MBConv and PatchMerging blocks with fused convolutions for the CPU, fp32 or bf16
      autocast (:func:`tags.inference.mbconv.use_fused_mbconv`);
    - the mask decoder's last transposed convolution with its GELU inside
      (:func:`tags.inference.upscaling.use_fused_upscaling`);
    - the decoder's two-way transformer with the image tokens projected once per block and the
      softmax of few keys along the long axis
      (:func:`tags.inference.two_way_transformer.use_inference_two_way_transformer`);
    - the 3D head channels-last (:func:`tags.inference.volume_head.use_channels_last_head`).
    Do not train it or save its state afterwards; build or load another one for that.
    """
    if getattr(net, PREPARED, False):
        return net
    net.eval()
    fuse_conv_bn(net)
    channels_last_convs(net)
    net.head.pad_input_channels()
    _use_inference_forwards(net)
    setattr(net, PREPARED, True)
    return net


def _use_inference_forwards(net: TagsNet) -> None:
    """Swap the blocks that have an inference forward to it (BatchNorm already folded)."""
    use_inference_attention(net)
    use_fused_mbconv(net)
    use_fused_upscaling(net.mask_decoder.output_upscaling)
    use_inference_two_way_transformer(net.mask_decoder)
    use_channels_last_head(net.head)


def resized(net: TagsNet, img_size: int | Sequence[int], *, trained_frame: bool = True) -> TagsNet:
    """``net`` (from :func:`prepare_for_inference`) with its encoder input set to ``img_size``
    (a side S, or (H, W)), prepared for inference in the same way.

    The returned network shares every parameter and buffer tensor with ``net`` (no copy of the
    weights): only the size-dependent structure is rebuilt (TinyViT's stage resolutions, the
    prompt encoder's embedding and mask sizes).

    With ``trained_frame``, an axis shorter than the side ``net`` was trained at places the
    window at the centre of the trained window along that axis
    (:class:`tags.position.FramedPositionEmbedding`): positions encode as they would in a
    trained-size window padded around it. A longer axis, or no ``trained_frame``, normalises
    positions by the new length as SAM does (for larger sides that measured mixed against
    extending the trained frame beyond [0, 1], so SAM's behaviour is kept; docs/performance.md).
    A rectangular (H, W) input treats each axis so, as a square one of that side would.
    """
    size = input_hw(img_size)
    if size == net.input_size:
        return net
    if net.block_kind not in RESIZABLE_BLOCK_KINDS:
        raise ValueError(f"the {net.config.backbone} encoder cannot change its input size "
                         f"(absolute position embedding for {net.img_size}x{net.img_size})")
    if not getattr(net, PREPARED, False):
        raise ValueError("resized() takes a network from prepare_for_inference()")
    other = build_tags(net.config, img_size=size, pretrained=False).eval()
    frame = other.trained_img_size = net.trained_img_size
    if trained_frame and min(size) < frame:
        pe = other.prompt_encoder
        pe.pe_layer = FramedPositionEmbedding(num_pos_feats=pe.embed_dim // 2, frame=frame, side=size)
    # The same structure as net's before its weights are shared (folded BatchNorm, padded head).
    fuse_conv_bn(other)
    other.head.pad_input_channels(net.head.net[0].in_channels)
    other.load_state_dict(net.state_dict(), strict=True, assign=True)
    other.backbone_sha256 = net.backbone_sha256
    # eval() again: TinyViT caches its attention biases per window on eval, from the (now shared)
    # bias parameters.
    other = other.to(next(net.parameters()).device).eval()
    _use_inference_forwards(other)
    setattr(other, PREPARED, True)
    return other
