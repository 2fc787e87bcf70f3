"""Fine-tuning: a training run that starts from a model folder (``tags-train train --init``).

The folder's delta weights, model settings, targets and text embeddings start the run; its organ
boundary and lesion decision belong to the old weights and are dropped (``tags-train calibrate``
chooses new ones for the fine-tuned folder).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from tags.config import LesionDecision, TargetSpec
from tags.model_folder import ModelFolder, ModelFolderError, load_delta, load_model_folder
from tags.network import TagsNet


def initial_folder(path: str, dataset_targets: Sequence[TargetSpec], phrase_prefix: str) -> ModelFolder:
    """The model folder at ``path`` with its organ boundary and lesion decision dropped.

    Every target of the datasets must be one of its targets; a folder trained with text
    alignment must carry its phrase embeddings (``phrase_prefix`` + tumor target name)."""
    folder = load_model_folder(path)
    names = {t.name for t in folder.config.targets}
    missing = sorted({t.name for t in dataset_targets} - names)
    if missing:
        raise ValueError(f"--init {path}: the datasets have targets {missing} the model folder does not "
                         f"(it has {sorted(names)})")
    if folder.config.text_alignment and not all(phrase_prefix + t.name in folder.text_embeddings
                                                for t in folder.config.tumor_targets):
        raise ValueError(f"--init {path}: text alignment needs the phrase embeddings, the model folder has none")
    config = dataclasses.replace(folder.config, lesion_decision=LesionDecision(), organ_boundary=None)
    return dataclasses.replace(folder, config=config)


def load_initial(net: TagsNet, folder: ModelFolder) -> None:
    """The folder's weights into ``net``, after checking that ``net`` has the folder's base checkpoint."""
    expected = folder.metadata["base_checkpoint"]["sha256"]
    if expected != net.backbone_sha256:
        raise ModelFolderError(f"--init {folder.path} expects base checkpoint sha256 {expected}, "
                               f"the installed {folder.config.backbone} checkpoint has {net.backbone_sha256}")
    load_delta(net, folder.weights, where=str(folder.path), adapters_required=folder.adapters_stored)
