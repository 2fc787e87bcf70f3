"""The SEG aligns with the CT voxel for voxel in every patient position and orientation.

Series are written from real CT pixels (the TotalSegmentator sample) with a known off-centre
sphere (+200 HU) defined in patient coordinates, and an upstream organ SEG of that sphere.
The application runs with --organ-segments. Checked from the output SEG alone, independent of
our array conventions:
- every frame lies at the position of the CT slice it references;
- the organ segment's frames equal the sphere evaluated at the voxel centres computed from the
  CT's own ImagePositionPatient / ImageOrientationPatient / PixelSpacing;
- the tumor segment (untrained model: arbitrary but deterministic) covers the same patient
  coordinates in every axis-aligned variant, since all of them are the same image.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from app import run
from tags.geometry import affine_from_spacing
from training.dicom_series import SeriesInfo, read_series, write_ct_series
from training.sample_study import add_organ_seg

from helpers import app_model_folder, dicom_errors, flipped

CENTRE = np.array([-20.0, 12.0, 105.0])  # LPS mm, off-centre in all three axes
RADIUS = 13.3
SPACING = (2.0, 0.9765625, 0.9765625)
ORIGIN = (-80.0, -70.0, 80.0)

# name: ((flip d, flip h, flip w), patient position)
VARIANTS = {
    "HFS ascending": ((False, False, False), "HFS"),
    "HFS descending": ((True, False, False), "HFS"),
    "rows flipped": ((False, True, False), "HFS"),
    "columns flipped": ((False, False, True), "HFS"),
    "FFS": ((True, False, True), "FFS"),
    "HFP": ((False, True, True), "HFP"),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return app_model_folder(tmp_path_factory.mktemp("models") / "tags")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Canonical real CT pixels (20 x 120 x 120) with the sphere added, and their affine."""
    from training.sample_study import build_totalseg_study

    vol, _ = read_series(build_totalseg_study(tmp_path_factory.mktemp("ts") / "totalseg"))
    crop = vol[:, 170:290, 60:180].astype(np.float32)
    affine = affine_from_spacing(SPACING, ORIGIN)
    crop[_sphere(crop.shape, affine)] += 200.0
    return crop, affine


def _sphere(shape, affine) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1)
    pts = affine[:3, :3] @ idx + affine[:3, 3:4]
    return (np.linalg.norm(pts - CENTRE[:, None], axis=0) < RADIUS).reshape(shape)


def _write_and_run(array, affine, position, folder, out, model, seed):
    write_ct_series(array, affine, folder, SeriesInfo(uid_seed=seed, patient_position=position))
    add_organ_seg(folder, _sphere(array.shape, affine), codes.SCT.Liver, order="instance")
    run(["-i", str(folder), "-o", str(out), "-m", str(model), "--organ-segments"])
    seg = next(out.glob("SEG_*.dcm"))
    cts = sorted(folder.glob("CT*.dcm"))
    assert dicom_errors(seg, cts) == []
    assert dicom_errors(next(out.glob("SR_*.dcm")), [seg, *cts]) == []
    return seg


def _check_seg(seg_path, folder, on_base_grid: bool = True):
    """Frame positions and organ content from the DICOM attributes alone; returns the tumor
    voxels as indices of the base grid (patient coordinates mapped through its affine)."""
    seg = pydicom.dcmread(seg_path)
    cts = {}
    for f in folder.glob("CT*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        cts[ds.SOPInstanceUID] = ds
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    organ_slices, tumor_points = {}, []
    for k, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ct = cts[ref]
        frame_pos = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        assert np.allclose(frame_pos, [float(v) for v in ct.ImagePositionPatient], atol=1e-3)
        assert np.allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                           [float(v) for v in ct.ImageOrientationPatient], atol=1e-4)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        iop = np.array([float(v) for v in ct.ImageOrientationPatient])
        dr, dc = (float(v) for v in ct.PixelSpacing)
        i, j = np.indices((ct.Rows, ct.Columns))
        pts = frame_pos[:, None, None] + iop[:3, None, None] * (j * dc) + iop[3:, None, None] * (i * dr)
        if number == 2:  # organ: the sphere, evaluated at this slice's voxel centres
            truth = np.linalg.norm(pts - CENTRE[:, None, None], axis=0) < RADIUS
            assert np.array_equal(frames[k].astype(bool), truth), f"frame {k}: {(frames[k].astype(bool) != truth).sum()} voxels"
            organ_slices[ref] = True
        else:
            tumor_points.append(pts[:, frames[k] > 0].T)
    # every CT slice the sphere reaches has an organ frame
    for uid, ct in cts.items():
        z = float(ct.ImagePositionPatient[2])
        iop = np.array([float(v) for v in ct.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        dist = abs(np.dot(CENTRE - np.array([float(v) for v in ct.ImagePositionPatient]), normal))
        if dist < RADIUS - 1.0:
            assert uid in organ_slices, f"slice at z {z} cuts the sphere but has no organ frame"
    pts = np.concatenate(tumor_points) if tumor_points else np.zeros((0, 3))
    if not on_base_grid:
        return set()
    base_affine = affine_from_spacing(SPACING, ORIGIN)
    idx = np.linalg.solve(base_affine[:3, :3], (pts - base_affine[:3, 3]).T).T
    assert np.allclose(idx, np.rint(idx), atol=1e-3)  # on the base grid's voxel centres
    return {tuple(int(v) for v in p) for p in np.rint(idx)}


@pytest.fixture(scope="module")
def reference(base, model, tmp_path_factory):
    crop, affine = base
    d = tmp_path_factory.mktemp("ref")
    seg = _write_and_run(crop, affine, "HFS", d / "ct", d / "out", model, "geo-ref")
    tumor = _check_seg(seg, d / "ct")
    assert len(tumor) > 50
    return tumor


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "HFS ascending"])
def test_axis_aligned_variants_align(name, base, reference, model, tmp_path):
    flips, position = VARIANTS[name]
    array, affine = flipped(*base, flips)
    seg = _write_and_run(array, affine, position, tmp_path / "ct", tmp_path / "out", model, f"geo-{name}")
    tumor = _check_seg(seg, tmp_path / "ct")
    assert tumor == reference


def test_oblique_and_anisotropic(base, model, tmp_path):
    """10 degrees about z and 6 degrees about x, non-isotropic pixels: the organ frames still match the
    sphere at each CT voxel centre (the image is resampled by nothing: nearest-axis canonical)."""
    crop, _ = base
    rz, rx = np.radians(10), np.radians(6)
    rot_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    a = affine_from_spacing((2.5, 0.8, 1.1), ORIGIN)
    a[:3, :3] = rot_x @ rot_z @ a[:3, :3]
    seg = _write_and_run(crop, a, "HFS", tmp_path / "ct", tmp_path / "out", model, "geo-oblique")
    _check_seg(seg, tmp_path / "ct", on_base_grid=False)
    summary = json.loads((tmp_path / "out" / "tags_results.json").read_text())
    assert summary["organs"]["liver"]["voxels"] == int(_sphere(crop.shape, a).sum())
