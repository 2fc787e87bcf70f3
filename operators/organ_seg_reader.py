"""Organ masks from DICOM Segmentations already in the study (e.g. TotalSegmentator upstream).

A SEG is used for an organ when it references the selected CT series and has a segment whose
Segmented Property Type is that organ's code. pydicom's Code equality maps legacy SNOMED RT
codes ("T-62000" SRT) to SNOMED CT ("10200004" SCT), so SEGs from older tools match too.
Frames are placed by the CT SOP instances they reference (highdicom), not by position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping

import highdicom as hd
import numpy as np
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

log = logging.getLogger(__name__)


@dataclass
class StudyOrgan:
    """An organ mask read from a SEG of the study: ``mask`` (D, H, W) bool in the CT's array order."""

    mask: np.ndarray
    source: str


def seg_datasets(studies: Iterable) -> List:
    """The pydicom datasets of every Segmentation instance in the SDK study list."""
    found = []
    for study in studies or []:
        for series in study.get_all_series():
            for inst in series.get_sop_instances():
                ds = inst.get_native_sop_instance()
                if str(ds.get("SOPClassUID", "")) == SegmentationStorage:
                    found.append(ds)
    return found


def _sort_key(ds) -> tuple:
    return (str(ds.get("SeriesDate", "")), str(ds.get("SeriesTime", "")), int(ds.get("SeriesNumber") or 0))


POSITION_TOLERANCE_MM = 0.05
"""Largest distance between a SEG frame's position and the CT slice it references."""


def _frames_on_their_slices(ds, ct_positions: Mapping[str, np.ndarray]) -> bool:
    """Every frame lies where the CT slice it references lies (SEGs from tools that do not
    declare SpatialLocationsPreserved, e.g. dcmqi, are checked here instead)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    for item in ds.PerFrameFunctionalGroupsSequence:
        try:
            uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            plane = item.PlanePositionSequence[0] if "PlanePositionSequence" in item else shared.PlanePositionSequence[0]
            pos = np.array([float(v) for v in plane.ImagePositionPatient])
        except (AttributeError, IndexError, KeyError):
            return False
        if uid not in ct_positions or np.linalg.norm(pos - ct_positions[uid]) > POSITION_TOLERANCE_MM:
            return False
    return True


def organs_from_segs(segs: Iterable, ct_datasets: List, organ_codes: Mapping[str, Code]) -> Dict[str, StudyOrgan]:
    """Masks of the requested organs from SEGs that reference the CT series.

    Args:
        segs: pydicom SEG datasets.
        ct_datasets: the CT slices' pydicom datasets in array order (index d).
        organ_codes: {organ name: segmented property type code}.

    When several SEGs have the organ, the newest (SeriesDate/Time, SeriesNumber) is used. A SEG
    whose frames do not lie on the CT slices they reference is ignored (with a warning).
    """
    series_uid = str(ct_datasets[0].SeriesInstanceUID)
    sop_uids = [str(d.SOPInstanceUID) for d in ct_datasets]
    ct_positions = {str(d.SOPInstanceUID): np.array([float(v) for v in d.ImagePositionPatient]) for d in ct_datasets}
    out: Dict[str, StudyOrgan] = {}
    for ds in sorted(segs, key=_sort_key, reverse=True):
        number = ds.get("SeriesNumber", "?")
        try:
            seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        except Exception as e:  # a malformed SEG is skipped, not fatal: the model pass remains
            log.warning("SEG series #%s in the study is not readable (%s); ignored", number, type(e).__name__)
            continue
        refs = {uids[1] for uids in seg.get_source_image_uids()}
        if series_uid not in refs:
            log.info("SEG series #%s references another series; ignored", number)
            continue
        if not _frames_on_their_slices(ds, ct_positions):
            log.warning("SEG series #%s: frames do not lie on the CT slices they reference; ignored", number)
            continue
        for organ, code in organ_codes.items():
            if organ in out:
                continue
            for n in seg.segment_numbers:
                t = seg.get_segment_description(n).segmented_property_type
                if Code(t.value, t.scheme_designator, t.meaning) != code:
                    continue
                pixels = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=list(sop_uids),
                    segment_numbers=[n],
                    combine_segments=False,
                    assert_missing_frames_are_empty=True,
                    ignore_spatial_locations=True,  # checked above by position
                )
                mask = np.asarray(pixels[..., 0]) > 0.5 if pixels.dtype.kind == "f" else np.asarray(pixels[..., 0]) > 0
                out[organ] = StudyOrgan(mask, f"SEG series #{number} in the study, segment {n} ({t.meaning})")
                break
    return out
