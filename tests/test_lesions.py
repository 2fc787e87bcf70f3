"""Lesion measurements on synthetic lesions placed in real CT pixels (known volumes and axes)."""

from __future__ import annotations

import numpy as np
import pytest

from tags.geometry import affine_from_spacing
from tags.lesions import axial_axes, measure_lesions


def _ellipsoid(shape, spacing, centre_mm, semi_axes_mm, angle_deg=0.0):
    """Mask of an ellipsoid with axes along (z, y', x'), y'/x' rotated in-plane by ``angle_deg``."""
    z, y, x = (np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None])
    z, y, x = z - centre_mm[0], y - centre_mm[1], x - centre_mm[2]
    t = np.radians(angle_deg)
    yr, xr = np.cos(t) * y + np.sin(t) * x, -np.sin(t) * y + np.cos(t) * x
    return (z / semi_axes_mm[0]) ** 2 + (yr / semi_axes_mm[1]) ** 2 + (xr / semi_axes_mm[2]) ** 2 <= 1.0


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (2.5, 0.7, 0.9)])
def test_known_lesions_in_real_ct(lits117, spacing):
    img = lits117[0][:60, :110, :110].astype(np.float32)  # real CT pixels as background
    affine = affine_from_spacing(spacing, (10.0, -20.0, 30.0))
    # (centre mm, semi-axes mm (z, long, short), in-plane angle, HU added)
    specs = [((40, 30, 30), (8, 15, 6), 0.0), ((60, 60, 60), (6, 10, 5), 35.0), ((25, 70, 25), (4, 4, 4), 0.0)]
    masks = [_ellipsoid(img.shape, spacing, c, a, ang) for c, a, ang in specs]
    assert not np.any(masks[0] & masks[1]) and not np.any(masks[1] & masks[2])
    mask = np.any(masks, axis=0)
    hu = img.copy()
    hu[mask] = 60.0 + 10 * np.arange(mask.sum()) % 40  # known values
    organ = np.zeros_like(mask)
    organ[:, :, : int(45 / spacing[2])] = True  # x < 45 mm: holds lesions 1 and 3, not 2
    lesions = measure_lesions(mask, hu, affine, organs={"liver": organ})
    assert len(lesions) == 3
    by_size = sorted(zip(masks, specs), key=lambda t: -t[0].sum())
    voxel_ml = np.prod(spacing) / 1000
    for les, (m, (_, axes, _)) in zip(lesions, by_size):
        assert les.voxels == int(m.sum()) and les.volume_ml == pytest.approx(m.sum() * voxel_ml)
        tol = max(spacing[1:])  # one voxel
        assert abs(les.long_axis_mm - 2 * axes[1]) <= tol, (les.long_axis_mm, axes)
        assert abs(les.short_axis_mm - 2 * axes[2]) <= tol, (les.short_axis_mm, axes)
        assert les.mean_hu == pytest.approx(float(hu[m].mean())) and les.max_hu == float(hu[m].max())
        zs = np.flatnonzero(m.any(axis=(1, 2)))
        assert les.slices == (zs[0], zs[-1])
        assert np.allclose(les.centroid_lps, (affine @ np.append(np.argwhere(m).mean(axis=0), 1))[:3])
    assert lesions[0].organ == "liver" and lesions[0].organ_fraction == 1.0
    assert lesions[1].organ == "none"


def test_minimum_size_and_empty():
    affine = affine_from_spacing((1.0, 1.0, 1.0))
    mask = np.zeros((10, 20, 20), bool)
    mask[2:4, 2:4, 2:4] = True  # 8 voxels = 0.008 ml
    mask[5:9, 10:18, 10:18] = True  # 256 voxels
    hu = np.zeros(mask.shape, np.float32)
    assert len(measure_lesions(mask, hu, affine)) == 2
    big = measure_lesions(mask, hu, affine, min_volume_ml=0.01)
    assert [les.voxels for les in big] == [256]
    assert abs(big[0].long_axis_mm - 8 * np.sqrt(2)) <= 1.0  # 8 x 8 pixel square: its diagonal, within a pixel
    assert measure_lesions(np.zeros_like(mask), hu, affine) == []


def test_single_pixel_and_line():
    assert axial_axes(np.pad(np.ones((1, 1), bool), 2), (0.8, 0.8)) == (0.8, 0.8)
    line = np.zeros((5, 12), bool)
    line[2, 1:11] = True
    la, sa = axial_axes(line, (1.0, 0.5))
    assert la == pytest.approx(5.0) and sa == pytest.approx(1.0)


def test_component_scores_equal_scipys_on_real_ct(lits117):
    """The lesion decision's per-component scores (computed over the candidate voxels only)
    equal scipy.ndimage's over the whole grid: highest and mean probability, and the contrast
    from each component's median HU (odd and even sizes), on LiTS-117's HU with a smooth random
    probability map of many components."""
    from scipy import ndimage

    from tags.lesion_decision import CONNECTIVITY, VOXEL_THRESHOLD, components

    hu, label = lits117
    hu = hu.astype(np.float32)
    rng = np.random.default_rng(0)
    prob = ndimage.gaussian_filter(rng.random(hu.shape, dtype=np.float32), 2.0)
    prob = ((prob - prob.min()) / (prob.max() - prob.min())).astype(np.float32)
    organ = label >= 1
    labels, comps = components(prob, 0.001, hu, organ)
    ref_labels, n = ndimage.label(prob >= VOXEL_THRESHOLD, structure=CONNECTIVITY)
    index = np.arange(1, n + 1)
    sizes = np.bincount(ref_labels.ravel())[1:]
    assert n > 50 and len(set(sizes % 2)) == 2  # many components, odd and even sizes
    assert np.array_equal(labels, ref_labels) and [c.label for c in comps] == list(index)
    assert [c.max_probability for c in comps] == [float(v) for v in ndimage.maximum(prob, ref_labels, index)]
    np.testing.assert_allclose([c.mean_probability for c in comps], ndimage.mean(prob, ref_labels, index), rtol=1e-12)
    assert [c.volume_ml for c in comps] == [float(s) * 0.001 for s in sizes]
    ref = float(np.median(hu[organ & (ref_labels == 0)]))
    assert [c.contrast_hu for c in comps] == [ref - float(v) for v in ndimage.median(hu, ref_labels, index)]
