"""Checks of each CT instance before its values reach the volume, the SEG or the SR.

A PACS can send damaged files: a UID with garbage bytes in it, a position that is not a number,
a rescale slope of zero. Whatever the SEG and SR will copy (UIDs) and whatever the geometry and
the volume rely on (spacing, position, orientation, size, bit depth, rescale) is checked by this module,
and a defect is reported with the file's name and instance number, never as a raw library
message and never as a gap in the series.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
from pydicom.multival import MultiValue
from pydicom.uid import UID

log = logging.getLogger(__name__)

UID_KEYS = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
META_KEYS = (("MediaStorageSOPClassUID", "SOPClassUID"), ("MediaStorageSOPInstanceUID", "SOPInstanceUID"))
"""File meta UIDs that must repeat the dataset's (PS3.10 7.1); a difference means damage."""
MAX_SIDE = 8192
MAX_SPACING_MM = 100.0
MAX_POSITION_MM = 1e5


def file_label(ds) -> str:
    """'CT0007.dcm (instance number 7)': the file's name and its instance number when readable."""
    name = Path(str(getattr(ds, "filename", "") or "")).name or "a CT file"
    try:
        number = ds.get("InstanceNumber")
    except Exception:  # noqa: BLE001 - a damaged value is reported elsewhere
        number = None
    return f"{name} (instance number {number})" if number not in (None, "") else name


def uid_problem(value) -> Optional[str]:
    """Why ``value`` is not a valid DICOM UI value (digits and dots, components without leading
    zeros, at most 64 characters), or None."""
    text = str(value)
    if not text:
        return "is empty"
    if len(text) > 64:
        return f"is {len(text)} characters long (at most 64)"
    if not UID(text).is_valid:
        shown = text.encode("ascii", "backslashreplace").decode()[:40]
        return f"is not a valid UID ({shown!r}: only digits and dots, no leading zeros)"
    return None


def _numbers(ds, key: str, count: int) -> Tuple[Optional[List[float]], Optional[str]]:
    try:
        raw = ds[key].value
        items = raw if isinstance(raw, (list, tuple, MultiValue)) else [raw]
        values = [float(v) for v in items]
    except Exception:  # noqa: BLE001 - damaged bytes or text
        return None, f"{key} cannot be read as numbers"
    if len(values) != count:
        return None, f"{key} has {len(values)} value(s), {count} expected"
    if not all(math.isfinite(v) for v in values):
        return None, f"{key} is not finite"
    return values, None


def instance_defects(ds) -> List[str]:
    """Every defect of one CT instance that would corrupt the volume or the derived objects."""
    return _identity_defects(ds) + _geometry_defects(ds) + _pixel_format_defects(ds)


def _identity_defects(ds) -> List[str]:
    """UIDs, the file meta's agreement with them, and the transfer syntax."""
    out = []
    for key in UID_KEYS + (("FrameOfReferenceUID",) if "FrameOfReferenceUID" in ds else ()):
        try:
            why = uid_problem(ds.get(key, ""))
        except Exception:  # noqa: BLE001
            why = "cannot be read"
        if why:
            out.append(f"{key} {why}")
    meta = getattr(ds, "file_meta", None)
    for meta_key, key in META_KEYS if meta is not None else ():
        try:
            if meta_key in meta and str(meta[meta_key].value) != str(ds.get(key, "")):
                out.append(f"its file meta {meta_key} differs from its {key}")
        except Exception:  # noqa: BLE001
            out.append(f"its file meta {meta_key} cannot be read")
    try:
        ts = ds.file_meta.TransferSyntaxUID
        if not UID(str(ts)).is_transfer_syntax:
            out.append(f"its transfer syntax {str(ts)[:40]!r} is not a known DICOM transfer syntax")
    except Exception:  # noqa: BLE001
        out.append("its file meta has no readable TransferSyntaxUID")
    return out


def _geometry_defects(ds) -> List[str]:
    """PixelSpacing, ImagePositionPatient and ImageOrientationPatient."""
    out = []
    spacing, why = _numbers(ds, "PixelSpacing", 2) if "PixelSpacing" in ds else (None, None)
    if why:
        out.append(why)
    elif spacing and not all(0 < v <= MAX_SPACING_MM for v in spacing):
        out.append(f"PixelSpacing {spacing} is outside (0, {MAX_SPACING_MM:g}] mm")
    position, why = _numbers(ds, "ImagePositionPatient", 3) if "ImagePositionPatient" in ds else (None, None)
    if why:
        out.append(why)
    elif position and max(abs(v) for v in position) > MAX_POSITION_MM:
        out.append(f"ImagePositionPatient {position} is implausibly far from the origin")
    orientation, why = _numbers(ds, "ImageOrientationPatient", 6) if "ImageOrientationPatient" in ds else (None, None)
    if why:
        out.append(why)
    elif orientation:
        r, c = np.array(orientation[:3]), np.array(orientation[3:])
        if abs(np.linalg.norm(r) - 1) > 0.01 or abs(np.linalg.norm(c) - 1) > 0.01 or abs(float(r @ c)) > 0.01:
            out.append(f"ImageOrientationPatient {orientation} is not two orthogonal unit vectors")
    return out


def _pixel_format_defects(ds) -> List[str]:
    """Rows, Columns, bit depths and the rescale."""
    out = []
    for key in ("Rows", "Columns"):
        try:
            v = int(ds[key].value) if key in ds else None
        except Exception:  # noqa: BLE001
            out.append(f"{key} cannot be read")
            continue
        if v is not None and not 1 <= v <= MAX_SIDE:
            out.append(f"{key} {v} is outside 1..{MAX_SIDE}")
    try:
        bits = int(ds.get("BitsAllocated", 16))
        stored = int(ds.get("BitsStored", bits))
        if bits not in (8, 16, 32) or not 1 <= stored <= bits:
            out.append(f"BitsAllocated {bits} / BitsStored {stored} are not a CT pixel format")
    except Exception:  # noqa: BLE001
        out.append("BitsAllocated or BitsStored cannot be read")
    for key, nonzero in (("RescaleSlope", True), ("RescaleIntercept", False)):
        if key in ds:
            try:
                v = float(ds[key].value)
            except Exception:  # noqa: BLE001
                out.append(f"{key} cannot be read as a number")
                continue
            if not math.isfinite(v) or (nonzero and v == 0):
                out.append(f"{key} {v} is not usable")
    return out


def element_damage(ds) -> Optional[str]:
    """Why the header elements of ``ds`` (as pydicom parsed them, sequences included) are not
    valid DICOM encoding, or None.

    pydicom parses a damaged header leniently: an element whose VR bytes were overwritten is
    kept with an unknown VR (its value fails only when used), and an element whose length field
    was overwritten inside a sequence item is cut at the item's end. Other toolkits (and PACS)
    refuse such files, so an object referencing them cannot be checked against them.
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.valuerep import VR

    known = {v.value for v in VR}
    pending = [ds]
    while pending:
        current = pending.pop()
        for tag, elem in list(current._dict.items()):
            where = f"({tag.group:04X},{tag.element:04X})"
            if isinstance(elem, RawDataElement):
                if elem.VR is not None and elem.VR not in known:
                    shown = str(elem.VR).encode("ascii", "backslashreplace").decode()
                    return f"its element {where} has no valid value representation ({shown!r})"
                if elem.value is not None and elem.length != 0xFFFFFFFF and len(elem.value) != elem.length:
                    return (f"its element {where} claims {elem.length} bytes but only {len(elem.value)} follow "
                            "(a damaged length)")
            try:
                converted = current[tag]
            except Exception as e:  # noqa: BLE001 - any value pydicom cannot convert
                return f"its element {where} cannot be read ({type(e).__name__})"
            if converted.VR == "SQ":
                pending.extend(converted.value)
    return None


PATIENT_STUDY_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName",
)
"""Patient and study attributes the SEG and SR copy from the series: every slice must agree."""


def attribute_text(ds, key: str) -> str:
    """``key``'s value as text (multiple values joined by backslashes), "<unreadable>" when damaged."""
    try:
        v = ds.get(key)
        return "\\".join(map(str, v)) if isinstance(v, (list, tuple, MultiValue)) else str(v)
    except Exception:  # noqa: BLE001 - a damaged value
        return "<unreadable>"


def odd_slice(datasets: List, key: str) -> Tuple[Optional[object], int]:
    """(the first dataset whose ``key`` differs from the most common value, or None; how many
    datasets hold that most common value)."""
    values = [attribute_text(ds, key) for ds in datasets]
    majority, count = Counter(values).most_common(1)[0]
    return next((ds for ds, v in zip(datasets, values) if v != majority), None), count


def inconsistent_slice(datasets: List) -> Optional[str]:
    """A sentence naming the first slice whose patient or study attributes differ from the
    majority of its series (a damaged or misfiled slice), or None. Names the attribute, never
    its value: no patient identifiers in messages."""
    if len(datasets) < 3:
        return None
    for key in PATIENT_STUDY_KEYS:
        odd, count = odd_slice(datasets, key)
        if odd is not None:
            return (f"CT file {file_label(odd)} has a {key} unlike {count} other slice(s) of its series "
                    "(a damaged or misfiled slice)")
    return None


def check_instances(datasets: Iterable) -> None:
    """Raise :class:`~tags.preprocessing.CTInputError` naming the first damaged instance."""
    from tags.preprocessing import CTInputError

    datasets = list(datasets)
    for ds in datasets:
        defects = instance_defects(ds)
        if defects:
            raise CTInputError(f"CT file {file_label(ds)} is damaged: {'; '.join(defects[:3])}")
    odd = inconsistent_slice(datasets)
    if odd:
        raise CTInputError(odd)


def find_undecodable(datasets: Iterable) -> Optional[str]:
    """The label and reason of the first instance whose pixel data cannot be decoded and
    rescaled, or None (used only after the volume could not be built, to name the file)."""
    for ds in datasets:
        try:
            arr = ds.pixel_array
            rows, cols = int(ds.Rows), int(ds.Columns)
            if arr.shape[-2:] != (rows, cols):
                return f"{file_label(ds)}: pixel data of shape {arr.shape} for {rows} x {cols}"
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            if not np.isfinite(arr.astype(np.float64) * slope + intercept).all():
                return f"{file_label(ds)}: rescaled pixel values are not finite"
        except Exception as e:  # noqa: BLE001 - any decoder failure names the file
            log.debug("decoding %s failed", file_label(ds), exc_info=True)
            return f"{file_label(ds)}: its pixel data cannot be decoded ({type(e).__name__})"
    return None
