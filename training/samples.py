"""Build a local sample dataset from registry packages only, in nnU-Net v2 raw layout.

Datasets written under OUT:

- ``Dataset501_LiTS117``: LiTS volume 117 (128^3 HU crop around the liver), labels 1 liver,
  2 liver tumor. The crop carries no spacing or orientation; both are estimated (see
  :data:`LITS117_SPACING` and :data:`LITS117_DIRECTION`) and recorded in dataset.json.
- ``Dataset502_TotalSegLiver``: the TotalSegmentator example CT (3 mm, 30 slices) with its
  predicted liver label (TotalSegmentator class 5) as label 1. Training data for the liver organ
  target. imagesTs/labelsTs hold the TotalSegmentator example DICOM series (a different
  acquisition, 20 slices at 0.98 x 0.98 x 2 mm) and its liver label, for held-out evaluation only.

NIfTI files are written with SimpleITK, whose direction/origin are LPS like DICOM's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np

from .registry_data import lits117, totalseg_sdist_dir

LITS117_SPACING = (1.5, 1.5, 1.5)
"""Estimated (z, y, x) spacing of the LiTS-117 crop, in mm. The crop has no spacing in its
header. Anatomy looks isotropic in all three planes, so one value is estimated: at 1.5 mm the
liver including tumors measures 615 351 voxels = 2.08 l, plausible for a liver with a heavy tumor
burden (normal adult livers are 1.2-1.8 l); 1.0 mm would give 0.62 l (too small for an adult
liver that fills a 128 mm crop) and 2.0 mm 4.9 l (implausible)."""

TOTALSEG_LIVER = 5
"""Liver class in TotalSegmentator v2's 'total' task."""


def lits117_affine(spacing: Sequence[float] = LITS117_SPACING) -> np.ndarray:
    """Affine (d, h, w) -> LPS of the LiTS-117 crop, estimated from anatomy.

    Columns run along the spine (a row of vertebral bodies lies along w; the lung base is at
    high w, the colon at low w): w -> superior. Rows run towards the vertebrae and kidney:
    h -> posterior. Slices run from the liver towards the midline (the spine is at d ~ 85 of
    128, the liver at lower d): d -> patient left. d -> +x, h -> +y, w -> +z. (An earlier
    estimate had d and w swapped; tests/test_datasets.py now checks the spine's direction.)
    """
    a = np.zeros((4, 4))
    a[3, 3] = 1.0
    a[0, 0] = spacing[0]
    a[1, 1] = spacing[1]
    a[2, 2] = spacing[2]
    return a


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a (D, H, W) array with a (d, h, w) -> LPS affine as NIfTI (via SimpleITK)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))  # sitk index (x=w, y=h, z=d)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # (d, h, w)
    direction = affine[:3, :3] / spacing  # columns d, h, w
    img.SetSpacing([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    img.SetDirection(direction[:, [2, 1, 0]].flatten().tolist())
    img.SetOrigin([float(v) for v in affine[:3, 3]])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array (D, H, W), affine (d, h, w) -> LPS) of a NIfTI file."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    sp = np.array(img.GetSpacing())  # x, y, z = w, h, d
    direction = np.array(img.GetDirection()).reshape(3, 3)  # columns along sitk x, y, z
    a = np.zeros((4, 4))
    a[3, 3] = 1.0
    a[:3, :3] = (direction * sp)[:, [2, 1, 0]]
    a[:3, 3] = img.GetOrigin()
    return arr, a


def same_grid(array: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray) -> np.ndarray:
    """``array`` re-indexed onto a grid that covers the same voxels in another axis order/flips.

    Raises if the two grids are not the same set of voxel centres (no resampling is done).
    """
    from tags.geometry import reorientation, to_canonical

    canon, canon_aff, _ = to_canonical(array, affine)
    target = reorientation(target_affine, shape)
    if canon.shape != tuple(shape[p] for p in target.perm) or not np.allclose(
        canon_aff, target.apply_affine(target_affine), atol=1e-3
    ):
        raise ValueError("label and image grids differ (not the same voxels)")
    return np.ascontiguousarray(target.invert(canon))


def _dataset_json(path: Path, name: str, labels: Dict[str, int], n_train: int, extra: dict) -> None:
    d = {
        "name": name,
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **labels},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        **extra,
    }
    (path / "dataset.json").write_text(json.dumps(d, indent=2) + "\n")


def build_lits117(out: Path) -> Path:
    ds = out / "Dataset501_LiTS117"
    img, lab = lits117()
    aff = lits117_affine()
    write_nifti(ds / "imagesTr" / "lits117_0000.nii.gz", img.astype(np.int16), aff)
    write_nifti(ds / "labelsTr" / "lits117.nii.gz", lab.astype(np.uint8), aff)
    _dataset_json(
        ds, "LiTS117", {"liver": 1, "liver_tumor": 2}, 1,
        {
            "source": "PyPI liver-ct-segmentation-package==1.6.0 data/img_117.mrc, lab_117.mrc "
                      "(LiTS volume 117, CC BY-NC-SA 4.0: do not redistribute)",
            "estimated_spacing_mm": list(LITS117_SPACING),
            "spacing_note": "the crop has no spacing; estimated from the liver volume, see training/samples.py",
            "orientation_note": "estimated from anatomy: slices -> patient left, rows -> posterior, columns -> superior (along the spine)",
        },
    )
    return ds


def build_totalseg(out: Path) -> Path:
    ds = out / "Dataset502_TotalSegLiver"
    ref = totalseg_sdist_dir()
    ct, aff = read_nifti(ref / "example_ct_sm.nii.gz")
    seg, _ = read_nifti(ref / "example_seg.nii.gz")
    write_nifti(ds / "imagesTr" / "totalseg_sm_0000.nii.gz", ct.astype(np.int16), aff)
    write_nifti(ds / "labelsTr" / "totalseg_sm.nii.gz", (seg == TOTALSEG_LIVER).astype(np.uint8), aff)
    # Held-out: the example DICOM series as NIfTI (its labels were computed on it).
    from .dicom_series import read_series

    vol, daff = read_series(ref / "example_ct_dicom")
    dseg, saff = read_nifti(ref / "example_seg_dicom.nii.gz")
    dseg = same_grid(dseg, saff, vol.shape, daff)
    write_nifti(ds / "imagesTs" / "totalseg_dicom_0000.nii.gz", vol.astype(np.int16), daff)
    write_nifti(ds / "labelsTs" / "totalseg_dicom.nii.gz", (dseg == TOTALSEG_LIVER).astype(np.uint8), daff)
    _dataset_json(
        ds, "TotalSegLiver", {"liver": 1}, 1,
        {
            "source": "PyPI sdist totalsegmentator==2.18.0 tests/reference_files (labels are TotalSegmentator "
                      "predictions, class 5 liver, not manual annotations)",
            "test_cases": "imagesTs/labelsTs: the example DICOM series, held out for evaluation",
        },
    )
    return ds


def build_atomically(out: str | Path, build: Callable[[Path], Dict[str, str]], overwrite: bool = False) -> Dict[str, Path]:
    """Run ``build(tmp)`` in a temporary sibling of ``out`` and rename it to ``out`` at the end,
    so a failure leaves nothing partial behind. ``build`` returns {name: sub-folder name}."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (use --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        names = build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {k: out / v for k, v in names.items()}


def build_samples(out: str | Path, overwrite: bool = False) -> Dict[str, Path]:
    """Write both sample datasets under ``out`` (atomically); returns {name: dataset folder}."""
    return build_atomically(
        out, lambda tmp: {"lits117": build_lits117(tmp).name, "totalseg": build_totalseg(tmp).name}, overwrite
    )
