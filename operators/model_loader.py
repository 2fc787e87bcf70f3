"""One TAGS predictor per process, shared by the organ and tumor operators.

The model folder is read and verified once (on the first operator's start), not per compute.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tags.model_folder import METADATA, ModelFolderError
from tags.inference import TagsPredictor

log = logging.getLogger(__name__)


def resolve_model_folder(path: str | os.PathLike) -> Path:
    """The model folder itself, or the only model folder inside ``path`` (the MAP's models dir)."""
    path = Path(path)
    if (path / METADATA).is_file():
        return path
    if not path.is_dir():
        raise ModelFolderError(f"model folder not found: {path}")
    found = sorted(p for p in path.iterdir() if (p / METADATA).is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelFolderError(f"no TAGS model folder (with {METADATA}) in {path}")
    raise ModelFolderError(f"several model folders in {path}: {[p.name for p in found]}; pass one")


@dataclass(frozen=True)
class InferenceSettings:
    """How the model runs: device (None: CUDA when available, else CPU), precision (None:
    tags.device.default_precision), whether the image encoder is compiled with torch.compile,
    and the base checkpoint file of a backbone that is not installed with a package (sam_vit_b).
    The application fills it from its options and environment (app/app.py)."""

    device: Optional[str] = None
    precision: Optional[str] = None
    compile: bool = False
    backbone_checkpoint: Optional[str] = None


@functools.lru_cache(maxsize=2)
def _load(path: str, settings: InferenceSettings) -> TagsPredictor:
    try:
        return TagsPredictor.from_model_folder(
            path, device=settings.device, precision=settings.precision, compile=settings.compile,
            backbone_checkpoint=settings.backbone_checkpoint,
        )
    except ModelFolderError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # a base checkpoint missing, an unreadable file ...
        log.debug("loading the model folder failed", exc_info=True)
        raise ModelFolderError(f"the model in {path} cannot be loaded: {type(e).__name__}: {e}") from None


def shared_predictor(path: str | os.PathLike, settings: InferenceSettings = InferenceSettings()) -> TagsPredictor:
    """Load (once) and return the predictor for the model folder at ``path``."""
    folder = resolve_model_folder(path)
    first = _load.cache_info().currsize == 0
    predictor = _load(str(folder.resolve()), settings)
    if first:
        how = "requested" if settings.device else "automatic: " + (
            "CUDA available" if predictor.device.type == "cuda" else "no CUDA device"
        )
        log.info(
            "model %s loaded: targets %s%s; device %s (%s), precision %s%s",
            folder.name, [t.name for t in predictor.config.targets],
            " (organ pass: its organ/ network)" if predictor.organ_predictor is not None else "",
            predictor.device, how, predictor.precision, ", image encoder compiled" if predictor.compiled else "",
        )
    return predictor
