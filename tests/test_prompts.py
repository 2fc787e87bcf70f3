"""Anatomy prompts derived from a real organ mask: the liver label of LiTS volume 117."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tags.config import PromptConfig
from tags.prompts import SlicePrompts, derive_prompts, text_only_prompts

S = 256  # encoder input size (LiteMedSAM)
SPACING = (1.6, 1.6, 1.6)


def _to_pixel(coord: np.ndarray, size: int) -> np.ndarray:
    """Inverse of the encoder-coordinate scaling: encoder pixel -> source pixel index."""
    return (coord + 0.5) * size / S - 0.5


@pytest.fixture(scope="module")
def prompts(liver_mask):
    return derive_prompts(liver_mask, SPACING, img_size=S, mask_size=256, config=PromptConfig(), seed=7)


def test_boxes_contain_the_organ_slice_by_slice(liver_mask, prompts):
    d, h, w = liver_mask.shape
    has_organ = liver_mask.reshape(d, -1).any(1)
    assert has_organ.sum() > 20, "the LiTS liver label should span many slices"
    assert torch.equal(prompts.box_valid, torch.from_numpy(has_organ))
    for z in np.flatnonzero(has_organ):
        x0, y0, x1, y1 = prompts.boxes[z].numpy()
        ys, xs = np.nonzero(liver_mask[z])
        # The box is the tight box of the organ on that slice (to float precision).
        assert np.isclose(_to_pixel(x0, w), xs.min()) and np.isclose(_to_pixel(x1, w), xs.max())
        assert np.isclose(_to_pixel(y0, h), ys.min()) and np.isclose(_to_pixel(y1, h), ys.max())


def test_points_inside_and_in_a_ring_outside(liver_mask, prompts):
    d, h, w = liver_mask.shape
    cfg = PromptConfig()
    from scipy import ndimage

    n_pos = n_neg = 0
    for z in np.flatnonzero(prompts.box_valid.numpy()):
        dist = ndimage.distance_transform_edt(~liver_mask[z], sampling=SPACING[1:])
        for (x, y), label in zip(prompts.points[z].numpy(), prompts.point_labels[z].numpy()):
            if label < 0:
                continue
            i, j = int(round(_to_pixel(y, h))), int(round(_to_pixel(x, w)))
            if label == 1:
                assert liver_mask[z, i, j], f"positive point outside the liver on slice {z}"
                n_pos += 1
            else:
                assert not liver_mask[z, i, j], f"negative point inside the liver on slice {z}"
                assert 0 < dist[i, j] <= cfg.ring_mm
                n_neg += 1
    assert n_pos == cfg.num_positive * int(prompts.box_valid.sum())
    assert n_neg > 0.9 * cfg.num_negative * int(prompts.box_valid.sum())
    # Slices without organ carry no points.
    assert (prompts.point_labels[~prompts.box_valid] == -1).all()


def test_dense_prompt_is_the_mask(liver_mask, prompts):
    z = int(np.flatnonzero(prompts.box_valid.numpy())[10])
    dense = prompts.dense[z, 0].numpy()
    assert dense.shape == (256, 256)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(liver_mask[z].astype(np.float32))[None, None], size=(256, 256), mode="nearest"
    )[0, 0].numpy()
    assert np.array_equal(dense > 0, resized > 0.5)


def test_deterministic_for_a_seed(liver_mask, prompts):
    again = derive_prompts(liver_mask, SPACING, img_size=S, mask_size=256, config=PromptConfig(), seed=7)
    other = derive_prompts(liver_mask, SPACING, img_size=S, mask_size=256, config=PromptConfig(), seed=8)
    assert torch.equal(again.points, prompts.points)
    assert not torch.equal(other.points, prompts.points)


def test_cat_pads_points_and_text_only():
    a = text_only_prompts(2)
    organ = np.zeros((3, 16, 16), bool)
    organ[1, 4:8, 4:8] = True
    b = derive_prompts(organ, (1, 1, 1), img_size=S, mask_size=64, config=PromptConfig(), seed=0)
    c = SlicePrompts.cat([b, b])
    assert c.points.shape == (6, 6, 2) and c.box_valid.tolist() == [False, True, False] * 2
    assert SlicePrompts.cat([a, b]).dense is None
