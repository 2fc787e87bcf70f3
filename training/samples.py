"""Build a local sample dataset from registry packages only, in nnU-Net v2 raw layout.

Datasets written under OUT:

- ``Dataset501_LiTS117``: LiTS volume 117 (128^3 HU crop around the liver), labels 1 liver,
  2 liver tumor. The crop carries no spacing or orientation; both are estimated (see
  :data:`LITS117_SPACING` and :data:`LITS117_DIRECTION`) and recorded in dataset.json.
- ``Dataset502_TotalSegLiver``: healthy livers from the TotalSegmentator source distribution,
  split by patient into train / validation / test (see :func:`build_totalseg`), label 1 liver.

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
            "cases": {"lits117": {"split": "train (first 60 % of canonical slices in the demo), validation and "
                                           "test along z (see training/demo.py)",
                                  "licence": "CC BY-NC-SA 4.0 (LiTS): do not redistribute"}},
        },
    )
    return ds


AORTA_LIVER_DOME = 58
"""Highest canonical slice (inferior first) of the TotalSegmentator aorta-report CT with liver:
the liver dome (checked on sagittal slices through the right lobe)."""

AORTA_LIVER_FREE_FROM = 70
"""First canonical slice (inferior first) of the TotalSegmentator aorta-report CT above the
liver dome (:data:`AORTA_LIVER_DOME`), so slices 70-190 (18 mm and more above it) hold no liver.
They train the organ pass on a thorax; slices 0-69 (liver, spleen, stomach, no liver label) are a validation case for false-positive
tumors, with the organ prompt from the model's organ pass."""

TOTALSEG_LICENCE = "TotalSegmentator 2.18.0 source distribution (Apache-2.0), tests/reference_files"


def build_totalseg(out: Path) -> Path:
    """Healthy livers from the TotalSegmentator source distribution, split by patient.

    - train ``totalseg_ct``: example_ct.nii.gz (112 slices at 3 mm, pelvis to upper abdomen,
      unenhanced), liver = class 5 of example_seg_fast_force_split.nii.gz (TotalSegmentator
      "fast" predictions on the same CT). example_ct_sm.nii.gz is its first 30 slices (same
      origin and grid), so it is not used beside it.
    - train ``aorta_thorax``: the aorta-report CT (1.5 mm, thorax to upper abdomen, contrast
      enhanced, another patient) from :data:`AORTA_LIVER_FREE_FROM` up: no liver (organ_free).
    - validation ``aorta_abdomen``: the same CT below that slice, liver unlabelled.
    - test ``totalseg_dicom``: the example DICOM series (20 slices, 0.98 x 0.98 x 2 mm, portal
      venous phase: liver 89 HU, aorta 177 HU) with its liver label. Not the patient of
      example_ct as far as can be told: another acquisition (unenhanced there: liver 44 HU,
      aorta 42 HU), another scanner frame of reference (origins 900 mm apart along z) and
      another field of view; the anatomy cannot be registered across 20 slices to prove it.

    Every case is tumor-free (dataset.json ``tumor_free``): no liver lesion is visible in any
    of them, so their tumor masks are empty, not unknown.
    """
    from tags.geometry import to_canonical

    from .dicom_series import read_series

    ds = out / "Dataset502_TotalSegLiver"
    ref = totalseg_sdist_dir()
    ct, aff = read_nifti(ref / "example_ct.nii.gz")
    seg, _ = read_nifti(ref / "example_seg_fast_force_split.nii.gz")
    write_nifti(ds / "imagesTr" / "totalseg_ct_0000.nii.gz", ct.astype(np.int16), aff)
    write_nifti(ds / "labelsTr" / "totalseg_ct.nii.gz", (seg == TOTALSEG_LIVER).astype(np.uint8), aff)
    aorta, aaff = read_nifti(ref / "aorta_report" / "example_ct.nii.gz")
    canon, caff, _ = to_canonical(aorta, aaff)
    cut = AORTA_LIVER_FREE_FROM
    thorax_aff = caff.copy()
    thorax_aff[:3, 3] += caff[:3, 0] * cut
    write_nifti(ds / "imagesTr" / "aorta_thorax_0000.nii.gz", canon[cut:].astype(np.int16), thorax_aff)
    write_nifti(ds / "labelsTr" / "aorta_thorax.nii.gz", np.zeros(canon[cut:].shape, np.uint8), thorax_aff)
    write_nifti(ds / "imagesTr" / "aorta_abdomen_0000.nii.gz", canon[:cut].astype(np.int16), caff)
    # Held-out: the example DICOM series as NIfTI (its labels were computed on it).
    vol, daff = read_series(ref / "example_ct_dicom")
    dseg, saff = read_nifti(ref / "example_seg_dicom.nii.gz")
    dseg = same_grid(dseg, saff, vol.shape, daff)
    write_nifti(ds / "imagesTs" / "totalseg_dicom_0000.nii.gz", vol.astype(np.int16), daff)
    write_nifti(ds / "labelsTs" / "totalseg_dicom.nii.gz", (dseg == TOTALSEG_LIVER).astype(np.uint8), daff)
    _dataset_json(
        ds, "TotalSegLiver", {"liver": 1}, 2,
        {
            "source": "PyPI sdist totalsegmentator==2.18.0 tests/reference_files (labels are TotalSegmentator "
                      "predictions, class 5 liver, not manual annotations)",
            "validation": ["aorta_abdomen"],
            "tumor_free": ["totalseg_ct", "aorta_thorax", "aorta_abdomen", "totalseg_dicom"],
            "organ_free": ["aorta_thorax"],
            "cases": {
                "totalseg_ct": {"split": "train", "file": "example_ct.nii.gz",
                                "label": "example_seg_fast_force_split.nii.gz class 5", "licence": TOTALSEG_LICENCE},
                "aorta_thorax": {"split": "train", "file": f"aorta_report/example_ct.nii.gz slices {cut}-",
                                 "label": "none: no liver in these slices", "licence": TOTALSEG_LICENCE},
                "aorta_abdomen": {"split": "validation", "file": f"aorta_report/example_ct.nii.gz slices 0-{cut - 1}",
                                  "label": "none (tumor-free; liver from the model's organ pass)",
                                  "licence": TOTALSEG_LICENCE},
                "totalseg_dicom": {"split": "test", "file": "example_ct_dicom/ (20 DICOM slices)",
                                   "label": "example_seg_dicom.nii.gz class 5", "licence": TOTALSEG_LICENCE},
            },
            "patients": "totalseg_ct; aorta_thorax + aorta_abdomen (one patient: the thorax trains the organ "
                        "pass only, the abdomen validates tumor false positives); totalseg_dicom (test only)",
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
