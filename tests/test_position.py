"""FramedPositionEmbedding: SAM's position embedding for windows of another size."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

from tags.position import FramedPositionEmbedding


def _pair(frame: int, side: int | tuple[int, int]):
    torch.manual_seed(0)
    sam = PositionEmbeddingRandom(128)
    framed = FramedPositionEmbedding(num_pos_feats=128, frame=frame, side=side)
    framed.load_state_dict(sam.state_dict())
    return sam, framed


def test_at_the_trained_side_it_is_sams_embedding():
    sam, framed = _pair(128, 128)
    torch.testing.assert_close(framed((32, 32)), sam((32, 32)), rtol=0, atol=1e-6)
    pts = torch.tensor([[[0.5, 0.5], [17.25, 100.0], [127.5, 3.0]]])
    torch.testing.assert_close(framed.forward_with_coords(pts, (128, 128)), sam.forward_with_coords(pts, (128, 128)),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("side", [96, 64])
def test_a_narrower_window_encodes_like_the_same_pixels_of_a_trained_window_around_it(side):
    """A side-px window centred in the 128-px trained window: its dense embedding (one cell per
    4 px, as LiteMedSAM's 1/4 embedding grid) is a centre crop of the trained window's
    embedding, and a point at x encodes as x + (128 - side) / 2 does in the trained window."""
    sam, framed = _pair(128, side)
    cells, off = side // 4, (128 - side) // 2
    big = framed((cells, cells))
    assert big.shape == (256, cells, cells)
    c = off // 4
    torch.testing.assert_close(big, sam((32, 32))[:, c : c + cells, c : c + cells], rtol=0, atol=1e-5)
    pts = torch.tensor([[[0.5, 0.5], [10.0, side - 1.0], [side / 2, side / 3]]])
    torch.testing.assert_close(framed.forward_with_coords(pts, (side, side)),
                               sam.forward_with_coords(pts + off, (128, 128)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        framed.forward_with_coords(pts, (128, 128))


def test_a_wider_window_is_normalised_by_its_own_side_as_sam_does():
    sam, framed = _pair(128, 192)
    torch.testing.assert_close(framed((48, 48)), sam((48, 48)), rtol=0, atol=1e-6)
    pts = torch.tensor([[[0.5, 0.5], [10.0, 191.0], [96.0, 64.0]]])
    torch.testing.assert_close(framed.forward_with_coords(pts, (192, 192)), sam.forward_with_coords(pts, (192, 192)),
                               rtol=0, atol=1e-6)


def test_a_rectangular_window_frames_each_axis_on_its_own():
    """A 64 x 192 window (rows x columns) with a 128 frame: rows are a centre crop of the
    trained window (offset 32 px), columns are normalised by their own 192 px, as SAM does."""
    sam, framed = _pair(128, (64, 192))
    dense = framed((16, 48))
    assert dense.shape == (256, 16, 48)
    # SAM's embedding of a 128-row, 192-column window; rows 32..95 of it are this window's.
    torch.testing.assert_close(dense, sam((32, 48))[:, 8:24], rtol=0, atol=1e-5)
    pts = torch.tensor([[[0.5, 0.5], [150.0, 63.0], [96.0, 20.0]]])
    shifted = pts + torch.tensor([0.0, 32.0])
    torch.testing.assert_close(framed.forward_with_coords(pts, (64, 192)),
                               sam.forward_with_coords(shifted, (128, 192)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="64x192"):
        framed.forward_with_coords(pts, (192, 64))
