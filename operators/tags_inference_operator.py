"""TAGS inference operator: every tumor target of the model folder, inside its organ.

The predictor is loaded once when the operator starts (shared with the organ operator), as the
:class:`InferenceSettings` say: device ($TAGS_DEVICE, else CUDA when available, else CPU),
precision ($TAGS_PRECISION, else bf16 on CUDA and on CPUs with native bf16, else fp32), compile.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from tags.config import TargetSpec
from tags.runtime import release_freed_memory

from .ct_preprocess_operator import CTSeries
from .model_loader import InferenceSettings, shared_predictor
from .organ_prompt_operator import OrganMasks

log = logging.getLogger(__name__)


@dataclass
class TargetOutcome:
    """One segmented structure.

    Attributes:
        mask: (D, H, W) bool on the canonical grid of the CT.
        status: "ok", "organ_absent" (the organ mask was empty) or "organ_implausible" (the
            mask was not plausibly the organ); in both latter cases nothing was searched and
            ``reason`` says why.
        organ_source: where the organ mask (anatomy prompt) came from.
    """

    target: TargetSpec
    mask: np.ndarray
    status: str
    organ_source: str
    voxel_ml: float
    reason: Optional[str] = None

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def ml(self) -> float:
        return self.voxels * self.voxel_ml


@dataclass
class Segmentation:
    """Everything the writers need: the CT, tumor outcomes, organ outcomes, model identity."""

    ct: CTSeries
    tumors: List[TargetOutcome]
    organs: List[TargetOutcome]
    model_name: str
    model_version: str


class TagsInferenceOperator(Operator):
    """Segments the model's tumor targets with organ-derived anatomy prompts and text prompts.

    Named inputs:
        ct: :class:`~operators.ct_preprocess_operator.CTSeries`.
        organs: :class:`~operators.organ_prompt_operator.OrganMasks`.

    Named output:
        segmentation: :class:`Segmentation`.
    """

    def __init__(
        self, fragment: Fragment, *args, model_path: str,
        settings: InferenceSettings = InferenceSettings(), threshold: float = 0.5, **kwargs,
    ) -> None:
        self.model_path = model_path
        self.settings = settings
        self.threshold = threshold
        self.predictor = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("ct")
        spec.input("organs")
        spec.output("segmentation")

    def start(self) -> None:
        self.predictor = shared_predictor(self.model_path, self.settings)
        self.model_identity = self.predictor_metadata()  # read once, not per study

    def compute(self, op_input, op_output, context) -> None:
        ct = op_input.receive("ct")
        organs = op_input.receive("organs")
        segmentation = self.segment(ct, organs)
        release_freed_memory()  # the tumor pass's freed activations are not kept for writing
        op_output.emit(segmentation, "segmentation")

    def segment(self, ct: CTSeries, organs: OrganMasks) -> Segmentation:
        """Plain entry point (also used by tests without a graph)."""
        if self.predictor is None:
            self.start()
        t0 = time.perf_counter()
        p = ct.prepared
        config = self.predictor.config
        available = {t.organ for t in config.tumor_targets if t.organ in organs.masks}
        results = self.predictor.predict(
            p.hu, p.affine, {k: organs.masks[k] for k in available},
            targets=[t.name for t in config.tumor_targets if t.organ in available],
        )
        tumors = []
        for name, r in results.items():
            out = TargetOutcome(r.target, r.mask(self.threshold), r.status, organs.sources[r.target.organ], p.voxel_ml,
                                r.reason)
            tumors.append(out)
            log.info("%s: %d voxels, %.2f ml (%s%s; organ prompt from %s)", name, out.voxels, out.ml, out.status,
                     f": {out.reason}" if out.reason else "", out.organ_source)
        organ_out = [
            TargetOutcome(config.target(n), m, "ok", organs.sources[n], p.voxel_ml)
            for n, m in organs.masks.items() if n in {t.name for t in config.organ_targets}
        ]
        ct.timings["tumors"] = time.perf_counter() - t0
        meta = self.model_identity
        return Segmentation(ct, tumors, organ_out, meta["name"], meta["version"])

    def predictor_metadata(self) -> Dict[str, str]:
        from .model_loader import resolve_model_folder
        from tags.model_folder import read_metadata

        folder = resolve_model_folder(self.model_path)
        meta = read_metadata(folder)
        return {"name": f"TAGS {folder.name}", "version": meta["files"]["weights.safetensors"][:12]}
