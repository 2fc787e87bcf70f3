"""FramedPositionEmbedding: SAM's position embedding for windows of another size."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

from tags.position import FramedPositionEmbedding


def _pair(frame: int, side: int):
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


@pytest.mark.parametrize("side", [96, 64, 192])
def test_a_window_encodes_like_the_same_pixels_of_a_trained_window_around_it(side):
    """A side-px window centred in the 128-px trained window: its dense embedding (one cell per
    4 px, as LiteMedSAM's 1/4 embedding grid) is the trained window's embedding of the same cells
    (a centre crop of it for a narrower window; it holds it at its centre for a wider one), and a point at x encodes as x + (128 - side) / 2 does in
    the trained window."""
    sam, framed = _pair(128, side)
    cells, off = side // 4, (128 - side) // 2
    big = framed((cells, cells))
    assert big.shape == (256, cells, cells)
    if side < 128:
        c = off // 4
        torch.testing.assert_close(big, sam((32, 32))[:, c : c + cells, c : c + cells], rtol=0, atol=1e-5)
    else:  # the trained window is the centre of the wider one
        c = -off // 4
        torch.testing.assert_close(big[:, c : c + 32, c : c + 32], sam((32, 32)), rtol=0, atol=1e-5)
    pts = torch.tensor([[[0.5, 0.5], [10.0, side - 1.0], [side / 2, side / 3]]])
    torch.testing.assert_close(framed.forward_with_coords(pts, (side, side)),
                               sam.forward_with_coords(pts + off, (128, 128)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        framed.forward_with_coords(pts, (128, 128))
