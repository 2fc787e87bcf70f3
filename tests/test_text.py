"""Text encoders: the real MiniLM package model, and the CLIP path from a local folder."""

from __future__ import annotations

import json

import pytest
import torch

from tags.targets import organ_target, tumor_target
from tags.text import ClipTextEncoder, build_text_encoder, embed_targets


def test_minilm_real_embeddings_are_semantic():
    enc = build_text_encoder("minilm")
    assert enc.dim == 384
    e = embed_targets(
        enc,
        {
            "liver_tumor": tumor_target("liver").sentence,
            "kidney_tumor": tumor_target("kidney").sentence,
            "liver": organ_target("liver").sentence,
            "other": "a recipe for apple pie",
        },
    )
    assert all(v.shape == (384,) for v in e.values())
    sim = lambda a, b: float(e[a] @ e[b])  # noqa: E731
    print(f"cos(liver tumor, kidney tumor)={sim('liver_tumor', 'kidney_tumor'):.3f} "
          f"cos(liver tumor, apple pie)={sim('liver_tumor', 'other'):.3f}")
    # A real sentence encoder: related medical sentences are closer than unrelated text.
    assert sim("liver_tumor", "kidney_tumor") > sim("liver_tumor", "other") + 0.2
    assert sim("liver_tumor", "liver") > sim("liver_tumor", "other") + 0.2


def _tiny_clip_folder(path):
    """A randomly initialised CLIP text tower + BPE tokenizer saved as a local folder."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(str(path))
    cfg = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=24,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    torch.manual_seed(0)
    CLIPTextModelWithProjection(cfg).save_pretrained(str(path))
    return path


def test_clip_from_local_folder(tmp_path):
    folder = _tiny_clip_folder(tmp_path)
    enc = build_text_encoder("clip", str(folder))
    assert isinstance(enc, ClipTextEncoder) and enc.dim == 24
    v = enc.embed(["a computerized tomography of a liver tumor", "a computerized tomography of a kidney"])
    assert v.shape == (2, 24)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(v[0], v[1])


def test_clip_needs_a_folder(tmp_path):
    with pytest.raises(ValueError, match="local model folder"):
        build_text_encoder("clip")
    with pytest.raises(FileNotFoundError, match="not found"):
        ClipTextEncoder(tmp_path / "missing")
    with pytest.raises(KeyError, match="unknown text encoder"):
        build_text_encoder("bert")


def test_cached_encoder_embeds_once_per_model_version(tmp_path):
    """The cache gives the model's own vectors without loading the model again, and a changed
    model file (another version of the weights) is not answered from the cache."""
    from tags.text import CachedTextEncoder

    (tmp_path / "clip").mkdir()
    folder = _tiny_clip_folder(tmp_path / "clip")
    sentences = ["a computerized tomography of a liver tumor", "a computerized tomography of a kidney"]
    direct = build_text_encoder("clip", str(folder)).embed(sentences)
    first = build_text_encoder("clip", str(folder), cache=tmp_path / "cache")
    assert isinstance(first, CachedTextEncoder) and first.dim == 24
    assert torch.allclose(first.embed(sentences), direct)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    again = build_text_encoder("clip", str(folder), cache=tmp_path / "cache")
    assert torch.equal(again.embed(sentences), first.embed(sentences))
    assert again._encoder is None  # answered from the file: the model was never loaded
    assert not torch.equal(again.embed(sentences[:1]), again.embed(sentences[1:]))  # its own key per list

    # other weights in the same folder (a new mtime and content): embedded again, not read back
    from transformers import CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection.from_pretrained(str(folder))
    with torch.no_grad():
        model.text_projection.weight.mul_(-1.0)
    model.save_pretrained(str(folder))
    changed = build_text_encoder("clip", str(folder), cache=tmp_path / "cache").embed(sentences)
    assert torch.allclose(changed, -direct, atol=1e-5)


def test_cached_encoder_recomputes_a_damaged_file(tmp_path):
    enc = build_text_encoder("minilm", cache=tmp_path)
    assert enc.dim == 384 and enc._encoder is None  # the width from config.json alone
    v = enc.embed(["a computerized tomography of a liver"])
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    fresh = build_text_encoder("minilm", cache=tmp_path)
    assert torch.allclose(fresh.embed(["a computerized tomography of a liver"]), v)
    assert fresh._encoder is not None


def test_a_whole_clip_folder_gives_the_text_towers_width(tmp_path):
    """A whole CLIP model's config.json holds the text tower's projection width in its
    text_config; the cached encoder reads it from there."""
    from tags.text import _config_width

    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "clip", "projection_dim": 768, "text_config": {"projection_dim": 512}}))
    assert _config_width("clip", tmp_path) == 512
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_text_model", "projection_dim": 24}))
    assert _config_width("clip", tmp_path) == 24
