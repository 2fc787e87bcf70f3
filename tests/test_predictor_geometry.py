"""ROI crop, resampling and map-back, checked with a network that echoes the organ channel.

The network is replaced on purpose: what is under test is the geometry around it.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import small_config
from tags.config import PreprocessingConfig
from tags.geometry import affine_from_spacing, reorientation, to_canonical
from tags.inference import TagsPredictor, WindowPolicy, WindowRun
from tags.inference.windows import encoder_input_size, fit_windows, plan_windows, side_step


class EchoOrganModel:
    """Window model whose logits are +-10 from the organ channel: prediction == organ on the
    model grid. It records every window's shape and the trained window it was run for."""

    def __init__(self, config, encoder_side=None):
        self.config = config
        self.encoder_side = encoder_side
        self.windows = []
        self.trained = []

    def to(self, device):
        return self

    def __call__(self, x, target, trained, grid_spacing):
        self.windows.append(tuple(x.shape[2:]))
        self.trained.append(tuple(trained))
        return self.logits(x)

    def logits(self, x):
        return x[:, 1:2] * 20.0 - 10.0


def _predictor(spacing, roi=(16, 32, 32), margin=4.0, **kwargs):
    cfg = small_config(
        roi_size=roi,
        preprocessing=PreprocessingConfig(spacing=spacing, margin_mm=margin),
    )
    model = EchoOrganModel(cfg)
    return TagsPredictor(model, device="cpu", **kwargs), model


def _object(shape, box):
    m = np.zeros(shape, bool)
    m[box] = True
    return m


def test_exact_round_trip_on_aligned_grid():
    """CT spacing (3.0, 0.75, 0.75), model grid 1.5 mm: z up 2x, in-plane down 2x."""
    shape = (30, 90, 110)
    organ = _object(shape, (slice(7, 19), slice(50, 78), slice(12, 40)))  # off-centre
    pred, net = _predictor((1.5, 1.5, 1.5), margin=6.0, tumor_windows=WindowPolicy(max_depth=None))  # trained-size windows
    res = pred.predict(np.zeros(shape, np.float32), affine_from_spacing((3.0, 0.75, 0.75)), {"liver": organ})
    r = res["liver_tumor"]
    assert r.status == "ok"
    # ROI = organ bbox + 6 mm margin (2 slices, 8 pixels), clipped to the volume.
    assert r.roi == (slice(5, 21), slice(42, 86), slice(4, 48))
    assert np.array_equal(r.mask(), organ), "map-back is not exact"
    outside = np.ones(shape, bool)
    outside[r.roi] = False
    assert (r.probability[outside] == 0).all()
    # The ROI (16 x 44 x 44 at CT spacing -> 32 x 22 x 22 on the model grid) needed 2 windows in z.
    assert len(net.windows) >= 2


def test_non_integer_ratios_within_one_voxel():
    shape = (25, 70, 80)
    spacing = (2.5, 0.7, 0.9)
    organ = _object(shape, (slice(3, 15), slice(40, 63), slice(5, 33)))
    pred, _ = _predictor((1.5, 1.5, 1.5))
    r = pred.predict(np.zeros(shape, np.float32), affine_from_spacing(spacing), {"liver": organ})["liver_tumor"]
    m = r.mask()
    dice = 2 * (m & organ).sum() / (m.sum() + organ.sum())
    c_pred = np.array(np.nonzero(m)).mean(1)
    c_true = np.array(np.nonzero(organ)).mean(1)
    print(f"dice {dice:.4f}, centroid error (voxels) {np.abs(c_pred - c_true)}")
    assert dice > 0.93
    assert (np.abs(c_pred - c_true) < 0.5).all()


@pytest.mark.parametrize(
    "direction",
    [
        np.diag([1.0, 1.0, 1.0]),  # canonical
        np.diag([1.0, -1.0, -1.0]),  # flipped rows and columns
        np.array([[0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]]),  # permuted axes (coronal-like storage)
    ],
)
def test_orientation_round_trip(direction):
    shape = (20, 40, 36)
    spacing = (2.0, 1.5, 1.5)
    organ = _object(shape, (slice(3, 11), slice(5, 20), slice(20, 30)))
    # Build an affine whose array axes point along permuted/flipped patient axes.
    canon = affine_from_spacing(spacing)
    affine = canon.copy()
    affine[:3, :3] = direction @ canon[:3, :3]
    reo = reorientation(affine, shape)
    c, c_aff, _ = to_canonical(organ, affine)
    assert np.array_equal(reo.invert(c), organ)
    # The canonical affine maps canonical voxels to the same patient points as the source.
    def points(mask, aff):
        pts = aff[:3, :3] @ np.array(np.nonzero(mask)) + aff[:3, 3:4]
        return pts[:, np.lexsort(np.round(pts, 6))]

    assert np.allclose(points(organ, affine), points(c, c_aff))
    assert np.allclose(sorted(np.linalg.norm(c_aff[:3, :3], axis=0)), sorted(spacing))
    assert np.all(np.diag(c_aff[[2, 1, 0], :3]) > 0), "canonical axes must point to +z, +y, +x"
    pred, _ = _predictor((1.5, 1.5, 1.5))
    r = pred.predict(np.zeros(shape, np.float32), affine, {"liver": organ})["liver_tumor"]
    m = r.mask()
    assert 2 * (m & organ).sum() / (m.sum() + organ.sum()) > 0.9


def test_absent_organ_gives_empty_result():
    shape = (10, 20, 20)
    pred, net = _predictor((1.5, 1.5, 1.5))
    r = pred.predict(np.zeros(shape, np.float32), affine_from_spacing((1, 1, 1)), {"liver": np.zeros(shape, bool)})
    assert r["liver_tumor"].status == "organ_absent"
    assert not r["liver_tumor"].probability.any()
    assert net.windows == []
    with pytest.raises(KeyError, match="liver"):
        pred.predict(np.zeros(shape, np.float32), affine_from_spacing((1, 1, 1)), {})


@pytest.mark.parametrize("window,overlap,multiple,max_window,min_window",
                         [(32, 0.25, 4, 96, None), (16, 0.25, 4, 48, None), (8, 0.5, 1, 20, None),
                          (16, 0.0, 4, 40, None), (128, 0.25, 32, 256, 96), (128, 0.25, 32, 192, 128),
                          (48, 0.25, 32, 96, 32)])
def test_fitted_windows_are_the_fewest_that_cover_the_roi(window, overlap, multiple, max_window, min_window):
    """fit_windows against MONAI's own window placement: exactly the fewest windows of at most
    max_window that keep the trained overlap (in voxels) cover every extent, each a multiple of
    ``multiple`` (or the trained window itself), never shorter than min_window (default the trained
    window), and one window just long enough for an extent shorter than the trained window when
    min_window allows it (never longer than the trained window)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    o = round(window * overlap)
    shortest = min_window or window
    for extent in range(1, 400):
        w, ov = fit_windows(extent, window, overlap, multiple=multiple, max_window=max_window, min_window=min_window)
        assert (w % multiple == 0 or w == window) and shortest <= w <= max(max_window, window)
        if extent <= window:
            assert w == min(window, max(shortest, -(-extent // multiple) * multiple))
        size = max(extent, w)  # MONAI pads an ROI shorter than the window
        interval = _get_scan_interval((size,), (w,), 1, (ov,))
        starts = sorted(s[0].start for s in dense_patch_slices((size,), (w,), interval))
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + w] = True
        assert covered.all()
        fewest = 1 if extent <= max_window else -(-(extent - o) // (max_window - o))
        assert len(starts) == fewest, (extent, w, starts)
        assert all(b - a <= w - o for a, b in zip(starts, starts[1:])), "overlap below the trained overlap"


def test_predictor_runs_one_deep_window_where_the_roi_fits():
    """A 40-slice ROI (model grid) with a trained window of 16: one window of 40 by default
    fitting (max 48), three overlapping windows of 16 when fitting is off."""
    shape = (40, 20, 20)
    organ = np.zeros(shape, bool)
    organ[:, 5:15, 5:15] = True
    results = {}
    for max_depth in (48, None):
        cfg = small_config(roi_size=(16, 32, 32), preprocessing=PreprocessingConfig(spacing=(1.0, 1.0, 1.0), margin_mm=0.0))
        net = EchoOrganModel(cfg)
        pred = TagsPredictor(net, device="cpu", tumor_windows=WindowPolicy(max_depth=max_depth))
        r = pred.predict(np.zeros(shape, np.float32), affine_from_spacing((1, 1, 1)), {"liver": organ})["liver_tumor"]
        results[max_depth] = r.mask()
        assert r.windows == WindowRun(len(net.windows), net.windows[0])  # what tags_results.json reports
        depths = sorted({w[0] for w in net.windows})
        if max_depth:
            assert net.windows == [(40, 32, 32)]
        else:
            assert depths == [16] and len(net.windows) == 3
    assert np.array_equal(results[48], organ) and np.array_equal(results[None], organ)


def test_predictor_fits_the_in_plane_window_to_a_wide_roi():
    """A 50x50 ROI (model grid) with a trained 32x32 window: one 64x64 window in-plane with
    window_sides (32, 64), four overlapping 32x32 windows without; the depth limit shrinks with
    the larger side (48 slices of 32x32 -> 12, so the trained 16). Same map-back either way."""
    shape = (40, 50, 50)
    organ = np.zeros(shape, bool)
    organ[4:36, 3:47, 6:44] = True
    results = {}
    for sides in ((32, 64), None):
        cfg = small_config(roi_size=(16, 32, 32), preprocessing=PreprocessingConfig(spacing=(1.0, 1.0, 1.0), margin_mm=3.0))
        net = EchoOrganModel(cfg, encoder_side=32)  # encoder at the trained side, as in the demo model
        pred = TagsPredictor(net, device="cpu", tumor_windows=WindowPolicy(max_depth=48, sides=sides))
        r = pred.predict(np.zeros(shape, np.float32), affine_from_spacing((1, 1, 1)), {"liver": organ})["liver_tumor"]
        results[sides] = r.mask()
        if sides:
            assert net.windows == [(16, 64, 64)] * 3
        else:
            assert net.windows == [(40, 32, 32)] * 4
    assert np.array_equal(results[(32, 64)], organ) and np.array_equal(results[None], organ)


def test_rows_and_columns_are_fitted_apart():
    """A 20 x 44 ROI in plane (model grid), trained 32 x 32, window_sides (32, 64): windows of
    32 x 64 (the encoder at 32 x 64, positions framed along the rows), where square windows
    would be 64 x 64 and compute twice the pixels. Same map-back either way."""
    shape = (20, 40, 60)
    organ = np.zeros(shape, bool)
    organ[4:16, 13:27, 11:49] = True  # + 3 mm margin: 20 x 44 in plane
    cfg = small_config(roi_size=(16, 32, 32), preprocessing=PreprocessingConfig(spacing=(1.0, 1.0, 1.0), margin_mm=3.0))
    for square, window in ((False, (20, 32, 64)), (True, (20, 64, 64))):
        net = EchoOrganModel(cfg, encoder_side=32)
        pred = TagsPredictor(net, device="cpu", tumor_windows=WindowPolicy(sides=(32, 64), square=square))
        r = pred.predict(np.zeros(shape, np.float32), affine_from_spacing((1, 1, 1)), {"liver": organ})["liver_tumor"]
        assert r.roi[1:] == (slice(10, 30), slice(8, 52))
        assert set(net.windows) == {window} and np.array_equal(r.mask(), organ)
        assert encoder_input_size(window, net.trained[-1], 32) == window[1:]


class EchoImageModel(EchoOrganModel):
    """Text-only echo for the organ pass: prediction == (image > 0.5) on the model grid."""

    def logits(self, x):
        return (x[:, :1] > 0.5).float() * 20.0 - 10.0


def test_each_pass_compares_its_windows_with_its_own_trained_size():
    """The organ pass (trained 48x48 windows) and the tumor pass (trained 32x32) each give the
    window model their own trained size: a 48-wide organ window runs the encoder at its trained
    32 (the loaded network), a 64-wide tumor window the encoder at 64 (encoder side = trained side)."""
    cfg = small_config(roi_size=(16, 32, 32), organ_roi_size=(16, 48, 48),
                       preprocessing=PreprocessingConfig(spacing=(1.0, 1.0, 1.0), organ_spacing=(1.0, 1.0, 1.0),
                                                         margin_mm=3.0))
    net = EchoImageModel(cfg, encoder_side=32)
    pred = TagsPredictor(net, device="cpu", tumor_windows=WindowPolicy(sides=(32, 64)),
                         organ_windows=WindowPolicy(sides=(32, 64), square=True))
    shape = (20, 40, 40)
    volume = np.zeros(shape, np.float32)
    volume[4:16, 6:30, 8:34] = 400.0  # bright box: the organ the echo finds
    organs = pred.segment_organs(volume, affine_from_spacing((1, 1, 1)))
    assert {w[1:] for w in net.windows} == {(48, 48)} and set(net.trained) == {(16, 48, 48)}
    assert encoder_input_size(net.windows[0], net.trained[0], 32) == (32, 32)
    assert np.array_equal(organs["liver"].mask(), volume > 0)
    net.windows.clear()
    net.trained.clear()
    organ = np.zeros((40, 50, 50), bool)
    organ[4:36, 3:47, 6:44] = True
    pred.predict(np.zeros(organ.shape, np.float32), affine_from_spacing((1, 1, 1)), {"liver": organ})
    assert {w[1:] for w in net.windows} == {(64, 64)} and set(net.trained) == {(16, 32, 32)}
    assert encoder_input_size(net.windows[0], net.trained[0], 32) == (64, 64)


def test_fitted_sides_keep_the_trained_scale_exactly():
    """A window trained at 32 voxels and encoded at 64 px: fitted sides step by 16 voxels (32 px),
    so a 50-voxel ROI gets a 64-voxel window at 128 px, never a side that rounds the scale."""
    policy = WindowPolicy(sides=(32, 96))
    plan = lambda shape, encoder_side: plan_windows(shape, (16, 32, 32), policy, slab_size=4,  # noqa: E731
                                                     encoder_side=encoder_side)[0]
    assert side_step(32, 64) == 16
    assert plan((16, 40, 40), 64) == (16, 48, 48)
    assert plan((16, 50, 50), 64) == (16, 64, 64)
    # 32 voxels encoded at 48 px: 32 px is 21.3 voxels; the step is 64 voxels (96 px)
    assert side_step(32, 48) == 64
    assert plan((16, 40, 40), 48) == (16, 64, 64)
    assert plan((16, 40, 40), None) == (16, 32, 32), "an encoder of fixed size keeps the trained side"


def test_a_thin_roi_gets_a_window_just_deep_enough_when_allowed():
    """min_depth: a 10-slice ROI gets one 12-slice window (a multiple of the 4-slice slab)
    instead of a trained 32-slice one, never shallower than min_depth; deeper ROIs are tiled as
    before."""
    plan = lambda shape, policy: plan_windows(shape, (32, 32, 32), policy, slab_size=4,  # noqa: E731
                                              encoder_side=None)
    assert plan((10, 32, 32), WindowPolicy())[0] == (32, 32, 32)
    assert plan((10, 32, 32), WindowPolicy(min_depth=4)) == ((12, 32, 32), (0.0, 0.25, 0.25))
    assert plan((3, 32, 32), WindowPolicy(min_depth=8))[0] == (8, 32, 32)
    assert plan((70, 32, 32), WindowPolicy(min_depth=4)) == plan((70, 32, 32), WindowPolicy())
    with pytest.raises(ValueError, match="min_depth"):
        WindowPolicy(min_depth=0)


def test_window_sides_are_checked():
    for bad in ((96, 64), (0, 64), (64,), (32.5, 64)):
        with pytest.raises(ValueError, match="window sides"):
            WindowPolicy(sides=bad)
    with pytest.raises(ValueError, match="overlap"):
        WindowPolicy(overlap=1.0)


def test_default_sides_scale_with_the_trained_side():
    """The default policies: half to twice the tumor pass's trained side, the organ pass never
    narrower than its own; the demo model (trained at 128) gets 64-256 and 128-256, the ranges
    measured in docs/performance.md ("Window geometry")."""
    demo = small_config(roi_size=(32, 128, 128), organ_roi_size=(32, 128, 128))
    pred = TagsPredictor(EchoOrganModel(demo, encoder_side=128), device="cpu")
    assert (pred.tumor_windows.sides, pred.organ_windows.sides) == ((64, 256), (128, 256))
    assert (pred.tumor_windows.square, pred.organ_windows.square) == (False, True)
    # a thin series: organ windows as shallow as a slab allows, tumor windows of the trained depth
    assert (pred.tumor_windows.min_depth, pred.organ_windows.min_depth) == (None, demo.adapter.slab_size)
    other = small_config(roi_size=(8, 48, 48), organ_roi_size=(8, 96, 96))
    assert (WindowPolicy.tumor(other).sides, WindowPolicy.organ(other).sides) == ((24, 96), (96, 192))
    pred = TagsPredictor(EchoOrganModel(other), device="cpu", tumor_windows=WindowPolicy(sides=(32, 64)))
    assert pred.tumor_windows.sides == (32, 64)


def test_anti_aliased_downsampling_on_real_ct():
    """A real CT (TotalSegmentator's aorta-report CT, 1.5 mm voxels, thorax to abdomen) brought to a 4x
    coarser in-plane grid: with the anti-aliasing pre-filter each coarse voxel is closer to the
    mean of the fine voxels it covers (what an ideal detector of that size would see) than
    plain trilinear sampling, which picks single fine voxels; upsampling and anti_alias=False are
    left exactly as before."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    from tags.preprocessing import anti_alias_sigmas, resample
    from training.registry_data import totalseg_sdist_dir

    ct = np.asarray(nib.load(str(totalseg_sdist_dir() / "aorta_report" / "example_ct.nii.gz")).dataobj, dtype=np.float32)
    vol = torch.from_numpy(np.ascontiguousarray(ct.transpose(2, 1, 0)[60:100, :160, 30:190]))  # (z, y, x)
    coarse = (vol.shape[0], 40, 40)
    truth = F.avg_pool3d(vol[None, None], (1, 4, 4))[0, 0]
    plain = resample(vol, coarse, mode="linear")
    smooth = resample(vol, coarse, mode="linear", anti_alias=True)
    assert anti_alias_sigmas(vol.shape, coarse) == (0.0, 1.5, 1.5)
    assert torch.equal(plain, F.interpolate(vol[None, None], size=coarse, mode="trilinear", align_corners=False)[0, 0])
    err_plain, err_smooth = (float((x - truth).abs().mean()) for x in (plain, smooth))
    assert err_smooth < 0.6 * err_plain, (err_smooth, err_plain)
    # the HU level of large structures is kept (edges replicated, not padded with zeros)
    assert abs(float(smooth.mean()) - float(vol.mean())) < 5.0
    fine = (vol.shape[0] * 2, 320, 320)  # upsampling: nothing to filter
    assert torch.equal(resample(vol, fine, mode="linear", anti_alias=True), resample(vol, fine, mode="linear"))
