"""What a run reports while it trains: validation through the application's predictor, the best
checkpoint's score, and TensorBoard event files.

Validation (``--validate-every N``) runs every dataset's validation cases (dataset.json
``"validation"``, those with a label) through :class:`tags.inference.TagsPredictor` built from a
copy of the network, the path the application takes (windows, prompts from the organ label,
lesion decision), and scores the mean Dice over the targets (:func:`validation_score`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from tags.network import TagsNet

from .datasets import Dataset
from .evaluate import evaluate

TENSORBOARD = "tensorboard"
"""Folder of a run that holds its TensorBoard event files."""
METRIC_KEYS = ("dice", "nsd", "lesion_recall", "lesion_precision")


def has_validation_cases(datasets: Sequence[Dataset]) -> bool:
    return any(ds.labelled_validation_cases for ds in datasets)


def inference_copy(net: TagsNet) -> TagsNet:
    """A copy of ``net`` in eval mode without the training-only wrappers bound to its modules
    (activation checkpointing's recomputed blocks and mask decoder, the fused attention), as an
    exported model folder would load it."""
    plain = copy.deepcopy(net).eval()
    for module in plain.modules():
        for name in ("forward", "decode_slices"):
            module.__dict__.pop(name, None)
    return plain


def validation_score(net: TagsNet, text: Mapping[str, torch.Tensor], datasets: Sequence[Dataset], *,
                     device: torch.device, precision: str) -> Dict:
    """{"score": mean Dice over targets, "<target>": {dice, nsd, lesion_recall, lesion_precision}}
    on the validation cases of ``datasets`` (a copy of ``net`` is prepared for inference; ``net``
    is left as it is)."""
    from tags.inference import TagsPredictor

    pred = TagsPredictor.from_network(inference_copy(net), dict(text), device=device, precision=precision)
    rows: List[Dict] = []
    for ds in datasets:
        if ds.labelled_validation_cases:
            rows += evaluate({"tags": pred}, ds.root, split="validation", organ_source="label")["cases"]
    out: Dict = {}
    for target in sorted({r["target"] for r in rows}):
        sel = [r for r in rows if r["target"] == target]
        out[target] = {k: _mean([r.get(k) for r in sel]) for k in METRIC_KEYS}
    dice = [v["dice"] for v in out.values() if v["dice"] is not None]
    out["score"] = float(np.mean(dice)) if dice else None
    return out


def _mean(values) -> Optional[float]:
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


class RunLog:
    """TensorBoard event files of a run (rank 0 only; the writer is opened on first use)."""

    def __init__(self, run: Path):
        self.folder = Path(run) / TENSORBOARD
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder))
        return self._writer

    def training(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def validation(self, step: int, result: Mapping) -> None:
        for target, metrics in result.items():
            if isinstance(metrics, Mapping):
                for k, v in metrics.items():
                    if v is not None:
                        self.writer.add_scalar(f"validation/{target}/{k}", v, step)
        if result.get("score") is not None:
            self.writer.add_scalar("validation/score", result["score"], step)

    def preview(self, step: int, image: torch.Tensor, label: torch.Tensor) -> None:
        """The middle slice of a training crop, its label in red: (1, D, H, W) tensors in [0, 1]."""
        k = image.shape[1] // 2
        gray = image[0, k].float().cpu().clamp(0, 1)
        red = torch.maximum(gray, label[0, k].float().cpu())
        self.writer.add_image("train/sample", torch.stack([red, gray, gray]), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
