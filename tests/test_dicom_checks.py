"""The per-file checks of operators/dicom_checks.py on a real CT file (pydicom's CT_small.dcm),
damaged at the byte level the way a broken PACS or disk damages files, written and read again."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from operators.dicom_checks import element_damage, inconsistent_slice, instance_defects

CT = Path(pydicom.data.get_testdata_file("CT_small.dcm"))


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct(tmp_path: Path) -> Dataset:
    ds = pydicom.dcmread(CT)
    return pydicom.dcmread(_write(ds, tmp_path / "clean.dcm"))


def test_the_real_file_has_no_defect(tmp_path):
    ds = _ct(tmp_path)
    assert instance_defects(ds) == []
    assert element_damage(ds) is None


def test_overwritten_value_representation_is_named(tmp_path):
    data = bytearray(_write(pydicom.dcmread(CT), tmp_path / "clean.dcm").read_bytes())
    at = data.find(b"\x20\x00\x11\x00IS")  # (0020,0011) Series Number, explicit VR
    assert at > 0
    data[at + 4:at + 6] = b"I\xc3"
    (tmp_path / "bad.dcm").write_bytes(bytes(data))
    ds = pydicom.dcmread(tmp_path / "bad.dcm", stop_before_pixels=True)  # pydicom reads it leniently
    why = element_damage(ds)
    assert why is not None and "(0020,0011)" in why and "value representation" in why


def test_length_overrunning_a_sequence_item_is_named(tmp_path):
    ds = pydicom.dcmread(CT)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "P1", "99LOCAL", "protocol"
    ds.PerformedProtocolCodeSequence = Sequence([item])
    data = bytearray(_write(ds, tmp_path / "seq.dcm").read_bytes())
    at = data.find(b"\x08\x00\x02\x01SH")  # Coding Scheme Designator inside the item
    assert at > 0
    data[at + 6:at + 8] = (0x74A5).to_bytes(2, "little")
    (tmp_path / "bad.dcm").write_bytes(bytes(data))
    bad = pydicom.dcmread(tmp_path / "bad.dcm", stop_before_pixels=True)
    why = element_damage(bad)
    assert why is not None and "(0008,0102)" in why and "29861 bytes" in why
    assert element_damage(pydicom.dcmread(tmp_path / "seq.dcm", stop_before_pixels=True)) is None


def test_damaged_sop_class_and_file_meta_disagreement(tmp_path):
    ds = _ct(tmp_path)
    ds.SOPClassUID = "1.2.840.1p008.5.1.4.1.1.2"
    defects = instance_defects(ds)
    assert any(d.startswith("SOPClassUID is not a valid UID") for d in defects), defects
    assert any("MediaStorageSOPClassUID differs from its SOPClassUID" in d for d in defects), defects
    ds = _ct(tmp_path)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    assert instance_defects(ds) == ["its file meta MediaStorageSOPInstanceUID differs from its SOPInstanceUID"]


@pytest.mark.parametrize("key", ["PatientID", "StudyInstanceUID", "StudyDate"])
def test_a_slice_of_another_patient_or_study_is_named_without_its_value(tmp_path, key):
    base = _ct(tmp_path)
    slices = []
    for i in range(5):
        ds = copy.deepcopy(base)
        ds.InstanceNumber = i + 1
        ds.filename = str(tmp_path / f"CT{i:04d}.dcm")
        slices.append(ds)
    assert inconsistent_slice(slices) is None
    odd_value = "1.2.3.999" if key == "StudyInstanceUID" else "20991231" if key == "StudyDate" else "OTHER-PATIENT-77"
    setattr(slices[3], key, odd_value)
    why = inconsistent_slice(slices)
    assert why is not None and "CT0003.dcm (instance number 4)" in why and key in why
    assert odd_value not in why and str(base.get(key)) not in why
