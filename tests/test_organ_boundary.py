"""Organ boundary refinement on real CT pixels (the TotalSegmentator example CT and its liver label):
a liver mask shrunk as the coarse organ pass shrinks it grows back towards the label, only by
organ-like voxels near the mask; the choice of its setting prefers none when nothing helps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tags.config import ModelConfig, OrganBoundary
from tags.organ_boundary import refine_boundary
from training.boundary_choice import choose_organ_boundary

from helpers import totalseg_example_liver


@pytest.fixture(scope="module")
def liver():
    """(HU, liver label, spacing) of the TotalSegmentator example CT, canonical."""
    return totalseg_example_liver()


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _shrunk(label):
    """The label one voxel (3 mm) inside its surface in-plane, as a coarse organ mask misses it."""
    return ndimage.binary_erosion(label, structure=np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                                                               [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                               [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool))


def test_a_shrunk_liver_grows_back_with_organ_like_voxels_only(liver):
    hu, label, spacing = liver
    mask = _shrunk(label)
    refined = refine_boundary(mask, hu, spacing, band_mm=3.0, hu_sigmas=2.5)
    added = refined & ~mask
    assert (refined >= mask).all(), "the refinement only adds voxels"
    assert added.any() and _dice(refined, label) > _dice(mask, label) + 0.02
    assert (added & label).sum() > 0.8 * added.sum(), "most added voxels are liver"
    # every added voxel is within the band (one 3 mm voxel along each axis) of the mask
    assert not (added & ~ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))).any()
    # ...and organ-like: no fat, air or bone
    assert hu[added].min() > -20 and hu[added].max() < 150
    # a band narrower than the voxels adds nothing; an empty mask stays empty
    assert (refine_boundary(mask, hu, spacing, band_mm=2.0, hu_sigmas=2.5) == mask).all()
    assert not refine_boundary(np.zeros_like(mask), hu, spacing, band_mm=3.0, hu_sigmas=2.5).any()


def test_the_organ_stays_one_piece(liver):
    """Organ-like voxels in the band but cut off from the mask (another organ's rim, a vessel
    wall) are not added: a one-component mask stays one component."""
    hu, label, spacing = liver
    labels, n = ndimage.label(_shrunk(label))
    mask = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    full = np.ones((3, 3, 3), bool)
    for band, sigmas in ((3.0, 2.5), (5.0, 2.0), (5.0, 3.0)):
        refined = refine_boundary(mask, hu, spacing, band_mm=band, hu_sigmas=sigmas)
        assert ndimage.label(refined, structure=full)[1] == 1, (band, sigmas)
    # an organ-like island two voxels off the mask, separated from it by fat, stays out
    ring = [ndimage.binary_dilation(mask, structure=full, iterations=k) for k in (2, 3)]
    island, moat = ring[1] & ~ring[0], ring[0] & ~mask
    staged = hu.copy()
    staged[moat] = -100.0
    staged[island] = float(np.median(hu[mask]))
    refined = refine_boundary(mask, staged, spacing, band_mm=12.0, hu_sigmas=2.5)
    assert not (refined & island).any() and (refined == mask).all()


def test_a_mask_of_contrast_filled_blood_is_not_grown(liver):
    """A "liver" mask whose interior is not liver-like (a vessel's contrast-filled blood, as the
    organ pass marks on a chest CT) would grow into more blood: outside the organ's plausible
    median HU it stays as it is."""
    hu, label, spacing = liver
    mask = _shrunk(label)
    bright = hu.copy()
    bright[ndimage.binary_dilation(label, iterations=2)] += 400.0  # the mask and its band, vessel-bright
    grown = refine_boundary(mask, bright, spacing, band_mm=5.0, hu_sigmas=2.5)
    assert (grown & ~mask).any()  # without the organ's HU range: grown, as for any organ
    kept = refine_boundary(mask, bright, spacing, band_mm=5.0, hu_sigmas=2.5, hu_range=(-60.0, 200.0))
    assert (kept == mask).all()
    assert (refine_boundary(mask, hu, spacing, band_mm=5.0, hu_sigmas=2.5, hu_range=(-60.0, 200.0)) ==
            refine_boundary(mask, hu, spacing, band_mm=5.0, hu_sigmas=2.5)).all()  # a liver-like one is grown


def test_a_hypodense_lesion_inside_the_mask_is_kept(liver):
    hu, label, spacing = liver
    dark = hu.copy()
    lesion = np.zeros_like(label)
    z, y, x = (int(np.median(a)) for a in np.nonzero(label))
    lesion[z - 2:z + 2, y - 4:y + 4, x - 4:x + 4] = True
    lesion &= label
    dark[lesion] -= 60.0
    refined = refine_boundary(label, dark, spacing, band_mm=5.0, hu_sigmas=2.0)
    assert refined[lesion].all()


def test_the_choice_keeps_no_refinement_unless_it_helps(liver):
    hu, label, spacing = liver
    shrunk = [{"case": "shrunk", "mask": _shrunk(label), "truth": label, "hu": hu, "spacing": spacing}]
    chosen, report = choose_organ_boundary(shrunk, "the example CT")
    assert isinstance(chosen, OrganBoundary) and chosen.band_mm >= 3.0
    assert report["chosen"]["mean_dice"] > report["unrefined_mean_dice"] and "the example CT" in chosen.chosen_on
    exact = [{**shrunk[0], "mask": label}]
    chosen, report = choose_organ_boundary(exact, "the example CT")
    assert chosen is None and report["chosen"]["band_mm"] is None and report["unrefined_mean_dice"] == 1.0


def test_config_round_trip_and_bad_settings():
    cfg = ModelConfig(organ_boundary=OrganBoundary(band_mm=4.0, hu_sigmas=2.0, chosen_on="x"))
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_json(ModelConfig().to_json()).organ_boundary is None
    with pytest.raises(ValueError, match="band_mm"):
        OrganBoundary(band_mm=-1.0)
