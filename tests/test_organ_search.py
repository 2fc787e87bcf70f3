"""Organ search: window rows along the slices, run outward from the expected slice until the
organ's extent lies inside them; equal to MONAI's sliding window when every row runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers.utils import sliding_window_inference

from tags.geometry import spacing_from_affine, to_canonical
from tags.inference import TagsPredictor, WindowPolicy
from tags.inference.organ_search import NOT_RUN_LOGIT, expected_slice, search_rows, window_rows
from tags.plausibility import lung_base
from tags.preprocessing import prepare_ct
from training.dicom_series import read_series
from training.registry_data import totalseg_sdist_dir
from training.samples import AORTA_LIVER_DOME, read_nifti

REPO = Path(__file__).resolve().parents[1]
WINDOW = (40, 32, 32)


def _window_dependent(x: torch.Tensor) -> torch.Tensor:
    """Logits that depend on the whole window (its mean), so the blend of overlaps matters."""
    return (x - x.mean(dim=(2, 3, 4), keepdim=True)) * 5.0


def _row_runner(inputs: torch.Tensor, ran: list):
    def run_row(r: slice) -> torch.Tensor:
        ran.append((r.start, r.stop))
        return sliding_window_inference(inputs[:, :, r], roi_size=WINDOW, sw_batch_size=1, overlap=(0.0, 0.25, 0.25),
                                        mode="gaussian", predictor=_window_dependent)[0, 0]
    return run_row


def test_every_row_run_equals_monai_over_the_whole_roi():
    """No organ found anywhere: every row runs, and the rows blended along the slices equal one
    ``sliding_window_inference`` over the ROI (the same window places, the same Gaussian
    weights)."""
    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(1, 1, 72, 40, 50, generator=g)
    overlap = 7.5 / WINDOW[0]
    rows = window_rows(72, WINDOW[0], overlap)
    assert [(r.start, r.stop) for r in rows] == [(0, 40), (32, 72)]
    ran = []
    logits, n = search_rows(rows, _row_runner(inputs, ran), shape=(72, 40, 50), expected=0, min_voxels=10**9)
    assert n == 2 and ran == [(0, 40), (32, 72)]
    full = sliding_window_inference(inputs, roi_size=WINDOW, sw_batch_size=1, overlap=(overlap, 0.25, 0.25),
                                    mode="gaussian", predictor=_window_dependent)[0, 0]
    # equal but where MONAI floors its 3D Gaussian weights at 1e-3 of the peak (the windows'
    # corners), which a product of per-axis weights does not
    assert (logits - full).abs().max() < 1e-2 * full.abs().max()
    assert window_rows(30, 40, overlap) == [slice(0, 30)]  # one row: nothing to search


def test_rows_blend_as_monai_along_the_slices_with_a_pulled_back_last_window():
    """100 slices in windows of 40: MONAI pulls the last window back to slices 60-100 (28 shared
    slices). Along the column through the in-plane window's centre, where MONAI's 3D weights are
    its 1-D weights along the slices, every slice equals MONAI's blend."""
    g = torch.Generator().manual_seed(1)
    inputs = torch.rand(1, 1, 100, 32, 32, generator=g)
    overlap = 15.5 / WINDOW[0]
    rows = window_rows(100, WINDOW[0], overlap)
    assert [r.start for r in rows] == [0, 24, 48, 60]
    logits, n = search_rows(rows, _row_runner(inputs, []), shape=(100, 32, 32), expected=99, min_voxels=10**9)
    full = sliding_window_inference(inputs, roi_size=WINDOW, sw_batch_size=1, overlap=(overlap, 0.25, 0.25),
                                    mode="gaussian", predictor=_window_dependent)[0, 0]
    assert n == 4
    torch.testing.assert_close(logits[:, 16, 16], full[:, 16, 16], atol=1e-5, rtol=1e-5)
    assert (logits - full).abs().max() < 1e-2 * full.abs().max()  # the floored corners


def _organ_at(slices: slice) -> torch.Tensor:
    x = torch.zeros(1, 1, 100, 24, 24)
    x[:, :, slices, 6:18, 6:18] = 1.0
    return x


def _stepwise(inputs: torch.Tensor, ran: list):
    def run_row(r: slice) -> torch.Tensor:
        ran.append(r.start)
        return inputs[0, 0, r] * 20.0 - 10.0
    return run_row


@pytest.mark.parametrize("expected, organ, rows_run", [
    (5, slice(2, 24), [0]),  # ends before the slices row 0 shares with row 1 (24-39): one row of four
    (5, slice(2, 25), [0, 24]),  # reaches slice 24, which row 1 also covers: row 1 too
    (95, slice(2, 20), [60, 48, 24, 0]),  # not found from the top: rows walk down to it
    (50, slice(0, 100), [24, 0, 48, 60]),  # the whole ROI: every row, the one below first
])
def test_rows_run_outward_until_the_organ_ends_inside_them(expected, organ, rows_run):
    inputs = _organ_at(organ)
    rows = window_rows(100, 40, 15.5 / 40)
    assert [r.start for r in rows] == [0, 24, 48, 60]
    ran = []
    logits, n = search_rows(rows, _stepwise(inputs, ran), shape=(100, 24, 24), expected=expected, min_voxels=50)
    assert ran == rows_run and n == len(rows_run)
    covered = np.zeros(100, bool)
    for start in rows_run:
        covered[start:start + 40] = True
    found = (logits >= 0).numpy()
    assert np.array_equal(found, inputs[0, 0].numpy() > 0.5), "the organ is found whole"
    assert (logits[torch.from_numpy(~covered)] == NOT_RUN_LOGIT).all()


def test_too_small_a_find_does_not_stop_the_search():
    """A speck below ``min_voxels`` in the first row is not the organ: the search goes on to the
    organ in the last row and keeps the blended result of every row it ran."""
    inputs = _organ_at(slice(70, 90))
    inputs[0, 0, 10, 0, 0] = 1.0
    rows = window_rows(100, 40, 15.5 / 40)
    ran = []
    logits, _ = search_rows(rows, _stepwise(inputs, ran), shape=(100, 24, 24), expected=5, min_voxels=50)
    assert ran == [0, 24, 48, 60]
    assert logits[10, 0, 0] > 0 and (logits[70:90, 6:18, 6:18] > 0).all()


def test_an_organ_reaching_the_next_rows_slices_runs_that_row():
    """Row 0 sees the organ up to slice 33, inside the slices it shares with row 1 (32-39); row 1
    sees it up to slice 50. The search runs row 1 and keeps the organ to slice 50, as the pass
    over every row does."""
    rows = window_rows(72, 40, 7.5 / 40)

    def run_row(r: slice) -> torch.Tensor:
        top = 34 if r.start == 0 else 51
        x = torch.full((r.stop - r.start, 16, 16), -10.0)
        x[: top - r.start, 4:12, 4:12] = 10.0
        return x

    logits, n = search_rows(rows, run_row, shape=(72, 16, 16), expected=5, min_voxels=50)
    assert n == 2
    zs = np.nonzero((logits >= 0).numpy().any(axis=(1, 2)))[0]
    assert (zs[0], zs[-1]) == (0, 50)


@pytest.fixture(scope="module")
def aorta_ct():
    """The TotalSegmentator aorta-report CT: a real chest and upper abdomen, 191 slices of 1.5 mm,
    the liver from its lowest slice to the dome at slice :data:`AORTA_LIVER_DOME`."""
    vol, aff = read_nifti(totalseg_sdist_dir() / "aorta_report" / "example_ct.nii.gz")
    return vol.astype(np.float32), aff


def test_the_expected_slice_lies_in_the_liver_below_the_lungs(aorta_ct):
    vol, aff = aorta_ct
    canon, caff, _ = to_canonical(vol, aff)
    base = lung_base(canon)
    assert base is not None and 0 < base < AORTA_LIVER_DOME, "the lungs' base lies between the liver's ends"
    # 40 mm (27 slices of 1.5 mm) below the base found on every 3rd slice (4.5 mm), which lies
    # at most two slices above the base of every slice
    expected = expected_slice(canon, spacing_from_affine(caff))
    assert base - 27 <= expected <= base - 27 + 2, (base, expected)
    # no lungs in the series (the TotalSegmentator DICOM series, 20 slices of upper abdomen): its top
    dicom, daff = read_series(totalseg_sdist_dir() / "example_ct_dicom")
    dcanon, dcaff, _ = to_canonical(dicom.astype(np.float32), daff)
    assert lung_base(dcanon) is None
    assert expected_slice(dcanon, spacing_from_affine(dcaff)) == dcanon.shape[0] - 1


def test_the_demo_models_organ_search_on_a_chest_abdomen_ct(aorta_ct):
    """The shipped model's organ pass on the chest-abdomen CT runs one of its two window rows
    (the liver ends inside the lower one) and finds the liver the pass over both rows finds."""
    vol, aff = aorta_ct
    pred = TagsPredictor.from_model_folder(REPO / "models" / "liver-demo", device="cpu", precision="fp32")
    region = prepare_ct(vol, aff).body_box
    searched = pred.segment_organs(vol, aff, ["liver"], region=region)["liver"]
    assert searched.windows.count == 1 and searched.windows.shape[0] == 40 and searched.windows.rows == (1, 2)
    policy = pred.organ_windows
    pred.organ_windows = WindowPolicy(overlap=policy.overlap, max_depth=policy.max_depth, min_depth=policy.min_depth,
                                      sides=policy.sides, square=policy.square, search=False)
    full = pred.segment_organs(vol, aff, ["liver"], region=region)["liver"]
    assert full.windows.count == 2 and full.windows.rows is None
    # the pass before the search: one window as deep as the ROI (72 organ-grid slices)
    pred.organ_windows = WindowPolicy(overlap=policy.overlap, min_depth=policy.min_depth, sides=policy.sides,
                                      square=policy.square)
    deep = pred.segment_organs(vol, aff, ["liver"], region=region)["liver"]
    assert deep.windows.count == 1 and deep.windows.shape[0] == 72
    a = searched.mask()
    assert a.sum() > 0
    for b in (full.mask(), deep.mask()):
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.99


def test_where_the_search_starts_and_what_ends_it():
    """The expected slice maps onto the organ grid in proportion; a liver ends the search at its
    smallest plausible volume, an organ without bounds at MIN_ORGAN_ML."""
    from helpers import small_config
    from tags.inference.organ_search import MIN_ORGAN_ML, OrganSearch

    import dataclasses

    config = dataclasses.replace(small_config(), organ_bounds=None)  # the library's ORGAN_BOUNDS
    hu = np.full((60, 16, 16), 40.0, np.float32)  # soft tissue, no lungs: the top slice
    search = OrganSearch.of(config, "liver", hu, (1.5, 3.0, 3.0))
    assert (search.expected, search.depth, search.min_ml) == (59, 60, 20.0)
    assert search.grid_slice(24) == 23 and OrganSearch(0, 60, 20.0).grid_slice(24) == 0
    assert OrganSearch(30, 60, 20.0).grid_slice(24) == 12
    assert search.min_voxels((4.0, 3.0, 3.0)) == 555  # 20 ml of 36 mm3 voxels
    assert OrganSearch.of(config, "an_organ_without_bounds", hu, (1.5, 3.0, 3.0)).min_ml == MIN_ORGAN_ML
