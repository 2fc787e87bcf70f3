"""Library functions that replaced hand-written code give the same results on real data.

- ``tags.preprocessing.normalize_hu`` (MONAI ScaleIntensityRange) and ``bounding_box`` (MONAI
  generate_spatial_bounding_box) against the former hand-written versions, kept in this file as the
  reference, on real CT: the TotalSegmentator example CT with its organ labels and LiTS 117.
- ``operators.seg_summary`` (highdicom decoding) against the former pydicom frame counting, on
  a SEG written from the TotalSegmentator DICOM series with its real liver label.
- The SDK-free modules import neither ``monai.deploy`` nor ``holoscan``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import SegmentationStorage

from tags.config import ModelConfig, PreprocessingConfig
from tags.geometry import to_canonical
from tags.preprocessing import BODY_HU, bounding_box, normalize_hu, prepare_ct

REPO = Path(__file__).resolve().parents[1]
DEMO_WINDOW = PreprocessingConfig().hu_window
WINDOWS = [DEMO_WINDOW, (-1000.0, 1000.0), (-57, 143)]


# -- the former hand-written code (the reference) ------------------------------------------------


def reference_normalize_hu(volume_hu, window):
    lo, hi = float(window[0]), float(window[1])
    if isinstance(volume_hu, torch.Tensor):
        return (volume_hu.float().clamp(lo, hi) - lo) / (hi - lo)
    return ((np.clip(volume_hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def reference_bounding_box(mask, margin_mm, spacing):
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        m = int(np.ceil(margin_mm / spacing[axis]))
        box.append(slice(max(0, idx[0] - m), min(mask.shape[axis], idx[-1] + 1 + m)))
    return tuple(box)


def reference_seg_counts(seg_path) -> dict:
    """{segment label: voxels} by decoding the SEG frames with pydicom."""
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]

    def segment_of(frame) -> int:
        item = frame if "SegmentIdentificationSequence" in frame else shared
        return int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)

    numbers = [segment_of(f) for f in seg.PerFrameFunctionalGroupsSequence]
    return {str(s.SegmentLabel): int(sum(int(frames[i].sum()) for i, k in enumerate(numbers) if k == int(s.SegmentNumber)))
            for s in seg.SegmentSequence}


# -- real data -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def totalseg_ct():
    """The TotalSegmentator example CT (112 slices at 3 mm), canonical, with its liver label."""
    from training.registry_data import totalseg_sdist_dir
    from training.samples import TOTALSEG_LIVER, read_nifti

    ref = totalseg_sdist_dir()
    ct, affine = read_nifti(ref / "example_ct.nii.gz")
    labels, _ = read_nifti(ref / "example_seg_fast_force_split.nii.gz")
    prepared = prepare_ct(ct, affine)
    liver = np.ascontiguousarray(to_canonical(labels, affine)[0]) == TOTALSEG_LIVER
    assert liver.sum() > 10000 and prepared.hu.min() < -900 and prepared.hu.max() > 1000
    return prepared, liver


def _bit_identical(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return type(b) is torch.Tensor and a.dtype == b.dtype == torch.float32 and torch.equal(
            a.view(torch.int32), b.view(torch.int32))
    return type(b) is np.ndarray and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("window", WINDOWS)
def test_normalize_hu_is_bit_identical_on_real_ct(totalseg_ct, lits117, window):
    prepared, _ = totalseg_ct
    for volume in (prepared.hu, lits117[0], prepared.hu.astype(np.int16), prepared.hu[::-1, :, 5:60]):
        assert _bit_identical(reference_normalize_hu(volume, window), normalize_hu(volume, window))
        tensor = torch.from_numpy(np.ascontiguousarray(volume))
        assert _bit_identical(reference_normalize_hu(tensor, window), normalize_hu(tensor, window))


def test_bounding_box_is_the_same_on_real_ct_masks(totalseg_ct, lits117):
    prepared, liver = totalseg_ct
    sp = prepared.spacing
    cases = [
        (prepared.hu > BODY_HU, 0.0, sp),  # the body box of prepare_ct
        (liver, PreprocessingConfig().margin_mm, sp),  # an organ ROI as the predictor crops it
        (liver, 4.0, (2.5, 0.7, 0.9)),  # margins that are not whole voxels
        (liver, 200.0, sp),  # a margin beyond the array: clipped
        (liver[:, :, :40], 10.0, sp),  # the organ touching the array's edge
        (np.zeros_like(liver), 10.0, sp),  # empty: None
        (lits117[1] == 2, 10.0, (1.0, 0.78, 0.78)),  # LiTS 117 tumor label
    ]
    for mask, margin, spacing in cases:
        want = reference_bounding_box(mask, margin, spacing)
        assert bounding_box(mask, margin, spacing) == want, (margin, spacing)
    assert reference_bounding_box(liver, 10.0, sp) != tuple(slice(0, n) for n in liver.shape)  # a real crop


def test_seg_summary_counts_the_same_voxels_as_the_frames(tmp_path):
    from operators.ct_preprocess_operator import prepare_series
    from operators.seg_summary import summarize
    from operators.seg_writer import RESULTS_JSON, write_seg
    from operators.seg_writer_operator import summary
    from operators.types import Segmentation, TargetOutcome
    from tags.targets import organ_target, tumor_target
    from training.dicom_series import read_series
    from training.registry_data import totalseg_sdist_dir
    from training.sample_study import build_totalseg_study
    from training.samples import TOTALSEG_LIVER, read_nifti, same_grid

    study = build_totalseg_study(tmp_path / "study")
    volume, affine = read_series(study)
    datasets = [pydicom.dcmread(f) for f in sorted(study.iterdir())]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))  # as read_series
    ct = prepare_series(volume, datasets)
    labels, label_affine = read_nifti(totalseg_sdist_dir() / "example_seg_dicom.nii.gz")
    liver = ct.prepared.reorientation.apply(same_grid(labels, label_affine, volume.shape, affine) == TOTALSEG_LIVER)
    tumor = np.zeros_like(liver)
    tumor[4:9, 250:262, 120:140] = True
    tumor[14, 300, 100] = True
    p = ct.prepared

    for name, tumor_mask in (("lesions", tumor & liver), ("empty", np.zeros_like(liver))):
        result = Segmentation(
            ct=ct, tumors=[TargetOutcome(tumor_target("liver", 2), tumor_mask, "ok", "test", p.voxel_ml)],
            organs=[TargetOutcome(organ_target("liver", 1), liver, "ok", "test", p.voxel_ml)],
            model_name="TAGS test", model_version="0" * 12, hu_window=DEMO_WINDOW,
        )
        out = tmp_path / name
        path, seg = write_seg(result, out, include_organs=True)
        assert seg.SOPClassUID == SegmentationStorage == "1.2.840.10008.5.1.4.1.1.66.4"
        (out / RESULTS_JSON).write_text(json.dumps(summary(result, path.name)))
        counts = reference_seg_counts(path)
        assert counts == {"liver tumor": int(tumor_mask.sum()), "liver": int(liver.sum())}
        voxel_ml = float(np.prod(json.loads((out / RESULTS_JSON).read_text())["ct"]["spacing_mm"])) / 1000.0
        assert summarize(out) == [f"SEG: {path}"] + [
            f"  {label}: {n} voxels, {n * voxel_ml:.2f} ml" for label, n in counts.items()]


def test_the_demo_models_window_is_the_former_preview_literal():
    config = ModelConfig.from_json((REPO / "models" / "liver-demo" / "config.json").read_text())
    assert tuple(config.preprocessing.hu_window) == (-160.0, 240.0)  # operators/preview.py's former WINDOW


def test_the_writers_and_types_import_no_sdk():
    code = ("import sys\n"
            "import operators.types, operators.seg_writer, operators.lesion_report, operators.preview, "
            "operators.seg_summary, tags.preprocessing\n"
            "print(sorted(m for m in sys.modules if m == 'holoscan' or m.startswith(('holoscan.', 'monai.deploy'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
