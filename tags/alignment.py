"""TAGS' text alignment: adapted image features scored against "healthy organ" and "organ with
tumor" phrase groups (the reference code's auxiliary loss, written anew).

Phrases are embedded once with the model folder's text encoder (:func:`phrase_embeddings`), so
neither training steps nor inference need the text encoder. The object word is the organ's name
(the reference uses its dataset key).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEALTHY_STATES = ("{}", "healthy {}", "normal {}", "{} without lesion", "{} without tumor", "flawless {}")
TUMOR_STATES = ("{} with tumor", "{} with lesion", "{} with a mass", "diseased {}", "abnormal {}", "{} with cancer")
TEMPLATES = (
    "a computerized tomography of a {}.",
    "a CT scan of a {}.",
    "an axial CT slice of a {}.",
    "a 3D image of a {}.",
    "a medical image of a {}.",
)


def phrase_groups(organ: str) -> tuple[list[str], list[str]]:
    """(healthy sentences, tumor sentences) for ``organ``: every state in every template."""
    word = organ.replace("_", " ")
    fill = lambda states: [t.format(s.format(word)) for s in states for t in TEMPLATES]  # noqa: E731
    return fill(HEALTHY_STATES), fill(TUMOR_STATES)


def phrase_embeddings(encoder, organ: str) -> torch.Tensor:
    """(2, E): the mean L2-normalised embedding of the healthy and of the tumor group, each
    normalised again (the reference averages its phrase groups the same way)."""
    groups = [encoder.embed(g).mean(0) for g in phrase_groups(organ)]
    return F.normalize(torch.stack(groups), dim=-1)


class TextAlignment(nn.Module):
    """Per-pixel image features -> logits of (healthy, tumor) against the phrase embeddings.

    A projection (Linear C -> E without bias, then LeakyReLU, as the reference's alignment
    adapters), L2 normalisation and ``temperature`` x cosine similarity with the two phrase
    embeddings.
    """

    def __init__(self, *, dim: int, text_dim: int, temperature: float = 100.0) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, text_dim, bias=False)
        self.temperature = temperature

    def forward(self, features: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
        """features (N, C, e_h, e_w), phrases (N, 2, E) -> logits (N, 2, e_h, e_w)."""
        x = F.leaky_relu(self.proj(features.permute(0, 2, 3, 1)))  # (N, e_h, e_w, E)
        x = F.normalize(x, dim=-1)
        return self.temperature * torch.einsum("nhwe,nke->nkhw", x, F.normalize(phrases, dim=-1))


def alignment_loss(logits: torch.Tensor, label: torch.Tensor, *, min_fraction: float = 0.3) -> torch.Tensor:
    """Focal + soft Dice of the tumor class, per feature pixel.

    logits: (B, 2, D, e_h, e_w); label: (B, 1, D, H, W) 0/1 on the window, reduced to the feature
    grid by area (a feature pixel is tumor when at least ``min_fraction`` of it is).
    """
    from monai.losses.dice import DiceLoss
    from monai.losses.focal_loss import FocalLoss

    target = F.interpolate(label.float(), size=logits.shape[2:], mode="area") >= min_fraction
    target = target.float()
    focal = FocalLoss(gamma=2.0, use_softmax=True, to_onehot_y=True)(logits, target)
    dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=False)(logits, target)
    return 0.5 * (focal + dice)
