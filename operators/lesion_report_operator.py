"""Lesion report operator: DICOM SR (TID 1500), tags_lesions.json and tags_preview.png."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .lesion_report import build_sr, measure
from .preview import render_preview
from .types import Segmentation

log = logging.getLogger(__name__)

LESIONS_JSON = "tags_lesions.json"
PREVIEW_PNG = "tags_preview.png"


def write_report(result: Segmentation, seg, out_dir: str | Path, min_lesion_ml: float = 0.1) -> dict:
    """Measure, then write SR_<uid>.dcm, tags_lesions.json and tags_preview.png; returns the JSON."""
    out_dir = Path(out_dir)
    measured = measure(result, min_lesion_ml)
    sr = build_sr(result, seg, measured)
    sr_path = out_dir / f"SR_{sr.SOPInstanceUID}.dcm"
    sr.save_as(sr_path)
    render_preview(result, measured, out_dir / PREVIEW_PNG)
    info = {
        "sr_file": sr_path.name,
        "seg_file": f"SEG_{seg.SOPInstanceUID}.dcm",
        "min_lesion_ml": min_lesion_ml,
        "targets": {tl.name: tl.to_dict() for tl in measured},
        "note": "research use only, not for clinical use; lesions are 26-connected components of the tumor mask",
    }
    (out_dir / LESIONS_JSON).write_text(json.dumps(info, indent=2) + "\n")
    for tl in measured:
        if tl.lesions:
            big = tl.lesions[0]
            log.info("%s: %d lesion(s) >= %.2f ml; largest %.2f ml, %.0f x %.0f mm", tl.name, len(tl.lesions),
                     min_lesion_ml, big.volume_ml, big.long_axis_mm, big.short_axis_mm)
        else:
            log.info("%s: no lesion >= %.2f ml (%s)", tl.name, min_lesion_ml, tl.status)
    return info


class LesionReportOperator(Operator):
    """Writes the lesion measurement report next to the SEG.

    Named inputs:
        segmentation: :class:`~operators.types.Segmentation`.
        seg: the written SEG dataset (from SegWriterOperator), which the SR references.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: str, min_lesion_ml: float = 0.1, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.min_lesion_ml = min_lesion_ml
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("segmentation")
        spec.input("seg")

    def compute(self, op_input, op_output, context) -> None:
        result = op_input.receive("segmentation")
        seg = op_input.receive("seg")
        t0 = time.perf_counter()
        write_report(result, seg, self.output_folder, self.min_lesion_ml)
        log.info("lesion report written in %.1f s", time.perf_counter() - t0)
