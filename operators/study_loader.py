"""Study loading: the SDK's DICOMDataLoaderOperator, with a clear message when nothing loads.

The SDK loader skips files that are not DICOM and instances without usable UIDs, each with a
log line; when that leaves no study at all, this subclass says why in one message.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

from tags.preprocessing import CTInputError


def why_nothing_loaded(input_path: Path) -> str:
    files = [p for p in Path(input_path).rglob("*") if p.is_file()]
    if not files:
        return f"the input folder {input_path} holds no files"
    dicom, no_uid = 0, 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        dicom += 1
        if not all(str(ds.get(k, "")).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
            no_uid += 1
    if dicom == 0:
        return f"none of the {len(files)} file(s) in the input folder is a DICOM file (no DICOM instances)"
    if no_uid:
        return (f"{no_uid} of {dicom} DICOM file(s) have an empty StudyInstanceUID, SeriesInstanceUID or "
                "SOPInstanceUID (anonymised too far?); a DICOM Segmentation could not reference them")
    return f"none of the {dicom} DICOM file(s) in the input folder could be loaded"


class StudyLoaderOperator(DICOMDataLoaderOperator):
    """DICOMDataLoaderOperator that raises :class:`CTInputError` naming the problem when no
    study loads (ports as the SDK loader's: output ``dicom_study_list``)."""

    def load_data_to_studies(self, input_path: Path):
        studies = super().load_data_to_studies(Path(input_path))
        if not studies:
            raise CTInputError(why_nothing_loaded(Path(input_path)))
        return studies
