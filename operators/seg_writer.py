"""DICOM Segmentation of a :class:`~operators.types.Segmentation`, with highdicom.

One segment per tumor target (and per organ when asked), SNOMED CT category and type codes
from the model folder, the organ as anatomic region of a tumor, the preview's colours as
recommended display colours, algorithm name and version,
the MONAI Deploy ModelInfo as Contributing Equipment, same study as the CT, a new series, and
one frame per CT slice that holds the segment (frames reference their CT instance).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import List, Optional

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

import tags
from tags.model_folder import ModelFolderError

from .types import Segmentation, TargetOutcome

SERIES_DESCRIPTION = "TAGS tumor segmentation - NOT FOR CLINICAL USE"
SEG_SERIES_NUMBER = 9901
MANUFACTURER = "TAGS research re-implementation"
RESULTS_JSON = "tags_results.json"
"""The run summary (:func:`operators.seg_writer_operator.summary`) written beside the SEG."""


def _code(c) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def _description(number: int, out: TargetOutcome, organ_codes: dict, algorithm) -> hd.seg.SegmentDescription:
    t = out.target
    regions = [organ_codes[t.organ]] if t.kind == "tumor" and t.organ in organ_codes else None
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=t.name.replace("_", " "),
        segmented_property_category=_code(t.category),
        segmented_property_type=_code(t.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=f"TAGS {t.name}",
        anatomic_regions=regions,
        display_color=hd.color.CIELabColor.from_rgb(*out.display_rgb),
    )


def contributing_equipment(model_name: str, model_version: str, creator: str = MANUFACTURER) -> DicomSequence:
    """Contributing Equipment Sequence for the processing algorithm (IHE AIR, as the SDK writes it)."""
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "Newcode1", "99IHE", "Processing Algorithm"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = creator
    item.ManufacturerModelName = model_name
    item.SoftwareVersions = model_version
    item.DeviceUID = hd.UID()
    return DicomSequence([item])


def build_seg(result: Segmentation, *, include_organs: bool = False) -> hd.seg.Segmentation:
    """The SEG dataset (not yet written)."""
    ct = result.ct
    outcomes: List[TargetOutcome] = list(result.tumors) + (list(result.organs) if include_organs else [])
    if not outcomes:
        raise ModelFolderError("nothing to write: the model folder has no tumor targets")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="TAGS", family=codes.cid7162.ArtificialIntelligence, version=f"{tags.__version__} model {result.model_version}",
    )
    organ_codes = {o.target.name: _code(o.target.type) for o in result.organs}
    for t in result.tumors:  # organ codes also for organs that came from a study SEG
        organ_codes.setdefault(t.target.organ, None)
    organ_codes = {k: v for k, v in organ_codes.items() if v is not None}
    descriptions = [_description(i + 1, o, organ_codes, algorithm) for i, o in enumerate(outcomes)]
    # (frames = CT slices in the SDK's order, rows, columns, segments)
    pixels = np.stack([ct.prepared.to_source(o.mask) for o in outcomes], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=ct.datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="TAGS tumor segmentation",
        software_versions=f"tags-seg {tags.__version__}",
        device_serial_number="0",
        series_description=SERIES_DESCRIPTION,
        content_label="TAGS",
        content_description="Tumor segmentation (research use only)",
        content_creator_name="TAGS^Algorithm",
        omit_empty_frames=True,
    )
    now = datetime.datetime.now()
    seg.SeriesDate, seg.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    seg.ContributingEquipmentSequence = contributing_equipment(result.model_name, result.model_version)
    return seg


def write_seg(result: Segmentation, out_dir: str | Path, *, include_organs: bool = False):
    """Write the SEG into ``out_dir``; returns (path named after its SOP Instance UID, dataset)."""
    seg = build_seg(result, include_organs=include_organs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"SEG_{seg.SOPInstanceUID}.dcm"
    seg.save_as(path)
    return path, seg
