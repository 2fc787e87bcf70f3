"""Synthetic liver tumors on real CT pixels (the TotalSegmentator example CT and LiTS-117)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.synthetic_tumors import SIZE_CLASSES, SynthesizeLiverTumors

from helpers import totalseg_example_liver

SPACING = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def healthy():
    """(HU, liver, spacing) of the TotalSegmentator example CT, canonical, a tumor-free liver."""
    return totalseg_example_liver()


def _run(healthy, seed, **kw):
    hu, liver, spacing = healthy
    t = SynthesizeLiverTumors(prob=1.0, **kw)
    t.set_random_state(seed=seed)
    new, tumor = t(hu, liver, spacing)
    return t, new, tumor


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_changes_stay_in_the_liver_and_tumor_is_where_hu_dropped(healthy, seed):
    hu, liver, _ = healthy
    t, new, tumor = _run(healthy, seed)
    assert t.tumors and tumor.any()
    changed = new != hu
    assert changed.any()
    assert not (changed & ~liver).any(), "a voxel outside the liver changed"
    assert not (tumor & ~liver).any(), "a tumor label outside the liver"
    assert (new <= hu).all(), "synthetic tumors only lower HU (hypodense)"
    drop = (hu - new)[tumor]
    assert np.median(drop) > 5.0, "labelled tumor voxels must be darker than before"
    assert (hu - new)[tumor].mean() > 3 * max((hu - new)[liver & ~tumor].mean(), 0.1)


@pytest.mark.parametrize("size_class", ["tiny", "small", "medium", "large"])
def test_sizes_fall_in_their_class(healthy, size_class):
    _, liver, spacing = healthy
    t, _, tumor = _run(healthy, 5, choices=[size_class])
    lo_count, hi_count = SIZE_CLASSES[size_class]["count"]
    assert lo_count <= len(t.tumors) <= hi_count
    base = SIZE_CLASSES[size_class]["radius_mm"][0]
    for tum in t.tumors:
        assert all(0.75 * base - 1e-6 <= r <= 1.25 * base + 1e-6 for r in tum.radii_mm)
        # The deformed, liver-clipped shape is at most the ellipsoid grown by its deformation
        # (three displacement fields of up to about 3 sigma each, sigma in mm) and a voxel.
        grow = 3 * 3 * SIZE_CLASSES[size_class]["sigma"][1] + max(spacing)
        max_mm3 = 4 / 3 * np.pi * np.prod(np.array(tum.radii_mm) + grow)
        assert tum.voxels * np.prod(spacing) <= max_mm3
    ml = tumor.sum() * np.prod(spacing) / 1000
    ellipsoid_ml = 4 / 3 * np.pi * (0.75 * base) ** 3 / 1000
    assert ml > 0.05 * ellipsoid_ml


def test_same_seed_same_result(healthy):
    _, a, ta = _run(healthy, 7)
    _, b, tb = _run(healthy, 7)
    _, c, tc = _run(healthy, 8)
    assert np.array_equal(a, b) and np.array_equal(ta, tb)
    assert not np.array_equal(ta, tc)


def test_centres_lie_in_the_middle_of_the_liver(healthy):
    _, liver, _ = healthy
    z = np.flatnonzero(liver.any(axis=(1, 2)))
    t, _, _ = _run(healthy, 11, choices=["tiny"])
    for tum in t.tumors:
        frac = (tum.centre[0] - z[0]) / (z[-1] - z[0])
        assert 0.3 - 0.05 <= frac <= 0.7 + 0.05
        assert liver[tum.centre]


def test_a_liver_with_tumor_labels_is_left_alone(lits117):
    img, lab = lits117
    t = SynthesizeLiverTumors(prob=1.0)
    t.set_random_state(seed=0)
    new, tumor = t(img, lab >= 1, SPACING, tumor=lab == 2)
    assert np.array_equal(new, img) and np.array_equal(tumor, lab == 2) and not t.tumors


def test_prob_zero_and_no_liver_change_nothing(healthy):
    hu, liver, spacing = healthy
    t = SynthesizeLiverTumors(prob=0.0)
    new, tumor = t(hu, liver, spacing)
    assert np.array_equal(new, hu) and not tumor.any()
    new, tumor = SynthesizeLiverTumors(prob=1.0)(hu, np.zeros_like(liver), spacing)
    assert np.array_equal(new, hu) and not tumor.any()


def test_lesions_are_connected_blobs(healthy):
    _, _, tumor = _run(healthy, 3, choices=["medium"])
    labels, n = ndimage.label(tumor)
    assert 1 <= n <= 5 * 3  # each tumor one blob or a few pieces where the liver clips it
