"""File hashes remembered per file version (tags.hashing), as the backbone loader and the
training cache use them."""

from __future__ import annotations

import json
import os

import pytest

from tags import hashing
from tags.hashing import file_sha256, remembered_sha256


def test_a_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 3000)
    index = tmp_path / "cache" / "index.json"
    calls = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda p: calls.append(p) or real(p))

    first = remembered_sha256([f], index)[str(f)]
    assert first == file_sha256(f) and len(calls) == 1
    assert json.loads(index.read_text())[str(f.resolve())]["sha256"] == first
    assert remembered_sha256([f], index)[str(f)] == first and len(calls) == 1  # the index answered

    f.write_bytes(b"b" * 3000)  # same size, new modification time
    os.utime(f, ns=(1, 1))
    second = remembered_sha256([f], index)[str(f)]
    assert second == file_sha256(f) != first and len(calls) == 2


def test_an_unusable_index_only_costs_a_hash(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    bad = tmp_path / "index.json"
    bad.write_text("not json")
    assert remembered_sha256([f], bad)[str(f)] == file_sha256(f)
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    assert remembered_sha256([f], blocked / "index.json")[str(f)] == file_sha256(f)  # cannot be written
    assert remembered_sha256([f], None)[str(f)] == file_sha256(f)


def test_the_backbone_loader_never_refuses_on_the_index_word(tmp_path, monkeypatch):
    """A stale index entry (same size and time, other bytes) must not make a good file look bad."""
    from tags.backbones import _load_state

    import torch

    ckpt = tmp_path / "ckpt.pth"
    torch.save({"w": torch.zeros(2)}, ckpt)
    good = file_sha256(ckpt)
    monkeypatch.setenv("TAGS_CACHE", str(tmp_path / "cache"))
    index = hashing.default_index()
    st = ckpt.stat()
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps({str(ckpt.resolve()): {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                        "sha256": "0" * 64}}))
    state, sha = _load_state(ckpt, good)
    assert sha == good and torch.equal(state["w"], torch.zeros(2))
    with pytest.raises(ValueError, match="refusing to load a different file"):
        _load_state(ckpt, "f" * 64)


def test_no_home_means_no_index(monkeypatch):
    monkeypatch.delenv("TAGS_CACHE", raising=False)
    monkeypatch.setattr(hashing.Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert hashing.default_index() is None


def test_the_index_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv("TAGS_CACHE", str(tmp_path))
    assert hashing.default_index() == tmp_path / hashing.INDEX_NAME
    monkeypatch.setenv("TAGS_HASH_INDEX", "0")
    assert hashing.default_index() is None
