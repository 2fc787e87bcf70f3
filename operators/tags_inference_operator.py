"""TAGS inference operator: every tumor target of the model folder, inside its organ.

The predictor is loaded once when the operator starts (shared with the organ operator), as the
:class:`InferenceSettings` say: device ($TAGS_DEVICE, else CUDA when available, else CPU),
precision ($TAGS_PRECISION, else tags.device.default_precision), compile.
"""

from __future__ import annotations

import logging
from typing import Dict

import numpy as np

from monai.deploy.core import Fragment, Operator, OperatorSpec

from tags.runtime import release_freed_memory

from .model_loader import InferenceSettings, shared_predictor
from .types import CTSeries, OrganMasks, Segmentation, TargetOutcome

log = logging.getLogger(__name__)


class TagsInferenceOperator(Operator):
    """Segments the model's tumor targets with organ-derived anatomy prompts and text prompts.

    Named inputs:
        ct: :class:`~operators.types.CTSeries`.
        organs: :class:`~operators.types.OrganMasks`.

    Named output:
        segmentation: :class:`~operators.types.Segmentation`.
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
        with ct.timings.stage("tumors"):
            tumors, organ_out = self._outcomes(ct, organs)
        meta = self.model_identity
        return Segmentation(ct, tumors, organ_out, meta["name"], meta["version"],
                            hu_window=tuple(self.predictor.config.preprocessing.hu_window),
                            runtime={"device": str(self.predictor.device), "precision": self.predictor.precision})

    def _outcomes(self, ct: CTSeries, organs: OrganMasks):
        """(tumor outcomes, organ outcomes)."""
        p = ct.prepared
        config = self.predictor.config
        available = {t.organ for t in config.tumor_targets if t.organ in organs.masks}
        results = self.predictor.predict(
            p.hu, p.affine, {k: organs.masks[k] for k in available},
            targets=[t.name for t in config.tumor_targets if t.organ in available],
        )
        tumors = []
        for name, r in results.items():
            if r.windows is not None:
                ct.timings.add_windows("tumors", name, r.windows.count, r.windows.shape)
            out = TargetOutcome(r.target, r.mask(self.threshold), r.status, organs.sources[r.target.organ], p.voxel_ml,
                                r.reason)
            tumors.append(out)
            log.info("%s: %d voxels, %.2f ml (%s%s; organ prompt from %s)", name, out.voxels, out.ml, out.status,
                     f": {out.reason}" if out.reason else "", out.organ_source)
        # An organ mask the tumor search refused as implausible (the heart called "liver" on a chest
        # CT) is not reported as that organ either: an empty outcome with the reason.
        refused = {r.target.organ: r for r in results.values() if r.status != "ok"}
        organ_out = [
            TargetOutcome(config.target(n), np.zeros_like(m), refused[n].status, organs.sources[n], p.voxel_ml,
                          refused[n].reason) if n in refused else
            TargetOutcome(config.target(n), m, "ok", organs.sources[n], p.voxel_ml)
            for n, m in organs.masks.items() if n in {t.name for t in config.organ_targets}
        ]
        return tumors, organ_out

    def predictor_metadata(self) -> Dict[str, str]:
        from .model_loader import resolve_model_folder
        from tags.model_folder import read_metadata

        folder = resolve_model_folder(self.model_path)
        meta = read_metadata(folder)
        return {"name": f"TAGS {folder.name}", "version": meta["files"]["weights.safetensors"][:12]}
