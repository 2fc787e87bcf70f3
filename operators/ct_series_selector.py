"""CT series selection: the SDK selector with our rules, a deterministic choice and early checks.

The SDK's DICOMSeriesSelectorOperator matches the rules; this subclass then
- keeps only classic CT Image Storage series (an Enhanced CT multi-frame object or a secondary
  capture is not a series of axial slices the SDK can stack),
- picks one series deterministically: most instances, then lowest SeriesNumber, then UID,
- checks what the SDK's series-to-volume step needs before it loads any pixels (geometry
  attributes on every slice, one size, monochrome, complete pixel data, the voxel limit),
and raises :class:`~tags.preprocessing.CTInputError` with one message naming the problem
when no series qualifies. Messages list what was found by modality and count only.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import List, Optional

from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from pydicom.uid import CTImageStorage

from tags.preprocessing import CTInputError

from .dicom_checks import attribute_text, check_instances, file_label, instance_defects, odd_slice

log = logging.getLogger(__name__)

MAX_VOXELS = 512 * 512 * 1000
"""Largest CT accepted: 262 M voxels (e.g. 512 x 512 x 1000 slices). A 512 x 512 x 300 series
peaks well inside the 8 GiB app.yaml requests; the limit keeps the largest accepted series
inside it too. The application passes $TAGS_MAX_VOXELS / --max-voxels instead when set
(app/app.py)."""

REQUIRED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def describe_found(studies) -> str:
    """'2 series: MR (1 instance), CT secondary capture (3 instances)' without identifiers."""
    items = []
    for study in studies or []:
        for series in study.get_all_series():
            inst = series.get_sop_instances()
            ds = inst[0].get_native_sop_instance() if inst else None
            modality = str(ds.get("Modality", "?")) if ds is not None else "?"
            sop = ds.get("SOPClassUID") if ds is not None else None
            kind = getattr(sop, "name", str(sop)) if sop is not None else "?"
            image_type = "/".join(ds.get("ImageType", [])) if ds is not None else ""
            items.append(f"{modality} {kind}{f' {image_type}' if image_type else ''} ({len(inst)} instance(s))")
    return f"{len(items)} series: " + "; ".join(items) if items else "no DICOM instances"


def check_series(series, max_voxels: int = MAX_VOXELS) -> None:
    """What series-to-volume needs, checked on the datasets before any pixel data is decoded;
    ``max_voxels``: the largest CT accepted."""
    datasets = [s.get_native_sop_instance() for s in series.get_sop_instances()]
    for i, ds in enumerate(datasets):
        missing = [k for k in REQUIRED if k not in ds or ds[k].value in (None, "")]
        if missing:
            raise CTInputError(f"CT {_which(ds)} of {len(datasets)} has no {', '.join(missing)}")
    check_instances(datasets)  # UIDs and the values the geometry and volume rely on, per file
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for ds in datasets)
    if len(sizes) > 1:
        raise CTInputError(f"the CT series mixes image sizes {sorted(sizes)}")
    if any(int(ds.get("SamplesPerPixel", 1)) != 1 for ds in datasets):
        raise CTInputError("the CT series is not monochrome (SamplesPerPixel is not 1)")
    rows, cols = next(iter(sizes))
    voxels = rows * cols * len(datasets)
    if voxels > max_voxels:
        raise CTInputError(
            f"the CT series has {voxels / 1e6:.0f} M voxels ({cols}x{rows}x{len(datasets)}); "
            f"the limit is {max_voxels / 1e6:.0f} M (TAGS_MAX_VOXELS)"
        )
    for i, ds in enumerate(datasets):
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            expected = rows * cols * int(ds.get("BitsAllocated", 16)) // 8
            if "PixelData" not in ds or len(ds.PixelData) < expected:
                raise CTInputError(f"CT {_which(ds)} of {len(datasets)} has incomplete pixel data (truncated file?)")


class CTSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """Selects the one CT series to process (ports as the SDK selector's).

    Named input:
        dicom_study_list: from DICOMDataLoaderOperator.

    Named output:
        study_selected_series_list: one study with exactly one selected series.

    ``max_voxels``: the largest CT accepted (the application's setting, default :data:`MAX_VOXELS`).
    """

    def __init__(self, fragment, *args, max_voxels: int = MAX_VOXELS, **kwargs) -> None:
        self.max_voxels = int(max_voxels)
        super().__init__(fragment, *args, **kwargs)

    def filter(self, selection_rules, dicom_study_list, all_matched: bool = True, sort_by_sop_instance_count: bool = False):
        selected = super().filter(selection_rules, dicom_study_list, True, False)
        candidates = []
        for study_sel in selected or []:
            for s in study_sel.selected_series:
                instances = s.series.get_sop_instances()
                if all(str(i.get_native_sop_instance().get("SOPClassUID", "")) == CTImageStorage for i in instances):
                    candidates.append((study_sel.study, s))
        if not candidates:
            damaged = damaged_ct_instance(dicom_study_list)
            if damaged:
                raise CTInputError(f"{damaged}; so no CT series matched the selection (axial ORIGINAL/PRIMARY CT)")
            raise CTInputError(
                "no axial ORIGINAL/PRIMARY CT image series (CT Image Storage) in the input; found "
                + describe_found(dicom_study_list)
            )
        candidates.sort(key=lambda c: (-len(c[1].series.get_sop_instances()), _series_number(c[1].series),
                                       str(c[1].series.SeriesInstanceUID)))
        study, chosen = candidates[0]
        if len(candidates) > 1:
            log.info("%d CT series match; taking the one with the most slices (lowest series number on a tie)",
                     len(candidates))
        check_series(chosen.series, self.max_voxels)
        study.other_ct_instances = [
            i.get_native_sop_instance() for st in dicom_study_list for series in st.get_all_series()
            if series is not chosen.series for i in series.get_sop_instances()
            if str(i.get_native_sop_instance().get("SOPClassUID", "")) == CTImageStorage
        ]  # to name a slice whose damaged UID moved it out of the series (ct_preprocess_operator)
        out = StudySelectedSeries(study)
        out.add_selected_series(SelectedSeries(chosen.selection_name, chosen.series))
        return [out]


RULE_KEYS = ("SOPClassUID", "Modality", "ImageType", "ImageOrientationPatient")
"""The SOP class and the attributes the selection rules read from a series (the SDK takes them
from one instance): one slice unlike the rest of its series on any of them is named."""


def damaged_ct_instance(studies) -> Optional[str]:
    """A CT Image Storage instance that is damaged, or whose rule attribute differs from the rest
    of its series (one bad file can make the whole series fail the rules): a sentence naming
    it, or None."""
    for study in studies or []:
        for series in study.get_all_series():
            dss = [i.get_native_sop_instance() for i in series.get_sop_instances()]
            ct = sum(str(d.get("SOPClassUID", "")) == CTImageStorage for d in dss)
            if not ct or ct <= len(dss) / 2:  # not a CT series (a slice of another class may be damaged)
                continue
            for ds in dss:
                defects = instance_defects(ds)
                if defects:
                    return f"CT file {file_label(ds)} is damaged: {'; '.join(defects[:3])}"
            if len(dss) < 3:
                continue
            for key in RULE_KEYS:
                odd, count = odd_slice(dss, key)
                if odd is not None and count > len(dss) / 2:
                    return (f"CT file {file_label(odd)} has a {key} ({attribute_text(odd, key)[:40]!r}) unlike the "
                            f"other {count} slices of its series (damaged?)")
    return None


def _which(ds) -> str:
    number = ds.get("InstanceNumber")
    return f"instance number {number}" if number not in (None, "") else "instance"


def _series_number(series) -> int:
    try:
        return int(series.get_sop_instances()[0].get_native_sop_instance().get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        return 0
