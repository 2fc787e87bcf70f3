"""Read and write single CT series as DICOM files with pydicom (training-side utilities).

The application reads DICOM with the MONAI Deploy SDK's loader; these functions exist so that
the training package can turn a DICOM series into a volume without Holoscan, and so that sample
studies and test series can be written from real CT pixels in any orientation.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def read_series(folder: str | Path) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (HU volume (D, H, W) float32, affine (d, h, w) -> LPS) of the single series in folder.

    Slices are sorted along the slice normal; HU = stored * RescaleSlope + RescaleIntercept.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    ds = [pydicom.dcmread(str(f)) for f in files]
    ds = [d for d in ds if "ImagePositionPatient" in d and "PixelData" in d]
    if len(ds) < 2:
        raise ValueError(f"{folder}: fewer than two image slices with positions")
    iop = np.array(ds[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row, col)
    ds.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    vol = np.stack(
        [d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1)) + float(getattr(d, "RescaleIntercept", 0)) for d in ds]
    )
    p0 = np.array(ds[0].ImagePositionPatient, dtype=float)
    p1 = np.array(ds[1].ImagePositionPatient, dtype=float)
    dr, dc = (float(v) for v in ds[0].PixelSpacing)  # row spacing, column spacing
    a = np.zeros((4, 4))
    a[3, 3] = 1.0
    a[:3, 0] = p1 - p0
    a[:3, 1] = col * dr
    a[:3, 2] = row * dc
    a[:3, 3] = p0
    return vol, a


@dataclass
class SeriesInfo:
    """Identity of a written series (synthetic sample data only: no real patient).

    UIDs left None are generated deterministically from ``uid_seed`` so that rebuilding a
    sample gives the same study.
    """

    patient_name: str = "Sample^CT"
    patient_id: str = "TAGS-SAMPLE"
    study_uid: Optional[str] = None
    series_uid: Optional[str] = None
    frame_of_reference_uid: Optional[str] = None
    series_number: int = 1
    series_description: str = "CT sample"
    study_description: str = "TAGS sample study"
    patient_position: str = "HFS"
    uid_seed: str = "tags-sample"
    extra: dict = field(default_factory=dict)

    def uid(self, kind: str) -> str:
        given = {"study": self.study_uid, "series": self.series_uid, "for": self.frame_of_reference_uid}.get(kind)
        return given or generate_uid(entropy_srcs=[self.uid_seed, kind])


def write_ct_series(
    hu: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    info: SeriesInfo = SeriesInfo(),
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write a (D, H, W) HU volume as one CT series, one file per ``d`` index.

    Args:
        hu: HU values; stored as int16 (rounded), RescaleSlope 1, RescaleIntercept 0.
        affine: (d, h, w, 1) -> LPS mm. Columns h and w give ImageOrientationPatient (column
            and row directions) and PixelSpacing; each slice's ImagePositionPatient is
            ``affine @ (d, 0, 0, 1)``. Any orientation, including oblique and tilted, is written
            as it is.
        transfer_syntax: e.g. JPEG2000Lossless to compress (needs pylibjpeg-openjpeg).
    Returns:
        The written files, in ``d`` order (InstanceNumber = d + 1).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    col_dir, row_dir = a[:3, 1] / spacing[1], a[:3, 2] / spacing[2]
    normal = np.cross(row_dir, col_dir)
    thickness = abs(float(np.dot(a[:3, 0], normal)))
    pixels = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    study_uid, series_uid, for_uid = info.uid("study"), info.uid("series"), info.uid("for")
    files = []
    for d in range(pixels.shape[0]):
        sop_uid = generate_uid(entropy_srcs=[info.uid_seed, series_uid, str(d)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = info.patient_name, info.patient_id, "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.ReferringPhysicianName, ds.StudyDescription = "", info.study_description
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, info.series_number
        ds.SeriesDescription, ds.PatientPosition = info.series_description, info.patient_position
        ds.BodyPartExamined = "ABDOMEN"  # unpaired: Laterality stays absent
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
        ds.Manufacturer = "TAGS sample builder"
        ds.InstanceNumber, ds.AcquisitionNumber = d + 1, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [round(float(v), 6) for v in (a @ np.array([d, 0, 0, 1.0]))[:3]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[2]), 6)]
        ds.SliceThickness = round(thickness, 6)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP = ""
        for k, v in info.extra.items():
            setattr(ds, k, v)
        ds.PixelData = pixels[d].tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = folder / f"CT{d + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
