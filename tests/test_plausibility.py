"""Organ plausibility and the lesion decision, on the TotalSegmentator example DICOM series."""

from __future__ import annotations

import numpy as np
import pytest

from tags.config import LesionDecision
from tags.geometry import to_canonical
from tags.lesion_decision import apply_decision, components, depths_up_to
from tags.plausibility import implausible_organ, lung_base, lung_centre_line
from tags.preprocessing import prepare_ct
from training.dicom_series import read_series
from training.registry_data import totalseg_sdist_dir
from training.samples import read_nifti, same_grid

# TotalSegmentator v2 'total' classes
LIVER, SPLEEN, AORTA, VERTEBRA = 5, 1, 52, 32


@pytest.fixture(scope="module")
def series():
    ref = totalseg_sdist_dir()
    vol, aff = read_series(ref / "example_ct_dicom")
    seg, saff = read_nifti(ref / "example_seg_dicom.nii.gz")
    seg = same_grid(seg, saff, vol.shape, aff)
    ct = prepare_ct(vol, aff)
    return ct, np.ascontiguousarray(ct.reorientation.apply(seg))


def test_the_real_liver_is_plausible(series):
    ct, seg = series
    assert implausible_organ("liver", seg == LIVER, ct.hu, ct.affine, ct.body_box) is None


@pytest.mark.parametrize("cls, words", [(AORTA, "centre line"), (VERTEBRA, "HU"), (SPLEEN, "left")])
def test_other_structures_called_liver_are_refused(series, cls, words):
    ct, seg = series
    mask = seg == cls
    assert mask.any(), "the series labels this structure"
    reason = implausible_organ("liver", mask, ct.hu, ct.affine, ct.body_box)
    assert reason is not None and words in reason


def test_tiny_or_empty_masks_are_refused(series):
    ct, seg = series
    liver = seg == LIVER
    tiny = np.zeros_like(liver)
    idx = np.argwhere(liver)[0]
    tiny[tuple(idx)] = True
    assert "ml" in implausible_organ("liver", tiny, ct.hu, ct.affine, ct.body_box)
    assert "empty" in implausible_organ("liver", np.zeros_like(liver), ct.hu, ct.affine)
    assert implausible_organ("an_organ_without_bounds", liver, ct.hu, ct.affine) is None


@pytest.fixture(scope="module")
def thorax():
    """The TotalSegmentator aorta-report CT above its liver (canonical, 1.5 mm): a real chest
    whose body fills the image's width."""
    from training.samples import AORTA_LIVER_FREE_FROM, read_nifti as nifti

    vol, aff = nifti(totalseg_sdist_dir() / "aorta_report" / "example_ct.nii.gz")
    canon, caff, _ = to_canonical(vol.astype(np.float32), aff)
    caff = caff.copy()
    caff[:3, 3] += caff[:3, 0] * AORTA_LIVER_FREE_FROM
    return np.ascontiguousarray(canon[AORTA_LIVER_FREE_FROM:]), caff


def test_the_lungs_give_the_centre_line_when_the_body_fills_the_image(thorax):
    """The body box touches both sides of the image, so it has no centre; the lungs' centre line
    is mirrored exactly with the image and runs along the spine: within 10 mm of the median
    column of cortical bone (> 700 HU, above contrast-filled vessels) in the back third of the
    chest, vertebrae and the ribs of both sides. A liver's centre lies 45-60 mm from the centre
    line."""
    hu, affine = thorax
    box = prepare_ct(hu, affine).body_box
    assert box[2].start == 0 and box[2].stop == hu.shape[2]
    mid, width = lung_centre_line(hu)
    assert lung_centre_line(hu[:, :, ::-1]) == (hu.shape[2] - 1 - mid, width)
    rows = slice(box[1].start + 2 * (box[1].stop - box[1].start) // 3, box[1].stop)
    spine = float(np.median(np.nonzero(hu[:, rows] > 700)[2]))
    column_mm = float(np.linalg.norm(affine[:3, 2]))
    assert abs(spine - mid) * column_mm < 10.0, (spine, mid)
    assert lung_centre_line(np.full((3, 64, 64), 40.0, np.float32)) is None  # no air: no lungs
    # one lung (the right one filled in, as after a resection): no centre line, not one inside it
    one = np.where((np.arange(hu.shape[2]) < mid) & (hu < -400), 40.0, hu).astype(np.float32)
    assert lung_centre_line(one) is None


def test_a_heart_called_liver_on_a_chest_ct_is_refused(thorax):
    """A "liver" in the left half of the chest (where an organ pass marked the left ventricle's
    wall) is refused with the lungs' centre line; mirrored to the right half, the same mask
    passes the side test."""
    hu, affine = thorax
    box = prepare_ct(hu, affine).body_box
    mid, _ = lung_centre_line(hu)
    z, h, w = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    zc, hc = hu.shape[0] // 4, hu.shape[1] // 2
    offset = 25  # columns (37 mm) to the patient's left of the centre line
    ball = ((z - zc) / 14.0) ** 2 + ((h - hc) / 16.0) ** 2 + ((w - mid - offset) / 16.0) ** 2 <= 1  # 51 ml
    hu_liver = np.where(ball | ball[:, :, ::-1], 60.0, hu).astype(np.float32)  # a liver's HU, for the HU test
    reason = implausible_organ("liver", ball, hu_liver, affine, box)
    assert reason is not None and "lungs' centre line" in reason and "left" in reason, reason
    mirrored = np.ascontiguousarray(ball[:, :, ::-1])
    assert np.nonzero(mirrored)[2].mean() < mid
    assert implausible_organ("liver", mirrored, hu_liver, affine, box) is None


def test_lesion_decision_removes_weak_and_small_components():
    prob = np.zeros((20, 40, 40), np.float32)
    prob[2:8, 2:10, 2:10] = 0.97  # strong, 384 voxels
    prob[12:14, 20:23, 20:23] = 0.6  # weak, 18 voxels
    prob[15, 35, 35] = 0.99  # strong but one voxel
    voxel_ml = 0.001
    _, comps = components(prob, voxel_ml)
    assert sorted(round(c.max_probability, 2) for c in comps) == [0.6, 0.97, 0.99]
    p = prob.copy()
    assert apply_decision(p, LesionDecision(), voxel_ml) == 0 and np.array_equal(p, prob)
    p = prob.copy()
    assert apply_decision(p, LesionDecision(min_max_probability=0.9, min_volume_ml=0.01), voxel_ml) == 2
    assert (p[2:8, 2:10, 2:10] == 0.97).all() and p[12:].max() == 0.0
    # with an organ mask: a strong component that does not touch the organ is not its lesion,
    # one that reaches past the organ's edge (one voxel inside) is kept
    organ = np.zeros(prob.shape, bool)
    organ[0:20, 0:30, 0:30] = True
    organ[2:8, 2:10, 2:9] = False
    p = prob.copy()
    p[5, 32:40, 32:35] = 0.99  # outside the organ, 24 voxels
    p[10, 26:34, 26:29] = 0.98  # 24 voxels, 16 of them past the organ's edge
    _, comps = components(p, voxel_ml, organ=organ)
    assert sorted((round(c.max_probability, 2), c.in_organ) for c in comps) == [
        (0.6, True), (0.97, True), (0.98, True), (0.99, False), (0.99, False)]
    decided = p.copy()
    assert apply_decision(decided, LesionDecision(min_max_probability=0.9, min_volume_ml=0.01), voxel_ml,
                          organ=organ) == 3
    assert (decided[2:8, 2:10, 2:10] == 0.97).all() and (decided[10, 26:34, 26:29] == 0.98).all()
    assert decided[5, 32:40, 32:35].max() == 0.0


def test_lesion_depth_in_the_organ():
    """A component's depth is the distance (mm) from its deepest voxel to the nearest voxel
    outside the organ, on anisotropic spacing; measured within the candidates' box grown by
    the threshold (``depths_up_to``) it is the same up to that value, so a threshold removes the same
    components; a component outside the organ has depth 0."""
    spacing = (2.0, 1.0, 1.0)
    organ = np.zeros((40, 120, 120), bool)
    organ[5:35, 10:110, 10:110] = True  # 60 mm deep along z, 100 mm across
    prob = np.zeros(organ.shape, np.float32)
    prob[18:22, 58:62, 58:62] = 0.99  # centre: slice 20 is 15 slices (30 mm) from the outside along z
    prob[18:22, 10:14, 58:62] = 0.99  # at the organ's edge along y: its deepest voxel 4 mm in
    prob[18:22, 112:116, 58:62] = 0.99  # outside
    labels, comps = components(prob, 0.002, organ=organ)
    exact = depths_up_to(labels, [c.label for c in comps], organ, spacing, 1000.0)  # the box: the whole grid
    assert sorted(exact.values()) == [0.0, 4.0, 30.0]
    near = depths_up_to(labels, [c.label for c in comps], organ, spacing, 10.0)
    assert all((near[k] >= 10) == (exact[k] >= 10) and (exact[k] >= 10 or near[k] == exact[k]) for k in exact)
    decided = prob.copy()
    assert apply_decision(decided, LesionDecision(min_depth_mm=10.0), 0.002, organ=organ, spacing=spacing) == 2
    assert decided[18:22, 58:62, 58:62].min() == 0.99 and decided[:, :50].max() == 0 and decided[:, 100:].max() == 0
    assert comps[0].depth_mm is None  # measured apart
    with pytest.raises(ValueError, match="depth"):
        apply_decision(prob.copy(), LesionDecision(min_depth_mm=10.0), 0.002, organ=organ)


def test_lungs_are_found_when_air_surrounds_the_whole_slice(thorax):
    """A field of view padded with air on every side (a round reconstruction field): the slice's
    border is all air, so the tissue is not a region on the border. It is not counted as lung
    either: the centre line moves with the padding and the lungs' base stays the same."""
    hu, _ = thorax
    padded = np.pad(hu, ((0, 0), (6, 6), (6, 6)), constant_values=-1024.0)
    mid, width = lung_centre_line(hu)
    assert lung_centre_line(padded) == (mid + 6, width)
    assert lung_base(padded) == lung_base(hu)
