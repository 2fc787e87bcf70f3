"""Multi-prompt fusion: text, box and point tokens -> the sparse tokens of SAM's mask decoder."""

from __future__ import annotations

import torch
from torch import nn

TEXT, BOX, POINT = 0, 1, 2


class TextConditioning(nn.Module):
    """CLIP-style sentence embedding -> a prompt token and a channel-wise scale/shift (FiLM).

    The FiLM projection is zero-initialised: an untrained model leaves the image features as
    the pretrained encoder made them.
    """

    def __init__(self, *, text_dim: int, dim: int = 256) -> None:
        super().__init__()
        self.token = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.film = nn.Linear(text_dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """text: (N, E) -> token (N, 1, C), scale (N, C, 1, 1), shift (N, C, 1, 1)."""
        scale, shift = self.film(text).chunk(2, dim=-1)
        return self.token(text)[:, None], scale[..., None, None], shift[..., None, None]


class PromptFusion(nn.Module):
    """Self-attention over [text, box corners, points] with learned type embeddings.

    Absent prompts (no box on a slice, padded points, dropped prompt types) are masked out of
    the attention and leave the fusion as SAM's own "not a point" embedding, which is what the
    pretrained decoder sees for padding.
    """

    def __init__(self, *, dim: int = 256, num_heads: int = 8, depth: int = 1) -> None:
        super().__init__()
        self.type_embed = nn.Embedding(3, dim)
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=num_heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)

    def forward(
        self,
        text_token: torch.Tensor,
        box_tokens: torch.Tensor,
        box_valid: torch.Tensor,
        point_tokens: torch.Tensor,
        point_valid: torch.Tensor,
        pad_token: torch.Tensor,
    ) -> torch.Tensor:
        """Shapes: text (N,1,C), box (N,2,C), box_valid (N,), points (N,P,C), point_valid (N,P),
        pad (C,). Returns (N, 1+2+P, C)."""
        n = text_token.shape[0]
        dev = text_token.device
        types = torch.cat(
            [
                torch.full((1,), TEXT, device=dev),
                torch.full((box_tokens.shape[1],), BOX, device=dev),
                torch.full((point_tokens.shape[1],), POINT, device=dev),
            ]
        )
        tokens = torch.cat([text_token, box_tokens, point_tokens], dim=1) + self.type_embed(types)[None]
        valid = torch.cat(
            [
                torch.ones(n, 1, dtype=torch.bool, device=dev),
                box_valid[:, None].expand(-1, box_tokens.shape[1]),
                point_valid,
            ],
            dim=1,
        )
        fused = self.layers(tokens, src_key_padding_mask=~valid)
        return torch.where(valid[..., None], fused, pad_token.to(fused.dtype))
