"""sha256 of files, and an index that remembers them per file version.

A file is hashed again only when its size or modification time changed (``make``'s rule, and
nnU-Net's for its preprocessed data): the application's base checkpoint (375 MB for SAM ViT-B)
and a training cache's source CTs are read once per version, not on every start.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

INDEX_NAME = "sha256-index.json"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of the file at ``path`` (hex), read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_index() -> Optional[Path]:
    """The per-user index, in the same folder as the registry sample data: ``$TAGS_CACHE``
    (default ``~/.cache/tags``); None when neither is known (a container user without a home) or
    $TAGS_HASH_INDEX is 0 (the MAP image: each run starts from the image, so an index would only
    be written into a container layer that is thrown away)."""
    if os.environ.get("TAGS_HASH_INDEX", "1") == "0":
        return None
    root = os.environ.get("TAGS_CACHE")
    if not root:
        try:
            root = str(Path.home() / ".cache" / "tags")
        except RuntimeError:  # no $HOME and no password entry
            return None
    return Path(root) / INDEX_NAME


def remembered_sha256(files: Sequence[str | os.PathLike], index: Optional[Path]) -> Dict[str, str]:
    """{str(file): sha256} for ``files``, through the JSON ``index`` of (size, mtime_ns, sha256)
    per resolved path: a file whose size and modification time match its entry is not read.

    The index is rewritten atomically (temporary file, rename) when an entry changed; an index
    that cannot be read or written (a read-only home in a container) is ignored and every file is
    hashed. The caller serialises concurrent writers if it needs every entry kept (the last
    writer wins; a lost entry only costs a hash).
    """
    entries: Dict[str, dict] = {}
    if index is not None:
        try:
            entries = json.loads(index.read_text())
        except (OSError, ValueError):
            entries = {}
    out, changed = {}, False
    for f in files:
        st = os.stat(f)
        key = str(Path(f).resolve())
        entry = entries.get(key)
        if not isinstance(entry, dict) or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(f)}
            entries[key] = entry
            changed = True
        out[str(f)] = entry["sha256"]
    if changed and index is not None:
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            tmp = index.with_name(f"{index.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(entries, indent=1))
            os.replace(tmp, index)
        except OSError:
            pass
    return out
