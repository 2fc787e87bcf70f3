"""Small builders shared by tests (no fixtures hidden here)."""

from __future__ import annotations

import torch

from tags.config import AdapterConfig, ModelConfig
from tags.network import build_tags
from tags.targets import organ_target, tumor_target


def small_config(**kw) -> ModelConfig:
    """A LiteMedSAM config with a small window, liver + liver tumor targets."""
    base = dict(
        adapter=AdapterConfig(slab_size=4),
        roi_size=(8, 48, 48),
        organ_roi_size=(8, 48, 48),
        targets=(organ_target("liver", 1), tumor_target("liver", 2)),
    )
    base.update(kw)
    return ModelConfig(**base)


def perturbed_net(config: ModelConfig, seed: int = 0):
    """A TAGS net whose trainable tensors are non-zero (as after training)."""
    net = build_tags(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return net.eval()


def random_text(config: ModelConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {t.name: torch.nn.functional.normalize(torch.randn(config.text_dim, generator=g), dim=0) for t in config.targets}
