"""TAGS network: 3D-adapted SAM encoder + text and anatomy prompts + fusion + SAM decoder + 3D head."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, build_backbone, square_side
from .config import ModelConfig
from .adapters import SliceAdapter3D
from .encoder import AdaptedImageEncoder
from .fusion import PromptFusion, TextConditioning
from .alignment import TextAlignment
from .head import VolumeHead
from .prompts import SlicePrompts, text_only_prompts

BASE_PARTS = ("image_encoder.encoder", "prompt_encoder", "mask_decoder")
"""Prefixes (in this network's state dict) of the modules that come from the base checkpoint."""


class TagsNet(nn.Module):
    """TAGS for one model window.

    Forward inputs (model grid, axis order (B, C, D, H, W) = batch, channel, slice, row, column):
        image: (B, 1, D, H, W) intensities already normalised to [0, 1].
        text: (B, E) sentence embedding of the target.
        prompts: anatomy prompts for the B*D slices (slice-major per volume) or None (text only).
        organ: (B, 1, D, H, W) organ mask fed to the 3D head (None: zeros).
        phrases: (B, 2, E) healthy / tumor phrase embeddings (training with text alignment).
        adapt: run the encoder's 3D adapters (False: the pretrained encoder's features; callers pass
            ``config.adapter.runs_for(target.kind)``).
    Output: (B, 1, D, H, W) logits; with ``phrases`` (and ``config.text_alignment``) also the
    alignment logits (B, 2, D, e_h, e_w) of the adapted image features
    (:class:`tags.alignment.TextAlignment`).
    """

    def __init__(self, backbone: Backbone, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_size: Tuple[int, int] = backbone.input_size  # (H, W) of the encoder input
        # The frame of positions: the side this network was built at (tags.inference.optimize.resized sets the trained one).
        self.trained_img_size = max(backbone.input_size)
        self.block_kind = backbone.block_kind
        self.backbone_sha256 = backbone.checkpoint_sha256
        self.image_encoder = AdaptedImageEncoder(backbone, config.adapter)
        self.prompt_encoder = backbone.prompt_encoder
        self.mask_decoder = backbone.mask_decoder
        dim = self.prompt_encoder.embed_dim
        self.text = TextConditioning(text_dim=config.text_dim, dim=dim)
        self.fusion = PromptFusion(dim=dim, num_heads=config.fusion_heads)
        self.head = VolumeHead(channels=config.head_channels)
        self.alignment = TextAlignment(dim=dim, text_dim=config.text_dim) if config.text_alignment else None

        # The adapters are children of the encoder's blocks (so that base parameter names stay the
        # checkpoint's) but not base: they train, and their tensors are part of the delta.
        adapters = {id(p) for a in self.image_encoder.adapters for p in a.parameters()}
        base = self.base_modules()
        for name, module in base.items():
            trainable = name == "mask_decoder" and config.train_mask_decoder
            for p in module.parameters():
                p.requires_grad_(trainable or id(p) in adapters)
        self.adapter_keys = frozenset(
            f"image_encoder.encoder.{name}.{k}" for name, m in self.image_encoder.encoder.named_modules()
            if isinstance(m, SliceAdapter3D) for k in m.state_dict()
        )
        self.base_keys = frozenset(
            f"{name}.{k}" for name, module in base.items() for k in module.state_dict().keys()
        ) - self.adapter_keys

    @property
    def img_size(self) -> int:
        """Side S of the square encoder input (every trained network; a rectangular inference
        network from :func:`tags.inference.optimize.resized` has only ``input_size``)."""
        return square_side(self.input_size, "this network's encoder")

    # -- structure ----------------------------------------------------------------------------
    def base_modules(self) -> Dict[str, nn.Module]:
        return {
            "image_encoder.encoder": self.image_encoder.encoder,
            "prompt_encoder": self.prompt_encoder,
            "mask_decoder": self.mask_decoder,
        }

    def train(self, mode: bool = True) -> "TagsNet":
        """Frozen pretrained modules always stay in eval mode (BatchNorm statistics unchanged)."""
        super().train(mode)
        for name, module in self.base_modules().items():
            if not (name == "mask_decoder" and self.config.train_mask_decoder):
                module.eval()
        return self

    def delta_state_dict(self) -> Dict[str, torch.Tensor]:
        """Every tensor that is not an unchanged base-checkpoint tensor."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {
            k: v for k, v in self.state_dict().items() if k not in self.base_keys or k in trainable
        }

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        prompts: Optional[SlicePrompts] = None,
        organ: Optional[torch.Tensor] = None,
        phrases: Optional[torch.Tensor] = None,
        adapt: bool = True,
    ):
        b, _, d, h, w = image.shape
        n = b * d
        x = F.interpolate(image.reshape(b, d, h, w), size=self.input_size, mode="bilinear", align_corners=False)
        k = self.image_encoder.slab_size
        pad = (-d) % k
        x = x[:, None]
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad), mode="replicate")
        emb = self.image_encoder(x, adapt)[:, :d]  # (B, D, C, e, e)
        emb = emb.reshape(n, *emb.shape[2:])
        aligned = None
        if phrases is not None and self.alignment is not None:
            aligned = self.alignment(emb, per_slice_of(phrases, d))  # (N, 2, e_h, e_w)
            aligned = aligned.reshape(b, d, 2, *aligned.shape[-2:]).transpose(1, 2)

        token, scale, shift = self.text(text)
        per_slice = lambda t: per_slice_of(t, d)  # noqa: E731
        emb = torch.addcmul(per_slice(shift), emb, 1.0 + per_slice(scale))  # emb * (1 + scale) + shift, one pass

        if prompts is None:
            prompts = text_only_prompts(n).to(image.device)
        pe = self.prompt_encoder
        box_tokens = pe._embed_boxes(prompts.boxes)  # (N, 2, C)
        point_tokens = pe._embed_points(prompts.points, prompts.point_labels, pad=False)  # (N, P, C)
        if prompts.dense is not None:
            dense = pe._embed_masks(prompts.dense.to(emb.dtype))
        else:
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *emb.shape[-2:])
        sparse = self.fusion(
            per_slice(token),
            box_tokens,
            prompts.box_valid,
            point_tokens,
            prompts.point_labels >= 0,
            pe.not_a_point_embed.weight[0],
        )

        logits = self.decode_slices(emb, sparse, dense)  # (N, 1, 4e_h, 4e_w)
        logits = logits.reshape(b, d, *logits.shape[-2:])
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[:, None]
        if organ is None:
            organ = torch.zeros_like(image)
        out = self.head(logits, image, organ.to(image.dtype))
        return out if aligned is None else (out, aligned)

    def decode_slices(self, emb: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """SAM's two-way mask decoder on N slices, each with its own embedding and prompts, in one
        batch; only the first mask output (the one TAGS trains and uses).

        emb, dense: (N, C, e_h, e_w); sparse: (N, T, C). Returns the first mask's logits
        (N, 1, 4e_h, 4e_w).
        The steps of ``MaskDecoder.predict_masks`` with the decoder's own modules (transformer,
        output upscaling, first hypernetwork MLP), minus what TAGS does not need:
        ``predict_masks`` pairs one image with a batch of prompts, so it copies the image
        embedding and the position encoding once per prompt, and it computes all four mask
        outputs and the IoU head. Here each slice's embedding goes in as it is, the position
        encoding broadcasts over the slices, and the (N, C, e, e) inputs are channels-last so the
        transformer's (N, e*e, C) token view of them is contiguous; the output upscaling's
        LayerNorm2d runs as one ``layer_norm`` over those channels-last tokens
        (:func:`_layer_norm_2d`) instead of its six elementwise passes. Equal to ``predict_masks``
        slice by slice to float rounding (tests/test_backbone_encoder.py).
        """
        md = self.mask_decoder
        n, c, h, w = emb.shape
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = (emb + dense).contiguous(memory_format=torch.channels_last)
        pos = self.prompt_encoder.get_dense_pe().contiguous(memory_format=torch.channels_last)  # (1, C, e_h, e_w)
        hs, src = md.transformer(src, pos, tokens)
        upscaled = src.transpose(1, 2).reshape(n, c, h, w)  # channels-last (N, C, e_h, e_w)
        for layer in md.output_upscaling:  # -> (N, C', 4e_h, 4e_w)
            is_norm = type(layer).__name__ == "LayerNorm2d"
            upscaled = _layer_norm_2d(layer, upscaled) if is_norm else layer(upscaled)
        hyper = md.output_hypernetworks_mlps[0](hs[:, 1])  # the first mask token: (N, C')
        return torch.einsum("nc,nchw->nhw", hyper, upscaled)[:, None]


def per_slice_of(t: torch.Tensor, d: int) -> torch.Tensor:
    """(B, ...) -> (B*D, ...), each volume's row repeated for its D slices (slice-major)."""
    return t.repeat_interleave(d, dim=0)


def _layer_norm_2d(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``LayerNorm2d`` (normalise each pixel over channels, biased variance,
    eps inside the root) as one ``F.layer_norm`` on the (N, H, W, C) view of ``x``
    (N, C, H, W): the same values to float rounding, contiguous without a copy when ``x`` is
    channels-last, and a channels-last result."""
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias, norm.eps)
    return y.permute(0, 3, 1, 2)


def build_tags(config: ModelConfig, **backbone_kwargs) -> TagsNet:
    """Build a TAGS network on the registered backbone named in ``config``."""
    if config.encoder_size is not None:
        backbone_kwargs.setdefault("img_size", config.encoder_size)
    return TagsNet(build_backbone(config.backbone, **backbone_kwargs), config)
