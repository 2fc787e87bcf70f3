"""What runs inside one sliding window: a model that maps a batch of windows to logits.

The predictor (:class:`tags.inference.predictor.TagsPredictor`) crops, resamples and tiles; a
:class:`WindowModel` only turns windows into logits. :class:`TagsWindowModel` is the TAGS
network; other networks (the training package's same-budget baseline) plug in the same way.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Protocol, Sequence, Tuple

import torch

from ..backbones import RESIZABLE_BLOCK_KINDS
from ..config import ModelConfig, TargetSpec
from ..network import TagsNet
from ..prompts import SlicePrompts, derive_prompts
from .optimize import prepare_for_inference, resized
from .windows import encoder_input_size

PROMPT_SEED = 0
"""Seed of the anatomy-prompt point sampling at inference (results are reproducible)."""


class WindowModel(Protocol):
    """Maps windows on the model grid to logits.

    Attributes:
        config: the model's configuration (targets, grids, trained window sizes).
        encoder_side: side of the square encoder input the windows were trained at, when the
            model runs windows of other in-plane sizes at the same scale; None: windows keep
            the trained in-plane size.
    """

    config: ModelConfig
    encoder_side: Optional[int]

    def to(self, device: torch.device) -> "WindowModel":
        """Move the model to ``device``; returns itself."""

    def __call__(self, x: torch.Tensor, target: TargetSpec, trained: Sequence[int],
                 grid_spacing: Sequence[float]) -> torch.Tensor:
        """Logits (B, 1, d, h, w) of ``target`` for windows x (B, 1 or 2, d, h, w): image in
        [0, 1] [+ organ mask], in a pass trained at ``trained`` (d, h, w) windows, model-grid
        spacing ``grid_spacing`` (mm)."""


class TagsWindowModel:
    """A TAGS network and its target text embeddings as a :class:`WindowModel`.

    Args:
        net: the network (weights loaded). Taken over for inference and changed in place
            (:func:`tags.inference.optimize.prepare_for_inference`).
        text_embeddings: {target name: (E,) embedding}.
        compile: compile the image encoder with ``torch.compile`` (the encoder is most of the
            time). The first window pays the compilation (about 40 s on a 2-core CPU, a few
            seconds with a warm inductor cache, $TORCHINDUCTOR_CACHE_DIR); CPU needs a C++
            compiler. Each encoder input size other than the trained one compiles on first use.
            Results equal the eager ones within float tolerance; on the 2-core benchmark CPU it
            is no faster than eager (docs/performance.md).
    """

    def __init__(self, net: TagsNet, text_embeddings: Mapping[str, torch.Tensor], *, compile: bool = False) -> None:
        self.net = prepare_for_inference(net)
        self.config: ModelConfig = net.config
        self.text = dict(text_embeddings)
        self.encoder_side = net.img_size if net.block_kind in RESIZABLE_BLOCK_KINDS else None
        self.compiled = compile
        self._sized: Dict[Tuple[int, int], TagsNet] = {}
        if compile:
            self.net.image_encoder.compile()

    def to(self, device: torch.device) -> "TagsWindowModel":
        self.net.to(device)
        self.text = {k: v.to(device) for k, v in self.text.items()}
        self._sized.clear()
        return self

    def net_for(self, window: Sequence[int], trained: Sequence[int]) -> TagsNet:
        """The network for (d, h, w) windows of a pass trained at ``trained``: the loaded one for
        the trained in-plane size, else one with its encoder at the trained scale (built once,
        weights shared)."""
        if tuple(window[1:]) == tuple(trained[1:]):
            return self.net
        size = encoder_input_size(window, trained, self.net.img_size)
        if size == self.net.input_size:
            return self.net
        if size not in self._sized:
            net = resized(self.net, size)
            if self.compiled:
                net.image_encoder.compile()
            self._sized[size] = net
        return self._sized[size]

    def __call__(self, x: torch.Tensor, target: TargetSpec, trained: Sequence[int],
                 grid_spacing: Sequence[float]) -> torch.Tensor:
        net = self.net_for(x.shape[2:], trained)
        b = x.shape[0]
        prompts, organ = None, None
        if x.shape[1] > 1:
            organ = x[:, 1:2]
            prompts = SlicePrompts.cat([
                derive_prompts(organ[i, 0].cpu().numpy() > 0.5, grid_spacing, img_size=net.input_size,
                               mask_size=net.prompt_encoder.mask_input_size, config=self.config.prompts,
                               seed=PROMPT_SEED)
                for i in range(b)
            ]).to(x.device)
        return net(x[:, :1], self.text[target.name].expand(b, -1), prompts, organ,
                   adapt=self.config.adapter.runs_for(target.kind))
