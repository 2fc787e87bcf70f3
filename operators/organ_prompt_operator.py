"""Organ prompt operator: the organ masks that give each tumor target its anatomy prompts.

Per organ: from a DICOM SEG in the input study that references the CT series (see
:mod:`operators.organ_seg_reader`), otherwise from the model's own organ target. The source
of each mask is logged and carried to the outputs.
"""

from __future__ import annotations

import logging

import numpy as np
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from pydicom.sr.coding import Code

from tags.model_folder import ModelFolderError
from tags.runtime import release_freed_memory

from .model_loader import InferenceSettings, shared_predictor
from .organ_seg_reader import organs_from_segs, seg_datasets
from .types import CTSeries, OrganMasks

log = logging.getLogger(__name__)


class OrganPromptOperator(Operator):
    """Finds the organs the configured tumor targets live in.

    Named inputs:
        ct: :class:`~operators.types.CTSeries`.
        dicom_study_list: the loaded studies (searched for organ SEGs); optional.

    Named output:
        organs: :class:`~operators.types.OrganMasks`.
    """

    def __init__(
        self, fragment: Fragment, *args, model_path: str,
        settings: InferenceSettings = InferenceSettings(), use_study_seg: bool = True, **kwargs,
    ) -> None:
        self.model_path = model_path
        self.settings = settings
        self.use_study_seg = use_study_seg
        self.predictor = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("ct")
        spec.input("dicom_study_list").condition(ConditionType.NONE)
        spec.output("organs")

    def start(self) -> None:
        self.predictor = shared_predictor(self.model_path, self.settings)

    def compute(self, op_input, op_output, context) -> None:
        ct: CTSeries = op_input.receive("ct")
        studies = op_input.receive("dicom_study_list") if self.use_study_seg else None
        organs = self.find_organs(ct, studies)
        release_freed_memory()  # the organ pass's freed activations are not kept for the later stages
        op_output.emit(organs, "organs")

    def find_organs(self, ct: CTSeries, studies=None) -> OrganMasks:
        """Plain entry point (also used by tests without a graph)."""
        if self.predictor is None:
            self.start()
        with ct.timings.stage("organs"):
            return self._organs(ct, studies)

    def _organs(self, ct: CTSeries, studies) -> OrganMasks:
        config = self.predictor.config
        wanted = sorted({t.organ for t in config.tumor_targets} | {t.name for t in config.organ_targets})
        codes = {}
        for name in wanted:
            t = config.target(name)
            codes[name] = Code(t.type.value, t.type.scheme, t.type.meaning)
        masks, sources = {}, {}
        if studies:
            for name, found in organs_from_segs(seg_datasets(studies), ct.datasets, codes).items():
                masks[name] = np.ascontiguousarray(ct.prepared.reorientation.apply(found.mask))
                sources[name] = found.source
        organ_targets = {t.name for t in config.organ_targets}
        missing = [n for n in wanted if n not in masks and n in organ_targets]
        for name in wanted:
            if name not in masks and name not in organ_targets:
                raise ModelFolderError(f"the study has no SEG of the {name} and the model has no {name} organ target")
        if missing:
            p = ct.prepared
            results = self.predictor.segment_organs(p.hu, p.affine, organs=missing, region=p.body_box)
            for name, r in results.items():
                masks[name] = r.mask()
                sources[name] = "model organ pass"
                nested = r.nested_windows
                ct.timings.add_windows("organs", name, r.windows.count, r.windows.shape,
                                       None if nested is None else (nested.count, nested.shape), r.windows.rows)
        for name in wanted:
            log.info("organ %s: %.1f ml, from %s", name, masks[name].sum() * ct.prepared.voxel_ml, sources[name])
        return OrganMasks(masks, sources)
