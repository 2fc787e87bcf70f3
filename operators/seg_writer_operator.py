"""DICOM-SEG writer operator, and the run summary (tags_results.json) beside it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from .seg_writer import RESULTS_JSON, write_seg
from .types import Segmentation

log = logging.getLogger(__name__)


def summary(result: Segmentation, seg_file: str) -> dict:
    """A JSON-ready summary without patient identifiers."""
    ct = result.ct

    def entry(o):
        d = {"status": o.status, "voxels": o.voxels, "volume_ml": round(o.ml, 3), "organ_source": o.organ_source}
        if o.reason:
            d["reason"] = o.reason
        return d

    return {
        "seg_file": seg_file,
        "model": {"name": result.model_name, "version": result.model_version},
        "ct": {"series": ct.label, "spacing_mm": [round(s, 4) for s in ct.prepared.spacing]},
        "input": {"skipped_files": [f.to_dict() for f in ct.skipped_files]},
        "tumors": {o.target.name: entry(o) for o in result.tumors},
        "organs": {o.target.name: {**entry(o), "organ_source": o.organ_source} for o in result.organs},
        "timings_s": ct.timings.rounded(),
        "windows": ct.timings.windows,
        "runtime": result.runtime,
        "note": "research use only, not for clinical use",
    }


class SegWriterOperator(Operator):
    """Writes the DICOM SEG (and tags_results.json) into the output folder.

    Named input:
        segmentation: :class:`~operators.types.Segmentation`.

    Named outputs:
        segmentation: the same object, passed on once the SEG is written.
        seg: the SEG dataset as written (for the lesion report that references it).
    """

    def __init__(self, fragment: Fragment, *args, output_folder: str, include_organs: bool = False, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.include_organs = include_organs
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("segmentation")
        spec.output("segmentation").condition(ConditionType.NONE)
        spec.output("seg").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        result = op_input.receive("segmentation")
        _, seg = self.write(result)
        op_output.emit(result, "segmentation")
        op_output.emit(seg, "seg")

    def write(self, result: Segmentation):
        """Returns (path, SEG dataset)."""
        with result.ct.timings.stage("write"):
            path, seg = write_seg(result, self.output_folder, include_organs=self.include_organs)
        info = summary(result, path.name)
        (self.output_folder / RESULTS_JSON).write_text(json.dumps(info, indent=2) + "\n")
        log.info("SEG written: %s (%d tumor segment(s)%s)", path.name, len(result.tumors),
                 f", {len(result.organs)} organ segment(s)" if self.include_organs else "")
        log.info("stage timings (s): %s", result.ct.timings)
        return path, seg
